"""Reads on streaming replicas (FACESEARCH_READ_DATABASE_URLS); writes stay on the primary.

Each replica has one small pool, opened by the running service (never at import, never inherited
across fork), with the same session set-up as the primary's (pgvector's type, ``hnsw.ef_search``,
the statement limits). A read goes to the replicas in turn (round robin) and falls back to the
next one, then to the primary, when a replica fails: refused or lost connection, no connection in
time, a query cancelled by a recovery conflict, a replica that stopped answering. A failed replica
is skipped for a backoff (:data:`BACKOFF_FIRST` doubling up to :data:`BACKOFF_MAX` seconds) and
used again once a poll of it succeeds: the request itself never fails for it.

Read-your-writes, across any number of API processes: after a write to a domain the API records
the primary's WAL position in the domain's row (:func:`mark_written`, ``domains.written_lsn``, on
the primary, after the commit); every request reads that row from the primary already (its
domain, its key), so each API process knows it without sharing memory (architecture rule 7). A
read of the domain goes to a replica only if that replica has replayed at least that position
(``pg_last_wal_replay_lsn()``, polled every :data:`POLL_SECONDS`), else to the primary. A
position polled a moment ago is never ahead of the replica's real one, so the rule errs towards
the primary only: a domain just written is read from the primary for ~lag + 0.1 s, then from the
replicas again. Chosen over returning the LSN to the client as a token because it needs nothing
from clients (the web page, the CLI, scripts) and holds whichever API process the next request
reaches; its cost is one UPDATE of one row per write request (docs/BENCHMARKS.md).

What it does not cover: writes made outside the API (the CLI's enroll and imports) are not
recorded, and reach the replicas after their replication lag (milliseconds on a healthy link).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import sql

from ..config import Settings
from .gallery import Gallery, GalleryCache

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("facesearch.replicas")
T = TypeVar("T")

POLL_SECONDS = 0.1  # how often each replica's replay position is read
POLL_TIMEOUT = 2.0  # s a poll may take before the replica counts as failed
POOL_TIMEOUT = 1.0  # s a read waits for a replica connection before trying elsewhere
READ_TIMEOUT = 10.0  # s a read may take on a replica (one that stopped answering) before elsewhere
BACKOFF_FIRST = 0.5  # s a failed replica is skipped, doubled at each failure in a row ...
BACKOFF_MAX = 5.0  # ... up to this
# A replica's failure means "try elsewhere": connection errors, pool timeouts, recovery conflicts
# (SerializationFailure is an OperationalError), a replica stuck past READ_TIMEOUT.
FAILURES = (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError, OSError)

# Lag in seconds: 0 when it has replayed all it received, else the age of the last transaction
# it replayed (how far behind the primary's commits it is).
_POLL = ("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text,"
         " CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
         " ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float END")


def lsn_int(lsn: str | None) -> int | None:
    """A ``pg_lsn`` as text (``'16/B374D848'``) as a comparable integer; None stays None."""
    if lsn is None:
        return None
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def where(url: str) -> str:
    """host:port/database of a replica's URL, never its password."""
    from . import where as url_where  # the package's, loaded before any of its modules runs

    return url_where(url, "a read replica (its URL does not parse)")


async def mark_written(conn: psycopg.AsyncConnection[Any], domain_id: int) -> None:
    """Record, on the primary and after the write's commit, the WAL position a replica must have
    replayed to show this domain's latest write. One round trip (one query string, its own
    transaction; the connection is in autocommit). Committed asynchronously: visible to every
    session at once, without waiting for a WAL flush (that wait was ~5 ms of its ~5.5 ms here);
    a primary crash may lose the record, never the write it follows (committed and flushed)."""
    await conn.execute(sql.SQL(
        "BEGIN; SET LOCAL synchronous_commit = off; UPDATE domains SET written_lsn ="
        " greatest(written_lsn, pg_current_wal_lsn()) WHERE id = {}; COMMIT").format(
            sql.Literal(int(domain_id))))


@dataclass(eq=False)
class Replica:
    """One read replica: its pool, and what its poller last saw of it."""

    url: str
    pool: AsyncConnectionPool
    name: str = ""
    up: bool = False
    replay_lsn: int | None = None
    lag_seconds: float | None = None  # behind the primary's commits (0: all received replayed)
    failures: int = 0  # in a row
    retry_at: float = 0.0  # monotonic time before which it is skipped
    error: str | None = None
    reads: int = 0  # served here
    poller: psycopg.AsyncConnection[Any] | None = field(default=None, repr=False)

    def failed(self, exc: BaseException) -> None:
        """Skip this replica for a backoff; the poller brings it back once it answers again."""
        was_up = self.up
        self.up = False
        self.failures += 1
        self.retry_at = time.monotonic() + min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self.failures - 1))
        self.error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
        if was_up:
            log.warning("read replica %s failed, reads go elsewhere: %s", self.name, self.error)

    def status(self) -> dict[str, Any]:
        return {"replica": self.name, "up": self.up, "lag_seconds": self.lag_seconds,
                "reads": self.reads, **({"error": self.error} if self.error and not self.up else {})}


