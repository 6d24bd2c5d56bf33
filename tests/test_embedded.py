"""The embedded PostgreSQL: started on demand in the data directory, reused, stopped cleanly."""

from __future__ import annotations

from pathlib import Path

from .conftest import run_facesearch as run


def test_started_reused_and_stopped(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = run(home, "domains", "create", "embedded-check")
    assert first.returncode == 0, first.stderr
    pgdata = home / "pgdata"
    assert (pgdata / "PG_VERSION").read_text().strip() == "18"
    # The last facesearch process to exit stops the server: a clean shutdown removes the pid file.
    assert not (pgdata / "postmaster.pid").exists()
    assert "database system is shut down" in (pgdata / "log").read_text()

    second = run(home, "domains", "list")
    assert second.returncode == 0 and "embedded-check" in second.stdout
    assert not (pgdata / "postmaster.pid").exists()


def test_versions(db) -> None:
    """PostgreSQL 18 and pgvector >= 0.8 (iterative scans, the partition-pruned HNSW plans)."""
    assert db.info.server_version >= 180000
    version = db.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    assert tuple(int(x) for x in version[0].split(".")[:2]) >= (0, 8)
