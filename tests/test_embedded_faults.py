"""The embedded PostgreSQL's start-up faults, each in a data directory of its own: a stale
``postmaster.pid`` whose pid another process reuses, a data directory owned by someone else, a
full disk. Each a clear message and exit code, or a recovery; nothing lost."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from facesearch.store.embedded_checks import EX_IOERR, EX_NOPERM

from .conftest import run_facesearch as run


def made(home: Path, domain: str) -> Path:
    """A data directory holding one domain, its server stopped (as after a clean exit)."""
    r = run(home, "domains", "create", domain)
    assert r.returncode == 0, r.stderr
    assert not (home / "pgdata" / "postmaster.pid").exists()
    return home / "pgdata"


def listed(home: Path) -> str:
    r = run(home, "domains", "list")
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_stale_pid_file_of_a_reused_pid(tmp_path: Path) -> None:
    """A server killed long ago left postmaster.pid; its pid now runs something else (in a
    container, often a low pid): PostgreSQL alone would refuse to start."""
    pgdata = made(tmp_path / "home", "stale-pid")
    other = subprocess.Popen(["sleep", "120"])
    try:
        (pgdata / "postmaster.pid").write_text(
            f"{other.pid}\n{pgdata}\n{int(time.time()) - 3600}\n5432\n{pgdata}\n\n"
            "  1234567     98304\nready   \n")
        r = run(tmp_path / "home", "domains", "list")
        assert r.returncode == 0, r.stderr
        assert "stale-pid" in r.stdout
        assert "not this database's server" in r.stderr
        assert (pgdata / "postmaster.pid.stale").exists()
        assert other.poll() is None  # the process that reused the pid is left alone
    finally:
        other.kill()
        other.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the data directory to another user needs root")
def test_data_directory_owned_by_someone_else(tmp_path: Path) -> None:
    home = tmp_path / "home"
    pgdata = made(home, "owned")
    owner = pgdata.stat()
    subprocess.run(["chown", "-R", "4242:4242", str(pgdata)], check=True)
    try:
        r = run(home, "domains", "list")
        assert r.returncode == EX_NOPERM, (r.returncode, r.stderr)
        assert "belongs to uid 4242" in r.stderr and "chown -R" in r.stderr
        assert "Traceback" not in r.stderr
    finally:
        subprocess.run(["chown", "-R", f"{owner.st_uid}:{owner.st_gid}", str(pgdata)], check=True)
    assert "owned" in listed(home)  # nothing was lost


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 160 MB tmpfs of our own (needs root and CAP_SYS_ADMIN, e.g. not in every container)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", str(mount)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs here to fill: {r.stderr.strip()}")
    mount.chmod(0o755)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk(small_disk: Path) -> None:
    home = small_disk / "home"
    made(home, "on-a-small-disk")
    filler = small_disk / "filler"
    with filler.open("wb") as f:  # fill the disk to the last block
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    r = run(home, "domains", "list")
    assert r.returncode == EX_IOERR, (r.returncode, r.stderr)
    assert "is full" in r.stderr and "Nothing was lost" in r.stderr
    assert "Traceback" not in r.stderr
    filler.unlink()
    assert "on-a-small-disk" in listed(home)
