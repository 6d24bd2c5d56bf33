"""``facesearch doctor``'s lines for the read replicas (FACESEARCH_READ_DATABASE_URLS): each one
reachable and in recovery, its replay lag behind the primary (bytes and seconds), its pgvector,
and each domain's search plan *there* using the domain's HNSW index (the same EXPLAIN as the
primary's, doctor.check_index, run on the replica's connection).

Like the rest of doctor it only reads. Imported lazily by doctor.run (psycopg stays out of the
model workers' imports).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from .config import Settings
from .doctor import FAIL, OK, WARN, Check, Database, _scrub, check_index, check_pgvector, domain_models

LAG_WARN_SECONDS = 10.0  # behind the primary's commits by more than this: reads there are stale


def _lag(db: Database, primary_lsn: str) -> Check:
    """How far the replica's replay is behind the primary's current WAL position."""
    name = f"replica lag: {db.label}"
    behind, seconds = db.one(
        "SELECT pg_wal_lsn_diff(%s::pg_lsn, pg_last_wal_replay_lsn())::bigint,"
        " CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
        " ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float END",
        (primary_lsn,))
    if behind is None:
        return Check(name, FAIL, "nothing replayed yet", "see the replica's log")
    # The primary's position was read a moment before the replica's: writes in between may
    # make the replica look ahead of it.
    detail = f"{max(0, behind):,} bytes, {seconds or 0:.1f} s behind the primary"
    if (seconds or 0) > LAG_WARN_SECONDS:
        return Check(name, WARN, detail, "the replica replays slowly or its link is slow: reads of "
                     "domains written since go to the primary meanwhile; check the replica's load, "
                     "its recovery_min_apply_delay and max_standby_streaming_delay")
    return Check(name, OK, detail)


def replica_checks(primary: Database, settings: Settings) -> Iterator[Check]:
    """Every read replica's lines, in the order of FACESEARCH_READ_DATABASE_URLS."""
    import psycopg

    from .store.replicas import where

    primary_lsn = primary.one("SELECT pg_current_wal_lsn()::text")[0]
    for url in settings.read_database_urls:
        label = where(url)
        try:
            db = Database(url)
        except psycopg.Error as exc:
            yield Check(f"replica: {label}", FAIL, f"cannot connect: {_scrub(str(exc), url)}",
                        "until it answers, the service reads from the primary (and the other "
                        "replicas); is it running, and is the URL in FACESEARCH_READ_DATABASE_URLS "
                        "right?")
            continue
        db.label = label  # type: ignore[attr-defined]
        try:
            yield from _one_replica(db, primary_lsn, settings)
        except psycopg.Error as exc:
            yield Check(f"replica: {label}", FAIL,
                        f"the checks stopped: {type(exc).__name__}: {_scrub(str(exc), url)}")
        finally:
            db.close()


def _one_replica(db: Database, primary_lsn: str, settings: Settings) -> Iterator[Check]:
    label = db.label  # type: ignore[attr-defined]
    version = db.conn.info.parameter_status("server_version") or str(db.conn.info.server_version)
    if not db.one("SELECT pg_is_in_recovery()")[0]:
        yield Check(f"replica: {label}", FAIL, f"PostgreSQL {version}, but not a standby "
                    "(pg_is_in_recovery() is false): the service does not read from it",
                    "point FACESEARCH_READ_DATABASE_URLS at streaming replicas of the primary "
                    "(pg_basebackup -R; docs/DEPLOY.md)")
        return
    yield Check(f"replica: {label}", OK, f"PostgreSQL {version}, streaming replica, reachable")
    yield _lag(db, primary_lsn)
    vector = check_pgvector(db)
    yield replace(vector, check=f"replica pgvector: {label}")
    if vector.status == FAIL or db.one("SELECT to_regclass('faces')")[0] is None:
        return
    db.open_gallery()
    for d in domain_models(db):
        if d.model != d.domain_model:
            continue  # not searched (the primary's report says so)
        check = check_index(db, d, settings)
        yield replace(check, check=f"replica index: {d.label} @ {label}")
