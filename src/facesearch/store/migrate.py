"""Versioned schema migrations: ``migrations/NNNN_name.sql``, applied in order, each once."""

from __future__ import annotations

from importlib import resources

import psycopg

from ..errors import StoreError

_LOCK = 0x66616365  # advisory lock key: one migrator at a time across processes


def ensure_vector_extension(conn: psycopg.Connection) -> str:
    """Create pgvector if needed and return its version; a clear StoreError if we cannot."""
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    if row:
        return row[0]
    available = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone()
    if not available:
        raise StoreError(
            "the PostgreSQL server has no pgvector extension installed. Install pgvector on it "
            "(https://github.com/pgvector/pgvector), or unset FACESEARCH_DATABASE_URL to use "
            "facesearch's embedded PostgreSQL."
        )
    try:
        with conn.transaction():
            # Replicas starting together on a new database: IF NOT EXISTS alone still lets two
            # sessions insert the extension at once (a unique violation for the second).
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.Error as exc:
        raise StoreError(
            f"pgvector is installed on the server but could not be created in this database "
            f"({exc.diag.message_primary or exc}). Ask a superuser to run "
            "'CREATE EXTENSION vector;' in it, then try again."
        ) from None
    return conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]


def migrations() -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` of every migration shipped with the package, in order."""
    found = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            version, _, name = entry.name.removesuffix(".sql").partition("_")
            found.append((int(version), name, entry.read_text()))
    return sorted(found)


def migrate(conn: psycopg.Connection, target: int | None = None) -> list[int]:
    """Apply the migrations this database lacks, up to version ``target`` (default: all); return
    the versions applied. (A target lets tests build a database as an older release left it.)"""
    applied_now = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations():
            if version in done or (target is not None and version > target):
                continue
            conn.execute(sql)
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                         (version, name))
            applied_now.append(version)
    return applied_now
