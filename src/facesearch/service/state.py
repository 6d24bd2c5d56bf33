"""What the running service holds (database pool, model workers, admin key) and the request
dependencies built on it: who is calling, and which domain they may reach."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, TypeVar

from fastapi import Depends, Request

from .. import names
from ..config import Settings
from ..errors import Unauthorized
from ..models.base import Analysis
from ..store.gallery import Domain, Gallery, GalleryCache
from ..store.pkl import PklGallery, PklStore
from ..store.replicas import mark_written
from .auth import Caller, is_admin, presented_key
from .observability import Metrics
from .scheduling import check_request_size, results_unless_gone

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from ..inference import ModelPool
    from ..store.replicas import ReplicaSet

T = TypeVar("T")


@dataclass
class Service:
    settings: Settings
    db: AsyncConnectionPool | PklStore  # PklStore in PKL mode (FACESEARCH_STORE=pkl)
    models: ModelPool
    admin_digest: bytes
    metrics: Metrics
    cache: GalleryCache = field(default_factory=GalleryCache)
    models_error: str | None = None  # why the model workers could not start, for /readyz
    replicas: ReplicaSet | None = None  # FACESEARCH_READ_DATABASE_URLS (store/replicas.py)

    @asynccontextmanager
    async def gallery(self, *, wrote: Domain | None = None) -> AsyncIterator[Gallery]:
        """A gallery on a pooled connection of the primary, held only for the block (never across
        inference); in PKL mode, one on the DeepFace files (same interface). ``wrote``: the block
        writes to this domain; with read replicas its WAL position is recorded after the block,
        so the next read of the domain waits for a replica that has it (read-your-writes)."""
        if isinstance(self.db, PklStore):
            yield PklGallery(self.db)  # type: ignore[misc]
            return
        async with self.db.connection() as conn:
            try:
                yield Gallery(conn, self.cache)
            except Exception:
                if wrote is not None and self.replicas is not None:
                    with suppress(Exception):  # it may have committed before failing
                        await mark_written(conn, wrote.id)
                raise
            if wrote is not None and self.replicas is not None:
                await mark_written(conn, wrote.id)

    async def read(self, domain: Domain, read: Callable[[Gallery], Awaitable[T]]) -> T:
        """``read(gallery)``, a pure read of ``domain``: on a read replica that has replayed the
        domain's latest write if there are any, else on the primary. It may run twice (a
        replica failed under it, the primary answers), so it must not write."""
        if self.replicas is None or isinstance(self.db, PklStore):
            async with self.gallery() as gallery:
                return await read(gallery)
        return await self.replicas.run(domain.written_lsn, read, self.gallery)

    async def analyze(self, request: Request, data: bytes, *, tenant: str, model: str,
                      max_faces: int, embed: bool = True, thumbnails: bool = False,
                      largest: bool = False, min_face: int | None = None) -> Analysis:
        """Decode, detect and embed one photo in a model worker with ``model`` (a domain's, or
        the server's default; and crop thumbnails if asked). ``largest`` and ``min_face``
        (default: the server's): see ``FaceModel.detect``. See :meth:`analyze_many`."""
        [result] = await self.analyze_many(request, [data], tenant=tenant, model=model,
                                           max_faces=max_faces, embed=embed,
                                           thumbnails=thumbnails, largest=largest,
                                           min_face=min_face)
        if isinstance(result, BaseException):
            raise result
        return result

    async def analyze_many(self, request: Request, photos: list[bytes], *, tenant: str,
                           model: str, max_faces: int, embed: bool = True,
                           thumbnails: bool = False, largest: bool = False,
                           min_face: int | None = None) -> list[Analysis | BaseException]:
        """:meth:`analyze` for each photo, in ``tenant``'s queue (a domain; its fair share of the
        workers): each photo's Analysis or the error it raised. Refused as a whole if too big
        (TooManyPhotos, TooManyPixels) or if the tenant's queue is full (Overloaded); dropped if
        the client disconnects while the photos wait (ClientGone)."""
        check_request_size(photos, self.settings)
        futures = self.models.submit_many(
            photos, tenant=tenant, max_pixels=self.settings.max_pixels, max_faces=max_faces,
            embed=embed, thumbnails=thumbnails, min_face=min_face or self.settings.min_face,
            largest=largest, model=model)
        results = await results_unless_gone(request, futures)
        for result in results:
            if isinstance(result, Analysis):
                self.metrics.observe_inference(result.timings_ms)
        return results

    @staticmethod
    def tenant(who: Caller) -> str:
        """Whose queue a request without a domain in its path waits in: its key's domain, or
        the admin's."""
        return who.domain or ":admin"


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
