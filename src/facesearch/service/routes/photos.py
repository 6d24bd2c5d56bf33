"""Recognize, verify and detect: a photo in, faces out.

The model work runs in a worker process first, without holding a database connection; the
connection is taken only for the search itself.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request

from ... import names
from ...config import usable_model
from ...errors import BadRequest, NoFace
from ...models.base import Analysis
from ..auth import Caller
from ..schemas import DetectOut, RecognizeOut, VerifyOut
from ..state import CallerDep, DomainDep, Service, ServiceDep
from ..uploads import photo_body, read_upload
from .clusters import keep_unknown_faces

router = APIRouter(tags=["recognition"])

Threshold = Annotated[float | None, Query(ge=0, le=2, description=(
    "Cosine distance under which two faces are the same person; default: the one calibrated for "
    "the model (FACESEARCH_THRESHOLD / FACESEARCH_VERIFY_THRESHOLD if set)."))]


MinFace = Annotated[int | None, Query(ge=20, le=10_000, description=(
    "Smallest face looked for, in pixels; default: the server's FACESEARCH_MIN_FACE (40). Faces "
    "under ~80 px need an upsampled detector pass: on photos up to 800 px, min_face=80 answers "
    "about twice as fast when no small faces are expected (portraits, ID photos)."))]


def _image(analysis: Analysis) -> dict:
    return {"width": analysis.width, "height": analysis.height}


def _timings(request: Request, start: float, **stages: float) -> dict[str, float]:
    timings = {k: round(v, 2) for k, v in stages.items()}
    timings["total"] = round((time.perf_counter() - start) * 1e3, 2)
    request.state.timings_ms = timings
    return timings


@router.post("/v1/domains/{domain}/recognize", response_model=RecognizeOut,
             openapi_extra=photo_body("photo"))
async def recognize(request: Request, dom: DomainDep,
                    svc: ServiceDep,
                    top_k: Annotated[int, Query(ge=1, le=100, description="Matches per face.")] = 5,
                    threshold: Threshold = None,
                    max_faces: Annotated[int | None, Query(ge=1, description=(
                        "Faces matched, largest first (at most the server's limit)."))] = None,
                    min_face: MinFace = None) -> dict:
    """Who is in this photo? Every face (largest first) with its best matches in the domain."""
    start = time.perf_counter()
    s = svc.settings
    threshold = s.threshold_of(dom) if threshold is None else threshold
    photo = (await read_upload(request)).one("photo")
    analysis = await svc.analyze(request, photo.data, tenant=dom.name, model=dom.model,
                                 max_faces=min(max_faces or s.max_faces, s.max_faces), min_face=min_face,
                                 thumbnails=dom.keep_unknown and s.thumbnails)
    t0 = time.perf_counter()
    embeddings = [f.embedding for f in analysis.faces]
    # A read: on a read replica that has this domain's latest write, if there are replicas.
    results = await svc.read(dom, lambda gallery: gallery.search(
        dom, dom.model, embeddings, k=top_k, threshold=threshold))
    search_ms = (time.perf_counter() - t0) * 1e3
    kept: dict[int, int] = {}
    extra: dict[str, float] = {}
    if dom.keep_unknown:  # faces matched to nobody are kept as unassigned faces (a write)
        t1 = time.perf_counter()
        async with svc.gallery(wrote=dom) as gallery:
            kept = await keep_unknown_faces(gallery, s, dom, photo.data, analysis.faces, results)
        extra["keep_unknown"] = (time.perf_counter() - t1) * 1e3
    svc.metrics.search.observe(search_ms / 1e3)
    request.state.faces = len(analysis.faces)
    faces = [{**face.as_dict(), "matches": [
        {"person_id": m.person_id, "name": m.person, "face_id": m.face_id,
         "distance": round(m.distance, 5), "similarity": round(1 - m.distance, 5)}
        for m in matches], "unassigned_face_id": kept.get(i)}
        for i, (face, matches) in enumerate(zip(analysis.faces, results, strict=True))]
    return {"faces": faces, "faces_found": analysis.faces_found, "image": _image(analysis),
            "model": dom.model, "threshold": threshold, "top_k": top_k,
            "timings_ms": _timings(request, start, **analysis.timings_ms, search=search_ms, **extra)}


async def _verify_model(request: Request, who: Caller, svc: Service, domain: str | None,
                        model: str | None) -> str:
    """The model verify compares with: the domain's (which the key must reach, as on the domain
    routes), the one named, or the server's default."""
    if domain is not None and model is not None:
        raise BadRequest("give ?domain= or ?model=, not both")
    if domain is not None:
        name = names.domain_name(domain)
        who.check_domain(name)
        request.state.domain = name
        async with svc.gallery() as gallery:
            return (await gallery.get_domain(name)).model
    return usable_model(svc.settings.model if model is None else model)


@router.post("/v1/verify", response_model=VerifyOut, openapi_extra=photo_body("photo1", "photo2"))
async def verify(request: Request, who: CallerDep, svc: ServiceDep,
                 threshold: Threshold = None,
                 domain: Annotated[str | None, Query(max_length=63, description=(
                     "Compare with this domain's model (the key must reach the domain)."))] = None,
                 model: Annotated[str | None, Query(max_length=100, description=(
                     "Compare with this model; default: the server's FACESEARCH_MODEL."))] = None,
                 ) -> dict:
    """Are the largest faces of two photos (``photo1``, ``photo2``) the same person?"""
    start = time.perf_counter()
    model = await _verify_model(request, who, svc, domain, model)
    threshold = svc.settings.verify_threshold_for(model) if threshold is None else threshold
    upload = await read_upload(request)
    photos = upload.named("photo1", "photo2") or upload.photos
    if len(photos) != 2:
        raise BadRequest(f"send two photos, as file fields 'photo1' and 'photo2' (got {len(photos)})")
    analyses = await svc.analyze_many(request, [p.data for p in photos],
                                      tenant=request.state.domain if domain else svc.tenant(who),
                                      model=model, max_faces=1, largest=True)
    for analysis in analyses:
        if isinstance(analysis, BaseException):
            raise analysis
    for label, analysis in zip(("photo1", "photo2"), analyses, strict=True):
        if not analysis.faces:
            raise NoFace(f"no face found in {label}")
    a, b = (an.faces[0] for an in analyses)
    distance = float(1.0 - a.embedding @ b.embedding)
    request.state.faces = 2
    return {"same_person": distance < threshold, "distance": round(distance, 5),
            "similarity": round(1 - distance, 5), "threshold": threshold,
            "model": model, "faces": [a.as_dict(), b.as_dict()],
            "timings_ms": _timings(request, start)}


@router.post("/v1/detect", response_model=DetectOut, openapi_extra=photo_body("photo"))
async def detect(request: Request, who: CallerDep, svc: ServiceDep,
                 min_face: MinFace = None) -> dict:
    """Faces of a photo: boxes, detection scores and 5 landmarks (no recognition)."""
    start = time.perf_counter()
    photo = (await read_upload(request)).one("photo")
    analysis = await svc.analyze(request, photo.data, tenant=svc.tenant(who),
                                 model=svc.settings.model, max_faces=svc.settings.max_faces,
                                 embed=False, min_face=min_face)
    request.state.faces = len(analysis.faces)
    return {"faces": [f.as_dict() for f in analysis.faces], "faces_found": analysis.faces_found,
            "image": _image(analysis), "timings_ms": _timings(request, start, **analysis.timings_ms)}
