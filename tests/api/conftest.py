"""The real ``facesearch serve`` in a subprocess on a free port, spoken to over real HTTP."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

# At least 32 characters: the server refuses a shorter FACESEARCH_ADMIN_KEY.
ADMIN_KEY = "fsa_test_" + secrets.token_urlsafe(24)
# A PostgreSQL URL nothing answers (port 1): given to PKL-mode processes, which must not use it.
UNREACHABLE_DB = "postgresql://facesearch@127.0.0.1:1/none?connect_timeout=1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The server closes a connection idle for 5 s (service/connections.py); a client that keeps one
# as long (httpx's default) may send on it just as it closes: "Server disconnected".
LIMITS = httpx.Limits(keepalive_expiry=2)


class Server:
    """One running server: its process, its log, and an admin HTTP client."""

    def __init__(self, proc: subprocess.Popen, port: int, log: Path, home: Path) -> None:
        self.proc = proc
        self.home = home
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log
        self.admin = httpx.Client(base_url=self.base, timeout=120, limits=LIMITS,
                                  headers={"Authorization": f"Bearer {ADMIN_KEY}"})

    def client(self, key: str | None = None, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        kwargs.setdefault("limits", LIMITS)
        return httpx.Client(base_url=self.base, timeout=120, headers=headers, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """The server's spawned model workers (its children running multiprocessing's spawn)."""
        children = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            children += [int(c) for c in (task / "children").read_text().split()]
        return [c for c in children
                if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]

    def wait_ready(self, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                r = httpx.get(self.base + "/readyz", timeout=5)
                if r.status_code == 200:
                    return r.json()
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.admin.close()
        return self.proc.returncode


def start_server(home: Path, log: Path, *args: str, env: dict[str, str] | None = None,
                 admin_key: str | None = ADMIN_KEY, wait: bool = True) -> Server:
    exe = shutil.which("facesearch", path=str(Path(sys.executable).parent)) or "facesearch"
    port = free_port()
    environ = {**os.environ, "FACESEARCH_HOME": str(home), **(env or {})}
    if admin_key:
        environ["FACESEARCH_ADMIN_KEY"] = admin_key
    else:
        environ.pop("FACESEARCH_ADMIN_KEY", None)
    if not (env and "FACESEARCH_DATABASE_URL" in env):
        environ.pop("FACESEARCH_DATABASE_URL", None)
    with log.open("ab") as out:
        proc = subprocess.Popen([exe, "serve", "--port", str(port), *args], env=environ,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Server(proc, port, log, home)
    if wait:
        server.wait_ready()
    return server


@pytest.fixture(scope="session")
def server(home: Path, db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The session's server: 2 model workers, on the session's embedded PostgreSQL."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    srv = start_server(home, log, "--workers", "2")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def pkl_server(pkl_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server in PKL mode (FACESEARCH_STORE=pkl) on its own data directory, 2 model workers. Its
    database URL points at nothing: PKL mode must never contact a database."""
    log = tmp_path_factory.mktemp("pkl-server") / "server.log"
    srv = start_server(pkl_home, log, "--workers", "2", env={
        "FACESEARCH_STORE": "pkl", "FACESEARCH_DATABASE_URL": UNREACHABLE_DB})
    yield srv
    srv.stop()


def jpeg(photo: Path) -> tuple[str, bytes, str]:
    """A multipart file tuple for httpx."""
    return (photo.name, photo.read_bytes(), "image/jpeg")


def pick_people(lfw: Path, min_photos: int, count: int, skip: int = 0) -> list[str]:
    """A deterministic spread of LFW people with at least ``min_photos`` photos; ``skip`` shifts
    the spread so that test modules use different people."""
    found = sorted(d.name for d in lfw.iterdir() if len(list(d.glob("*.jpg"))) >= min_photos)
    step = max(1, len(found) // count)
    return found[skip % step::step][:count]


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    """The one error shape: ``{"error": {"code": ..., "message": ...}}``, never a traceback."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in response.text
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]
