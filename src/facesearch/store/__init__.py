"""The gallery store: PostgreSQL + pgvector, embedded by default or external by URL.

Nothing here connects at import time; :func:`open_gallery` connects when called.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from pgvector.psycopg import register_vector

from ..config import Settings
from ..errors import StoreError
from .embedded import start_embedded
from .gallery import EF_SEARCH, Domain, Gallery, Match, NewFace
from .migrate import ensure_vector_extension, migrate

__all__ = ["Domain", "Gallery", "Match", "NewFace", "connect", "database_url", "open_gallery"]


def database_url(settings: Settings) -> str:
    """The external URL if configured, else the embedded server's (started if needed)."""
    return settings.database_url or start_embedded(settings.pgdata)


def _where(url: str) -> str:
    """Host/port/database of a URL, without the password, for error messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "the configured server"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def connect(url: str) -> psycopg.Connection:
    """Open a connection, make sure pgvector and the schema are in place, register the types."""
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise StoreError(
            f"cannot connect to PostgreSQL at {_where(url)}: {str(exc).strip()}. "
            "Check FACESEARCH_DATABASE_URL, or unset it to use the embedded server."
        ) from None
    try:
        ensure_vector_extension(conn)
        migrate(conn)
        register_vector(conn)
        conn.execute(f"SET hnsw.ef_search = {EF_SEARCH}")
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def open_gallery(settings: Settings) -> Iterator[Gallery]:
    conn = connect(database_url(settings))
    try:
        yield Gallery(conn)
    finally:
        conn.close()
