"""What the running service holds (database pool, model workers, admin key) and the request
dependencies built on it: who is calling, and which domain they may reach."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from .. import names
from ..config import Settings
from ..errors import Unauthorized
from ..models.base import Analysis
from ..store.gallery import Domain, Gallery, GalleryCache
from ..store.pkl import PklGallery, PklStore
from .auth import Caller, is_admin, presented_key
from .observability import Metrics

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from ..inference import ModelPool


@dataclass
class Service:
    settings: Settings
    db: AsyncConnectionPool | PklStore  # PklStore in PKL mode (FACESEARCH_STORE=pkl)
    models: ModelPool
    admin_digest: bytes
    metrics: Metrics
    cache: GalleryCache = field(default_factory=GalleryCache)
    models_error: str | None = None  # why the model workers could not start, for /readyz

    @asynccontextmanager
    async def gallery(self) -> AsyncIterator[Gallery]:
        """A gallery on a pooled connection, held only for the block (never across inference);
        in PKL mode, one on the DeepFace files (same interface)."""
        if isinstance(self.db, PklStore):
            yield PklGallery(self.db)  # type: ignore[misc]
            return
        async with self.db.connection() as conn:
            yield Gallery(conn, self.cache)

    async def analyze(self, data: bytes, *, model: str, max_faces: int, embed: bool = True,
                      thumbnails: bool = False, largest: bool = False,
                      min_face: int | None = None) -> Analysis:
        """Decode, detect and embed one photo in a model worker with ``model`` (a domain's, or
        the server's default; and crop thumbnails if asked). ``largest`` and ``min_face``
        (default: the server's): see ``FaceModel.detect``."""
        future = self.models.submit(data, max_pixels=self.settings.max_pixels,
                                    max_faces=max_faces, embed=embed, thumbnails=thumbnails,
                                    min_face=min_face or self.settings.min_face, largest=largest,
                                    model=model)
        analysis = await asyncio.wrap_future(future)
        self.metrics.observe_inference(analysis.timings_ms)
        return analysis


def service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(service)]


async def caller(request: Request, svc: ServiceDep) -> Caller:
    """Authenticate the request's key: the admin key, or an active domain key. Done already by
    the Guard middleware, before the body was read (service/guard.py)."""
    done = getattr(request.state, "caller", None)
    if isinstance(done, Caller):
        return done
    key = presented_key(request)
    if is_admin(key, svc.admin_digest):
        return Caller(admin=True)
    async with svc.gallery() as gallery:
        domain = await gallery.key_domain(key)
    if domain is None:
        raise Unauthorized("unknown or revoked API key")
    return Caller(admin=False, domain=domain)


CallerDep = Annotated[Caller, Depends(caller)]


async def admin(who: CallerDep) -> Caller:
    who.check_admin()
    return who


AdminDep = Annotated[Caller, Depends(admin)]


async def domain(domain: str, request: Request, who: CallerDep, svc: ServiceDep) -> Domain:
    """The domain of the path, once the caller may reach it. A key of another domain gets 403
    whether or not the domain exists, so keys cannot probe for other tenants' names."""
    name = names.domain_name(domain)
    who.check_domain(name)
    request.state.domain = name  # for the request log
    async with svc.gallery() as gallery:
        return await gallery.get_domain(name)


DomainDep = Annotated[Domain, Depends(domain)]
