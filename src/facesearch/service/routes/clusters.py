"""Unknown faces and their clusters (domains with ``keep_unknown``), and the gallery audit.

A domain key reaches its own domain only (DomainDep), the admin key every domain. In PKL mode
every route here answers 400 ``not_supported_in_pkl_mode``. The clustering and the audit are NumPy
on embeddings read from the database, run in a thread (no model runtime in this process).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import asdict
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from ... import clustering
from ...audit import audit_report
from ...config import Settings
from ...errors import BadRequest
from ...models.base import Face
from ...store import curate, unknown
from ...store.gallery import Domain, Gallery, Match
from ..schemas import Box, DomainOut, ErrorBody, PersonOut
from ..state import AdminDep, DomainDep, ServiceDep
from .domains import domain_out

router = APIRouter(prefix="/v1/domains/{domain}", tags=["unknown faces"])


class DomainUpdate(BaseModel):
    """Only the fields given change."""

    keep_unknown: bool | None = Field(None, description=(
        "Keep the faces recognize matches to nobody (biometric data of people never enrolled), "
        "grouped into clusters to name later."))
    threshold: float | None = Field(None, ge=0, le=2, description=(
        "The domain's own recognize threshold (cosine distance); null: back to its model's. "
        "import-deepface sets one for a gallery DeepFace embedded."))


class NameCluster(BaseModel):
    name: str | None = Field(None, description="A person's name: created if new.")
    person_id: int | None = Field(None, description="An existing person of the domain.")


class UnassignedFaceOut(BaseModel):
    id: int = Field(description="Numbered per domain.")
    box: Box
    score: float | None
    created_at: datetime
    has_thumbnail: bool
    thumbnail: str | None = Field(description="Its JPEG crop's path (GET, with the key), or null.")


class ClusterOut(BaseModel):
    id: int = Field(description="Numbered per domain; a full re-cluster gives new ids.")
    size: int
    cohesion: float | None = Field(description="Mean pairwise cosine distance (lower is tighter); "
                                   "null for a single face.")
    faces: list[UnassignedFaceOut]


class ClusterList(BaseModel):
    clusters: list[ClusterOut] = Field(description="Largest first.")
    unassigned_faces: int
    cut: float = Field(description="A face joins a cluster under this average distance.")
    keep_unknown: bool


class NamedCluster(BaseModel):
    person: PersonOut
    enrolled: int
    face_ids: list[int | None] = Field(description="New enrolled face ids (null: the person "
                                       "already had that photo).")


class PersonRef(BaseModel):
    id: int
    name: str | None


class Outlier(BaseModel):
    face_id: int
    person: PersonRef
    distance: float = Field(description="Average distance to the person's other faces.")
    nearest_person: PersonRef | None = Field(description="The person it is nearer to, if any is "
                                             "under the cut.")
    nearest_distance: float | None


class DuplicatePair(BaseModel):
    people: list[PersonRef]
    distance: float = Field(description="Average distance between their faces.")
    likely_same: bool = Field(description="Under the clustering cut on average: likely one person "
                              "(else look-alikes).")
    nearest_distance: float
    face_ids: list[int] = Field(description="Their two closest faces.")


class SingleFace(BaseModel):
    person: PersonRef
    face_id: int


class AuditOut(BaseModel):
    model: str
    faces: int
    people: int
    outlier_cut: float
    duplicate_threshold: float
    outliers: list[Outlier] = Field(description="Likely mislabeled faces, worst first.")
    duplicates: list[DuplicatePair] = Field(description="Likely the same person, most alike first.")
    single_face: list[SingleFace]


class MovePerson(BaseModel):
    person_id: int = Field(description="The person of the domain it goes to.")


class MergeClusters(BaseModel):
    cluster_id: int = Field(description="The cluster whose faces move into this one.")


async def keep_unknown_faces(gallery: Gallery, settings: Settings, dom: Domain, photo: bytes,
                             faces: list[Face], results: list[list[Match]]) -> dict[int, int]:
    """Keep the faces of a recognize that matched nobody (the domain keeps unknown faces);
    returns face index -> its unassigned face id."""
    sha = hashlib.sha256(photo).digest()
    unmatched = [i for i, matches in enumerate(results) if not matches]
    ids = await unknown.add_unknown(gallery, dom, [
        unknown.UnknownFace(faces[i].embedding, (faces[i].box.x, faces[i].box.y, faces[i].box.w,
                                                 faces[i].box.h), faces[i].score, sha,
                            faces[i].thumbnail) for i in unmatched],
        max_faces=settings.unknown_max_faces, max_days=settings.unknown_max_days)
    return dict(zip(unmatched, ids, strict=True))


def _face_out(dom: Domain, f: unknown.UnassignedFace) -> dict:
    thumb = f"/v1/domains/{dom.name}/unassigned/{f.id}/thumbnail" if f.has_thumbnail else None
    return {"id": f.id, "box": dict(zip("xywh", f.box, strict=True)), "score": f.score,
            "created_at": f.created_at, "has_thumbnail": f.has_thumbnail, "thumbnail": thumb}


def _cluster_out(dom: Domain, c: unknown.Cluster) -> dict:
    return {"id": c.id, "size": len(c.faces),
            "cohesion": None if c.cohesion is None else round(c.cohesion, 4),
            "faces": [_face_out(dom, f) for f in c.faces]}


@router.patch("", response_model=DomainOut)
async def update_domain(body: DomainUpdate, dom: DomainDep, _: AdminDep, svc: ServiceDep) -> dict:
    """Change a domain's settings (the admin key): ``keep_unknown``, ``threshold``."""
    given = body.model_fields_set
    if not given:
        raise BadRequest("nothing to change: give keep_unknown and/or threshold")
    async with svc.gallery(wrote=dom) as gallery:
        if "keep_unknown" in given:
            if body.keep_unknown is None:
                raise BadRequest("keep_unknown must be true or false")
            await unknown.set_keep_unknown(gallery, dom.name, body.keep_unknown)
        if "threshold" in given:
            await gallery.set_domain_threshold(dom.name, body.threshold)
        return domain_out(svc, await gallery.domain_info(dom.name))


