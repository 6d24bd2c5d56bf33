"""Domains (one gallery per tenant) and their API keys: the admin key's business."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from ...config import usable_model
from ...errors import ModelError
from ...store import shards, unknown
from ...store.gallery import DomainInfo
from ...store.replicas import mark_written
from ..bounded import PathId
from ..schemas import DomainCreate, DomainList, DomainOut, KeyCreate, KeyCreated, KeyList, KeyOut
from ..state import AdminDep, DomainDep, Service, ServiceDep

router = APIRouter(prefix="/v1/domains", tags=["domains"])


def domain_out(svc: Service, info: DomainInfo) -> dict:
    """A domain as the API shows it: with its default recognize threshold (null for a model this
    version does not know)."""
    try:
        threshold: float | None = svc.settings.threshold_of(info)
    except ModelError:
        threshold = None
    return {**asdict(info), "threshold": threshold}


@router.post("", status_code=201, response_model=DomainOut)
async def create_domain(body: DomainCreate, _: AdminDep,
                        svc: ServiceDep) -> dict:
    """A new domain of ``model`` (default: the server's). An unknown model, or one that cannot
    load here (DeepFace's without their weights), is refused (422) with the list of models."""
    model = usable_model(svc.settings.model if body.model is None else body.model)
    async with svc.gallery() as gallery:
        if body.keep_unknown:
            unknown.require_postgres(gallery)  # before anything is created
        if body.shard is None:
            dom = await gallery.create_domain(body.name, model=model)
        else:  # PKL mode has no shards
            shards.require_postgres(gallery)
            dom = await gallery.create_domain(body.name, model=model, shard=body.shard)
        if body.keep_unknown:
            await unknown.set_keep_unknown(gallery, dom.name, True)
        if svc.replicas is not None:  # read-your-writes: see store/replicas.py
            await mark_written(gallery.conn, dom.id)
        return domain_out(svc, await gallery.domain_info(dom.name))


@router.get("", response_model=DomainList)
async def list_domains(_: AdminDep, svc: ServiceDep) -> dict:
    async with svc.gallery() as gallery:
        return {"domains": [domain_out(svc, d) for d in await gallery.list_domains()]}


@router.get("/{domain}", response_model=DomainOut)
async def get_domain(dom: DomainDep, svc: ServiceDep) -> dict:
    """The domain with its counts (the admin key, or this domain's key)."""
    return domain_out(svc, await svc.read(dom, lambda gallery: gallery.domain_info(dom.name)))


@router.delete("/{domain}", response_model=DomainOut)
async def delete_domain(domain: str, _: AdminDep,
                        svc: ServiceDep) -> dict:
    """Delete a domain with all its people, faces and keys. Returns what was deleted."""
    async with svc.gallery() as gallery:
        return asdict(await gallery.delete_domain(domain))


@router.post("/{domain}/keys", status_code=201, response_model=KeyCreated)
async def create_key(body: KeyCreate, dom: DomainDep, _: AdminDep,
                     svc: ServiceDep) -> dict:
    """A new key for this domain. The secret is in this response only; it is stored hashed."""
    async with svc.gallery() as gallery:
        key, secret = await gallery.create_key(dom, body.name)
    return {**asdict(key), "key": secret}


@router.get("/{domain}/keys", response_model=KeyList)
async def list_keys(dom: DomainDep, _: AdminDep,
                    svc: ServiceDep) -> dict:
    async with svc.gallery() as gallery:
        return {"keys": [asdict(k) for k in await gallery.list_keys(dom)]}


@router.delete("/{domain}/keys/{key_id}", response_model=KeyOut)
async def revoke_key(key_id: PathId, dom: DomainDep, _: AdminDep,
                     svc: ServiceDep) -> dict:
    """Revoke a key: requests with it are refused from now on."""
    async with svc.gallery() as gallery:
        keys = {k.id: k for k in await gallery.list_keys(dom)}
        await gallery.revoke_key(dom, key_id)
    return asdict(keys[key_id])
