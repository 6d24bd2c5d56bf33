"""The embedded PostgreSQL: started on demand in the data directory, reused, stopped cleanly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("facesearch", path=str(Path(sys.executable).parent)) or "facesearch"
    env = {**os.environ, "FACESEARCH_HOME": str(home)}
    env.pop("FACESEARCH_DATABASE_URL", None)
    return subprocess.run([exe, *args], capture_output=True, text=True, env=env, timeout=300,
                          stdin=subprocess.DEVNULL)


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
