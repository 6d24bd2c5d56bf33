"""People of a domain, their faces, and enrollment of new photos."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from ... import names
from ...errors import BadRequest, FacesearchError, ModelError, NoFace, NothingEnrolled, SeveralFaces
from ...models.base import Analysis, Face
from ...store.gallery import Domain, FaceRow, Gallery, NewFace, Person
from ..bounded import Offset, PathId, StorableText
from ..schemas import (
    EnrollOut,
    ErrorBody,
    FaceList,
    PeoplePage,
    PersonCreate,
    PersonOut,
    PersonUpdate,
)
from ..state import DomainDep, Service, ServiceDep
from ..uploads import Photo, photo_body, read_upload

router = APIRouter(prefix="/v1/domains/{domain}", tags=["people"])

FaceChoice = Annotated[str | None, Query(pattern=r"^(largest|\d{1,3})$", description=(
    "Which face to enroll from a photo with several: 'largest', or its index (0 = largest). "
    "Unset: such photos are refused."))]


def _face_out(f: FaceRow) -> dict:
    return {**asdict(f), "box": dict(zip("xywh", f.box, strict=True))}


@router.post("/people", status_code=201, response_model=PersonOut)
async def create_person(body: PersonCreate, dom: DomainDep,
                        svc: ServiceDep) -> dict:
    async with svc.gallery(wrote=dom) as gallery:
        return asdict(await gallery.create_person(dom, body.name, body.metadata))


@router.get("/people", response_model=PeoplePage)
async def list_people(dom: DomainDep, svc: ServiceDep,
                      q: Annotated[StorableText | None, Query(max_length=200, description=(
                          "Name contains (case-insensitive; % and _ are plain characters)."))] = None,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                      offset: Offset = 0) -> dict:
    async def read(gallery: Gallery) -> tuple[list[Person], int]:
        return (await gallery.list_people(dom, search=q, limit=limit, offset=offset),
                await gallery.count_people(dom, search=q))

    people, total = await svc.read(dom, read)
    page = _bounded_page([asdict(p) for p in people], svc.settings.max_page)
    after = offset + len(page)
    return {"people": page, "total": total, "limit": limit, "offset": offset,
            "next_offset": after if after < total else None}


def _bounded_page(people: list[dict], max_bytes: int) -> list[dict]:
    """The first people whose JSON fits in ``max_bytes`` (at least one, so paging goes on)."""
    size = 0
    for i, person in enumerate(people):
        size += len(json.dumps(person, ensure_ascii=False, default=str).encode())
        if size > max_bytes and i > 0:
            return people[:i]
    return people


@router.get("/people/{person_id}", response_model=PersonOut)
async def get_person(person_id: PathId, dom: DomainDep,
                     svc: ServiceDep) -> dict:
    return asdict(await svc.read(dom, lambda gallery: gallery.get_person(dom, person_id)))


@router.patch("/people/{person_id}", response_model=PersonOut)
async def update_person(person_id: PathId, body: PersonUpdate, dom: DomainDep,
                        svc: ServiceDep) -> dict:
    """Rename a person and/or replace their metadata."""
    async with svc.gallery(wrote=dom) as gallery:
        if body.name is not None:
            await gallery.rename_person(dom, person_id, body.name)
        if body.metadata is not None:
            await gallery.set_metadata(dom, person_id, body.metadata)
        return asdict(await gallery.get_person(dom, person_id))


@router.delete("/people/{person_id}", response_model=PersonOut)
async def delete_person(person_id: PathId, dom: DomainDep,
                        svc: ServiceDep) -> dict:
    """Delete a person and all their faces; the embeddings are removed from disk (VACUUM)."""
    async with svc.gallery(wrote=dom) as gallery:
        person = await gallery.get_person(dom, person_id)
        await gallery.delete_person(dom, person_id)
        await gallery.purge(dom)
    return asdict(person)


@router.get("/people/{person_id}/faces", response_model=FaceList)
async def list_faces(person_id: PathId, dom: DomainDep,
                     svc: ServiceDep) -> dict:
    faces = await svc.read(dom, lambda gallery: gallery.list_faces(dom, person_id))
    return {"faces": [_face_out(f) for f in faces]}


@router.delete("/faces/{face_id}", status_code=204)
async def delete_face(face_id: PathId, dom: DomainDep,
                      svc: ServiceDep) -> None:
    """Delete one face; its embedding is removed from disk (VACUUM)."""
    async with svc.gallery(wrote=dom) as gallery:
        await gallery.delete_face(dom, face_id)
        await gallery.purge(dom)


@router.get("/faces/{face_id}/thumbnail", response_class=Response, responses={
    200: {"content": {"image/jpeg": {}}, "description": "A small JPEG crop of the face."},
    404: {"model": ErrorBody, "description": "No such face, or it has no thumbnail."}})
async def face_thumbnail(face_id: PathId, dom: DomainDep, svc: ServiceDep) -> Response:
    """The face's thumbnail (stored at enrollment unless FACESEARCH_THUMBNAILS=0)."""
    data = await svc.read(dom, lambda gallery: gallery.face_thumbnail(dom, face_id))
    # Biometric data for this key's holder only: no shared cache may keep it.
    return Response(data, media_type="image/jpeg",
                    headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


@router.post("/people/{person_id}/faces", status_code=201, response_model=EnrollOut,
             response_model_exclude_none=True, openapi_extra=photo_body("photo", multiple=True))
async def enroll_person(person_id: PathId, request: Request, dom: DomainDep, svc: ServiceDep,
                        face: FaceChoice = None) -> dict:
    """Enroll one or more photos (file fields ``photo``) of an existing person."""
    async with svc.gallery() as gallery:
        person = await gallery.get_person(dom, person_id)
    upload = await read_upload(request)
    return await _enroll(svc, request, dom, person, upload.photos, face)


@router.post("/enroll", status_code=201, response_model=EnrollOut,
             response_model_exclude_none=True,
             openapi_extra=photo_body("photo", multiple=True, text=("name",)))
async def enroll_by_name(request: Request, dom: DomainDep, svc: ServiceDep,
                         face: FaceChoice = None) -> dict:
    """Enroll photos of a person given by name (form field ``name``), created if new."""
    upload = await read_upload(request)
    if "name" not in upload.fields:
        raise BadRequest("give the person's name in the form field 'name'")
    name = names.person_name(upload.fields["name"])
    if not upload.photos:
        raise BadRequest("no photo in the request: send photos as file fields 'photo'")
    return await _enroll(svc, request, dom, name, upload.photos, face)


async def _enroll(svc: Service, request: Request, dom: Domain, person: Person | str,
                  photos: list[Photo], face: str | None) -> dict:
    """Embed each photo's chosen face in the workers, then store them in one transaction. A
    person given by name is created then, so that a request whose photos are all refused
    leaves nothing behind."""
    if not photos:
        raise BadRequest("no photo in the request: send photos as file fields 'photo'")
    index = 0 if face in (None, "largest") else int(face)
    # The largest face is enrolled: small faces are looked for only in photos without a large
    # one, so "several faces" means several large ones (a face picked by index needs them all).
    analyses = await svc.analyze_many(
        request, [p.data for p in photos], tenant=dom.name, model=dom.model,
        max_faces=min(index + 1, svc.settings.max_faces), thumbnails=svc.settings.thumbnails,
        largest=face is None or face == "largest")
    results: list[dict] = []
    chosen: list[tuple[int, Face, bytes]] = []  # (result index, face, photo sha256)
    for photo, analysis in zip(photos, analyses, strict=True):
        result: dict = {"photo": photo.filename, "status": "refused"}
        results.append(result)
        if isinstance(analysis, Analysis):
            result["faces_found"] = analysis.faces_found
        try:
            chosen_face = _chosen_face(analysis, face, index)
        except FacesearchError as exc:
            result["error"] = {"code": exc.code, "message": exc.message}
            continue
        result["box"] = chosen_face.box.as_dict()
        chosen.append((len(results) - 1, chosen_face, hashlib.sha256(photo.data).digest()))
    if chosen:
        # One transaction for a new person and their faces: an enrollment cut by a database
        # fault leaves no person behind.
        async with svc.gallery(wrote=dom) as gallery, gallery.conn.transaction():
            # The domain's row first: a domain deleted meanwhile (by another replica) is a 404,
            # and the deletion waits for this transaction rather than deadlocking with it.
            await gallery.lock_domain(dom)
            pid = (person.id if isinstance(person, Person)
                   else await gallery.person_id(dom, person, create=True))
            ids = await gallery.add_faces(dom, dom.model, [
                NewFace(person_id=pid, embedding=f.embedding, box=(f.box.x, f.box.y, f.box.w, f.box.h),
                        score=f.score, photo_sha256=sha, thumbnail=f.thumbnail)
                for _, f, sha in chosen])
            person = await gallery.get_person(dom, pid)
        for (i, _, _), face_id in zip(chosen, ids, strict=True):
            results[i]["status"] = "enrolled" if face_id is not None else "already_enrolled"
            results[i]["face_id"] = face_id
    enrolled = sum(r["status"] == "enrolled" for r in results)
    request.state.faces = enrolled
    if not chosen:
        # The workers' fault (died, timed out), not the photos': the request's status says so.
        failed = [a for a in analyses if isinstance(a, ModelError)]
        if failed:
            raise failed[0] if len(photos) == 1 else type(failed[0])(
                f"{failed[0].message} ({len(failed)} of {len(photos)} photos)")
        reasons = "; ".join(f"{r['photo'] or 'photo'}: {r['error']['message']}" for r in results)
        error = NothingEnrolled(f"no face was enrolled ({reasons})")
        error.details = results
        raise error
    assert isinstance(person, Person)
    return {"person": asdict(person), "enrolled": enrolled, "model": dom.model, "results": results}


def _chosen_face(analysis: Analysis | BaseException, face: str | None, index: int) -> Face:
    """The face of a photo to enroll, or why there is none."""
    if isinstance(analysis, BaseException):
        if isinstance(analysis, FacesearchError):
            raise analysis
        raise FacesearchError(f"could not process the photo: {analysis}")
    if not analysis.faces:
        raise NoFace("no face found in the photo")
    if face is None and analysis.faces_found > 1:
        raise SeveralFaces(f"{analysis.faces_found} faces in the photo: say which to enroll with "
                           "?face=largest or ?face=<index> (0 = largest)")
    if index >= len(analysis.faces):
        raise NoFace(f"no face number {index} in the photo ({analysis.faces_found} found)")
    return analysis.faces[index]
