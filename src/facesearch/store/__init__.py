"""The gallery store: PostgreSQL + pgvector, embedded by default or external by URL.

:class:`Gallery` (all the SQL) is async. The HTTP service runs it on an :func:`open_pool` pool
(after :func:`prepare`); the CLI, tests and benchmarks use :class:`BlockingGallery`, the same
Gallery behind blocking calls. :func:`connect` gives a plain sync connection (migrations, tests).
Nothing here connects at import time.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from pgvector.psycopg import register_vector, register_vector_async

from ..config import Settings
from ..errors import StoreError
from .embedded import start_embedded
from .gallery import (
    EF_SEARCH,
    ApiKey,
    Domain,
    DomainInfo,
    FaceRow,
    Gallery,
    GalleryCache,
    Match,
    NewFace,
    Person,
)
from .migrate import ensure_vector_extension, migrate

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

__all__ = [
    "ApiKey", "BlockingGallery", "Domain", "DomainInfo", "FaceRow", "Gallery", "GalleryCache",
    "Match", "NewFace", "Person", "configure", "connect", "database_url", "open_gallery",
    "open_pool", "prepare", "where",
]

T = TypeVar("T")
_CONNECT_TIMEOUT = 10


def database_url(settings: Settings) -> str:
    """The external URL if configured, else the embedded server's (started if needed)."""
    return settings.database_url or start_embedded(settings.pgdata)


def where(url: str, unparsable: str = "the configured server") -> str:
    """Host, port and database of a URL (or its Unix socket), never its password: for error
    messages, logs, /readyz and doctor."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return unparsable
    host = str(info.get("host") or "localhost")
    db = info.get("dbname") or info.get("user") or ""
    if host.startswith("/"):
        return f"Unix socket in {host}, database {db}"
    return f"{host}:{info.get('port') or 5432}/{db}"


def _unreachable(url: str, exc: psycopg.Error) -> StoreError:
    return StoreError(
        f"cannot connect to PostgreSQL at {where(url)}: {str(exc).strip()}. "
        "Check FACESEARCH_DATABASE_URL, or unset it to use the embedded server."
    )


def _connect(url: str) -> psycopg.Connection:
    """A sync autocommit connection with pgvector and the schema in place."""
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=_CONNECT_TIMEOUT)
    except psycopg.Error as exc:
        raise _unreachable(url, exc) from None
    try:
        ensure_vector_extension(conn)
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def connect(url: str) -> psycopg.Connection:
    """Open a sync connection, make sure pgvector and the schema are in place, register the types."""
    conn = _connect(url)
    try:
        register_vector(conn)
        conn.execute(f"SET hnsw.ef_search = {EF_SEARCH}")
    except BaseException:
        conn.close()
        raise
    return conn


def prepare(url: str) -> None:
    """Make sure pgvector and the schema are in place (blocking: the service runs it once at
    start-up, in a thread, before opening its pool)."""
    _connect(url).close()


async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
    """Set up a new async connection for :class:`Gallery` (``AsyncConnectionPool(configure=...)``):
    autocommit, the vector type, the search's HNSW candidates. Needs :func:`prepare` first."""
    if not conn.autocommit:
        await conn.set_autocommit(True)
    await register_vector_async(conn)
    await conn.execute(f"SET hnsw.ef_search = {EF_SEARCH}")


def open_pool(url: str, *, min_size: int = 1, max_size: int = 10) -> AsyncConnectionPool:
    """A pool of configured connections, not yet open: the caller opens it (``await pool.open()``)
    in its start-up, after :func:`prepare`, and closes it at shutdown."""
    from psycopg_pool import AsyncConnectionPool

    from .resilience import limit_session, pool_kwargs

    async def configure_pooled(conn: psycopg.AsyncConnection[Any]) -> None:
        await configure(conn)
        await limit_session(conn)

    # Timeouts, checks and reconnection for database outages: see store/resilience.py.
    return AsyncConnectionPool(url, min_size=min_size, max_size=max_size, open=False,
                               configure=configure_pooled, **pool_kwargs())


async def _aconnect(url: str) -> psycopg.AsyncConnection[Any]:
    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True,
                                                     connect_timeout=_CONNECT_TIMEOUT)
    except psycopg.Error as exc:
        raise _unreachable(url, exc) from None
    try:
        await configure(conn)
    except BaseException:
        await conn.close()
        raise
    return conn


class BlockingGallery:
    """The async :class:`Gallery` behind blocking calls, for the CLI, tests and benchmarks: every
    coroutine method of Gallery is here as a plain method with the same arguments. Owns its event
    loop (an :class:`asyncio.Runner`) and connection; do not use it from inside a running loop."""

    def __init__(self, url: str, cache: GalleryCache | None = None) -> None:
        prepare(url)
        self._runner = asyncio.Runner()
        try:
            self.conn = self._runner.run(_aconnect(url))
        except BaseException:
            self._runner.close()
            raise
        self.gallery = Gallery(self.conn, cache)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on this gallery's loop, e.g. ``g.run(g.conn.execute(...))``."""
        # Straight on the loop, not Runner.run: on Python 3.11 its per-call SIGINT handler swap
        # (which reprs the task) adds ~0.1 ms to every call, a tenth of a search.
        return self._runner.get_loop().run_until_complete(coro)

    def close(self) -> None:
        try:
            if not self.conn.closed:
                self._runner.run(self.conn.close())
        finally:
            self._runner.close()

    def __enter__(self) -> BlockingGallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    if TYPE_CHECKING:
        # The Gallery methods, set below; to a type checker they take and return anything.
        def __getattr__(self, name: str) -> Callable[..., Any]: ...


def _blocking(method: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    @functools.wraps(method)  # keeps name, docstring and signature (help(), inspect)
    def call(self: BlockingGallery, *args: Any, **kwargs: Any) -> Any:
        return self.run(method(self.gallery, *args, **kwargs))

    return call


for _name, _method in inspect.getmembers(Gallery, inspect.iscoroutinefunction):
    if not _name.startswith("_"):
        setattr(BlockingGallery, _name, _blocking(_method))
del _name, _method


@contextmanager
def open_gallery(settings: Settings) -> Iterator[BlockingGallery]:
    """The blocking gallery of the configured store: PostgreSQL (started if embedded), or in PKL
    mode the DeepFace files under ``home/pkl`` (no database is started or contacted)."""
    from .pkl import BlockingPklGallery, uses_pkl

    if uses_pkl(settings.store):
        with BlockingPklGallery(settings.home / "pkl", settings.deepface_format) as pkl:
            yield pkl  # the same methods, over PklGallery
        return
    with BlockingGallery(database_url(settings)) as gallery:
        yield gallery
