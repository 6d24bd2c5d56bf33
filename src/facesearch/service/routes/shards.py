"""Shards (servers holding whole domains, store/shards.py): the admin key's business."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from ...store import shards as store_shards
from ..state import AdminDep, ServiceDep

router = APIRouter(prefix="/v1/shards", tags=["shards"])


class ShardCreate(BaseModel):
    name: str = Field(examples=["shard1"], description="1-30 of a-z, 0-9, '_', starting with a letter.")
    url: str = Field(examples=["postgresql://facesearch:secret@10.0.0.12:5432/facesearch"],
                     description="The shard's PostgreSQL (with pgvector), as this server reaches it.")


class ShardOut(BaseModel):
    name: str
    url: str = Field(description="Its URL, without the password.")
    created_at: datetime
    domains: int = Field(description="Domains whose faces are on it.")
    reachable: bool | None = Field(None, description="Whether it answered just now.")
    faces: int | None = Field(None, description="Faces stored on it; null if it did not answer.")
    error: str | None = None


class ShardList(BaseModel):
    shards: list[ShardOut]


@router.get("", response_model=ShardList)
async def list_shards(_: AdminDep, svc: ServiceDep) -> dict:
    """Every shard: whether it answers, its domains and faces."""
    async with svc.gallery() as gallery:
        shards = await store_shards.list_shards(store_shards.require_postgres(gallery))
    return {"shards": [asdict(s) for s in shards]}


@router.post("", status_code=201, response_model=ShardOut)
async def add_shard(body: ShardCreate, _: AdminDep, svc: ServiceDep) -> dict:
    """Attach a PostgreSQL server as a shard: it must answer and have pgvector, and this
    server needs postgres_fdw (503 otherwise, saying what to install)."""
    async with svc.gallery() as gallery:
        return asdict(await store_shards.add_shard(store_shards.require_postgres(gallery), body.name,
                                                   body.url))
