"""How the service's connection pool behaves when PostgreSQL goes away and comes back.

The bound on a request that needs a database that is down (stopped, restarted, its backends
killed, a failover to a new primary at the same URL) is :data:`POOL_TIMEOUT` seconds waiting for a
connection, plus at most :data:`CONNECT_TIMEOUT` for the connect attempt it may be waiting on; a
query on a live but stuck server is cut at :data:`STATEMENT_TIMEOUT`; a connection whose server
vanished without closing it (a moved IP) is dropped by TCP after :data:`TCP_USER_TIMEOUT_MS`.
The request then answers 503 ``database_unavailable`` with ``Retry-After`` (see service/app.py).

Recovery: every connection is checked (an empty query, one round trip) as it leaves the pool, so
a connection broken by the outage is discarded there instead of failing a request; and a lost
connection is retried for only :data:`RECONNECT_TIMEOUT` seconds, with psycopg_pool's backoff
(1 s, 2 s, 2 s), before its slot is given up. A request that finds no connection grows the pool
again with a fresh attempt, so the first request after the database is back waits at most one
backoff step (~2 s) instead of a long doubled delay (the 25 s measured before).
"""

from __future__ import annotations

from typing import Any

CONNECT_TIMEOUT = 3  # s, libpq connect_timeout (an integer; a refused connection fails at once)
POOL_TIMEOUT = 5.0  # s a request waits for a pooled connection before its 503
RECONNECT_TIMEOUT = 5.0  # s a lost connection's slot keeps retrying in the background
STATEMENT_TIMEOUT_MS = 60_000  # longest statement the service runs (VACUUM of a big domain)
IDLE_IN_TRANSACTION_MS = 60_000  # a transaction left open by a stuck client is ended
TCP_USER_TIMEOUT_MS = 10_000  # unacknowledged data on a dead link
RETRY_AFTER = 2  # s, the Retry-After of a 503 database_unavailable


def connection_kwargs() -> dict[str, Any]:
    """libpq parameters of the service's connections: timeouts and TCP keepalives, so that no
    request hangs on a dead connection. (Over a Unix socket, the embedded server, the TCP ones
    are ignored.)"""
    return {
        "autocommit": True,
        "connect_timeout": CONNECT_TIMEOUT,
        "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 3, "keepalives_count": 3,
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
    }


async def limit_session(conn: Any) -> None:
    """The service's statement limits, set once per pooled connection (by SET, not the startup
    ``options``, which connection poolers such as PgBouncer refuse). The CLI's connections have
    none: a bulk import may build an index for minutes."""
    await conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
    await conn.execute(f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS}")


def pool_kwargs() -> dict[str, Any]:
    """Arguments of ``AsyncConnectionPool`` for the policy above."""
    from psycopg_pool import AsyncConnectionPool

    return {"timeout": POOL_TIMEOUT, "reconnect_timeout": RECONNECT_TIMEOUT,
            "check": AsyncConnectionPool.check_connection, "kwargs": connection_kwargs()}