@router.get("/clusters", response_model=ClusterList)
async def list_clusters(dom: DomainDep, svc: ServiceDep,
                        min_faces: Annotated[int, Query(ge=1, le=1000, description=(
                            "Smallest cluster listed (1 lists lone faces too)."))] = 2,
                        limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict:
    """The domain's unassigned faces grouped into candidate people, largest first, each with its
    faces and its cohesion (mean pairwise cosine distance: lower is tighter)."""
    async def read(gallery: Gallery) -> tuple[list[unknown.Cluster], int]:
        return (await unknown.list_clusters(gallery, dom, min_faces=min_faces, limit=limit),
                await unknown.count_unassigned(gallery, dom))

    clusters, total = await svc.read(dom, read)
    return {"clusters": [_cluster_out(dom, c) for c in clusters], "unassigned_faces": total,
            "cut": clustering.cut_for(dom.model), "keep_unknown": dom.keep_unknown}


@router.post("/clusters/recluster")
async def recluster(dom: DomainDep, svc: ServiceDep) -> dict:
    """Cluster every unassigned face again from scratch (cluster ids change)."""
    async with svc.gallery(wrote=dom) as gallery:
        return {"clusters": await unknown.recluster(gallery, dom)}


@router.get("/clusters/{cluster_id}", response_model=ClusterOut)
async def get_cluster(cluster_id: int, dom: DomainDep, svc: ServiceDep) -> dict:
    return _cluster_out(dom, await svc.read(dom, lambda gallery: unknown.get_cluster(
        gallery, dom, cluster_id)))


@router.post("/clusters/{cluster_id}/person", status_code=201, response_model=NamedCluster)
async def name_cluster(cluster_id: int, body: NameCluster, dom: DomainDep, svc: ServiceDep) -> dict:
    """Name a cluster: its faces become enrolled faces of a new (``name``) or existing
    (``person_id``) person, and recognize finds them from now on."""
    if (body.name is None) == (body.person_id is None):
        raise BadRequest("give the person's 'name' (created if new) or an existing 'person_id'")
    person: int | str = body.person_id if body.person_id is not None else str(body.name)
    async with svc.gallery(wrote=dom) as gallery:
        pid, ids = await unknown.name_cluster(gallery, dom, cluster_id, person,
                                              create=body.name is not None)
        return {"person": asdict(await gallery.get_person(dom, pid)),
                "enrolled": sum(i is not None for i in ids), "face_ids": ids}


@router.post("/clusters/{cluster_id}/merge", response_model=ClusterOut)
async def merge_clusters(cluster_id: int, body: MergeClusters, dom: DomainDep, svc: ServiceDep) -> dict:
    """Move the faces of another cluster into this one."""
    async with svc.gallery(wrote=dom) as gallery:
        return _cluster_out(dom, await unknown.merge_clusters(gallery, dom, cluster_id, body.cluster_id))


@router.delete("/clusters/{cluster_id}/faces/{face_id}")
async def remove_face(cluster_id: int, face_id: int, dom: DomainDep, svc: ServiceDep) -> dict:
    """Take a face out of a cluster (it becomes a cluster of its own)."""
    async with svc.gallery(wrote=dom) as gallery:
        return {"id": face_id, "cluster_id": await unknown.remove_face(gallery, dom, cluster_id, face_id)}


@router.delete("/clusters/{cluster_id}")
async def discard_cluster(cluster_id: int, dom: DomainDep, svc: ServiceDep) -> dict:
    """Delete a cluster's faces with their embeddings and thumbnails."""
    async with svc.gallery(wrote=dom) as gallery:
        return {"discarded": await unknown.discard_cluster(gallery, dom, cluster_id)}


@router.get("/unassigned/{face_id}/thumbnail", response_class=Response, responses={
    200: {"content": {"image/jpeg": {}}, "description": "A small JPEG crop of the face."},
    404: {"model": ErrorBody, "description": "No such face, or it has no thumbnail."}})
async def unassigned_thumbnail(face_id: int, dom: DomainDep, svc: ServiceDep) -> Response:
    data = await svc.read(dom, lambda gallery: unknown.unassigned_thumbnail(gallery, dom, face_id))
    return Response(data, media_type="image/jpeg",
                    headers={"Cache-Control": "private", "X-Content-Type-Options": "nosniff"})


@router.delete("/unassigned/{face_id}", status_code=204)
async def delete_unassigned(face_id: int, dom: DomainDep, svc: ServiceDep) -> None:
    async with svc.gallery(wrote=dom) as gallery:
        await unknown.delete_unassigned(gallery, dom, face_id)


@router.get("/audit", response_model=AuditOut)
async def audit(dom: DomainDep, svc: ServiceDep,
                limit: Annotated[int, Query(ge=1, le=1000, description="Findings of each kind.")] = 50,
                ) -> dict:
    """What is likely wrong with the gallery: faces far from the rest of their person's
    (mislabeled?), pairs of people closer than the recognize threshold (the same person, or
    look-alikes), people with a single face."""
    face_ids, person_ids, emb, people = await svc.read(
        dom, lambda gallery: unknown.gallery_embeddings(gallery, dom))
    return await asyncio.to_thread(audit_report, face_ids, person_ids, emb, people, dom.model,
                                   svc.settings.threshold_of(dom), limit)


@router.post("/faces/{face_id}/move")
async def move_face(face_id: int, body: MovePerson, dom: DomainDep, svc: ServiceDep) -> dict:
    """Move an enrolled face to another person (the audit's "likely mislabeled")."""
    async with svc.gallery(wrote=dom) as gallery:
        pid = await curate.move_face(gallery, dom, face_id, body.person_id)
        return {"face_id": face_id, "person": asdict(await gallery.get_person(dom, pid))}


@router.post("/people/{person_id}/merge")
async def merge_people(person_id: int, body: MovePerson, dom: DomainDep, svc: ServiceDep) -> dict:
    """Merge person ``person_id`` (the body's) into this one: their faces move here and they are
    deleted (the audit's "likely the same person")."""
    async with svc.gallery(wrote=dom) as gallery:
        moved = await curate.merge_people(gallery, dom, person_id, body.person_id)
        return {"moved": moved, "person": asdict(await gallery.get_person(dom, person_id))}