class ReplicaSet:
    """The read replicas of one service: routing, fallback and the replay-position poller."""

    def __init__(self, urls: tuple[str, ...], cache: GalleryCache, *, pool_size: int = 4) -> None:
        self.cache = cache
        self.replicas = [Replica(url, _pool(url, pool_size), name=where(url)) for url in urls]
        self._turn = itertools.count()
        self._poller: asyncio.Task[None] | None = None
        self.primary_reads = 0  # reads the replicas could not take (behind, down, a write needed)

    async def open(self) -> None:
        """Open the pools without waiting for them (a replica down at start-up is a replica
        skipped, not a service that cannot start), poll once, and keep polling."""
        for r in self.replicas:
            await r.pool.open(wait=False)
        await self.poll()
        self._poller = asyncio.create_task(self._poll_forever())

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with suppress(asyncio.CancelledError):
                await self._poller
        for r in self.replicas:
            if r.poller is not None:
                await r.poller.close()
            await r.pool.close()

    # -- routing ---------------------------------------------------------------------------------

    def pick(self, needed_lsn: int | None, tried: set[Replica]) -> Replica | None:
        """The next replica in turn that is up and has replayed ``needed_lsn``, if any."""
        n = len(self.replicas)
        start = next(self._turn)
        for i in range(n):
            r = self.replicas[(start + i) % n]
            if r in tried or not r.up:
                continue
            if needed_lsn is not None and (r.replay_lsn is None or r.replay_lsn < needed_lsn):
                continue
            return r
        return None

    async def run(self, written_lsn: str | None, read: Callable[[Gallery], Awaitable[T]],
                  primary: Callable[[], AbstractAsyncContextManager[Gallery]]) -> T:
        """``read(gallery)`` on a replica that has replayed ``written_lsn`` (a domain's), on the
        next one if it fails there, else on the primary (``primary()``, the service's gallery).
        ``read`` must only read: it may run more than once."""
        needed = lsn_int(written_lsn)
        tried: set[Replica] = set()
        while (r := self.pick(needed, tried)) is not None:
            tried.add(r)
            try:
                async with asyncio.timeout(READ_TIMEOUT), r.pool.connection() as conn:
                    result = await read(Gallery(conn, self.cache))
            except psycopg.errors.ReadOnlySqlTransaction:
                break  # the read needed a write (a model registered on first use): the primary
            except FAILURES as exc:
                r.failed(exc)
                continue
            r.reads += 1
            return result
        self.primary_reads += 1
        async with primary() as gallery:
            return await read(gallery)

    # -- the poller ------------------------------------------------------------------------------

    async def poll(self) -> None:
        """Read every replica's replay position once (a replica in its backoff is left alone)."""
        await asyncio.gather(*(self._poll_one(r) for r in self.replicas
                               if r.up or time.monotonic() >= r.retry_at))

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                await self.poll()
            except Exception:  # never let the poller die: log and go on
                log.exception("read replica poll failed")

    async def _poll_one(self, r: Replica) -> None:
        try:
            async with asyncio.timeout(POLL_TIMEOUT):
                if r.poller is None or r.poller.closed or r.poller.broken:
                    r.poller = await psycopg.AsyncConnection.connect(
                        r.url, autocommit=True, connect_timeout=2)
                cur = await r.poller.execute(_POLL)
                recovering, lsn, lag = await cur.fetchone() or (False, None, None)
        except FAILURES as exc:
            if r.poller is not None:
                with suppress(Exception):
                    await r.poller.close()
                r.poller = None
            r.failed(exc)
            return
        if not recovering:
            r.failed(psycopg.OperationalError("not a standby (pg_is_in_recovery() is false): "
                                              "promoted, or the primary's URL by mistake"))
            return
        if not r.up:
            log.info("read replica %s is in use%s", r.name, " again" if r.failures else "")
        r.up, r.failures, r.error = True, 0, None
        r.replay_lsn = lsn_int(lsn)
        r.lag_seconds = None if lag is None else max(0.0, lag)

    def status(self) -> dict[str, Any]:
        """For /readyz: each replica's state, and how many reads went to the primary instead."""
        return {"replicas": [r.status() for r in self.replicas],
                "primary_reads": self.primary_reads}


async def open_replicas(settings: Settings, cache: GalleryCache) -> ReplicaSet:
    """The service's replicas (its start-up): a pool each, two connections per model worker."""
    replicas = ReplicaSet(settings.read_database_urls, cache,
                          pool_size=max(2, settings.workers * 2))
    await replicas.open()
    for r in replicas.replicas:
        log.info("read replica %s: %s", r.name, "in use" if r.up else f"not yet usable ({r.error})")
    return replicas


def _pool(url: str, size: int) -> AsyncConnectionPool:
    """A replica's pool, not opened: the primary's session set-up and limits, shorter waits."""
    from psycopg_pool import AsyncConnectionPool

    from . import configure
    from .resilience import limit_session, pool_kwargs

    async def configure_pooled(conn: psycopg.AsyncConnection[Any]) -> None:
        await configure(conn)
        await limit_session(conn)

    return AsyncConnectionPool(url, min_size=1, max_size=size, open=False,
                               configure=configure_pooled,
                               **{**pool_kwargs(), "timeout": POOL_TIMEOUT})
