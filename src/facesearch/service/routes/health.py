"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..state import AdminDep, ServiceDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict:
    """The process is alive and serving HTTP."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(svc: ServiceDep) -> JSONResponse:
    """Ready for traffic: the database answers and every model worker has loaded its model."""
    problems = []
    try:
        async with asyncio.timeout(5), svc.db.connection() as conn:
            await conn.execute("SELECT 1")
        database = "ok"
    except Exception as exc:  # any failure means "not ready"; the reason goes in the body
        database = f"unavailable: {type(exc).__name__}"
        problems.append("the database does not answer")
    workers = svc.models.stats()
    if not svc.models.ready():
        problems.append(svc.models_error or "the model workers are still loading")
    body: dict = {"database": database, "workers": workers}
    if svc.replicas is not None:  # informational: a replica down is not a reason to be unready
        body["read_replicas"] = svc.replicas.status()
    if problems:
        body["error"] = {"code": "not_ready", "message": "; ".join(problems)}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
    return JSONResponse({"status": "ready", **body})


@router.get("/metrics", response_class=Response)
async def metrics(_: AdminDep, svc: ServiceDep) -> Response:
    """Prometheus metrics (with the admin key: they name the domains)."""
    async with svc.gallery() as gallery:
        domains = [(d.name, d.people, d.faces) for d in await gallery.list_domains()]
    text = svc.metrics.render(domains, svc.models.stats())
    return Response(text, media_type=CONTENT_TYPE_LATEST)
