"""Crashes, for real, on the embedded PostgreSQL of a data directory of this module's own:

- SIGKILL of the CLI in the middle of a batch enrollment, and of the server in the middle of an
  HTTP enrollment: afterwards every photo is fully enrolled (face, embedding, thumbnail, found
  through the index) or not at all; re-running completes it and enrolls nothing twice;
- SIGKILL of the whole process tree, embedded PostgreSQL included: the next start recovers and
  every acknowledged face is there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from facesearch.models import DEFAULT_MODEL

from ..conftest import photos_of
from .conftest import Server, jpeg, pick_people, start_server

CLI_DOMAIN, HTTP_DOMAIN = "crash-cli", "crash-http"
BATCH = 256  # faces the CLI stores per transaction (cli/photos.py)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crash-home")


def socket_url(home: Path) -> str:
    """The embedded server's URL, read from its postmaster.pid, without attaching this process
    to it (an attached process keeps it running, and the point is to kill it)."""
    lines = (home / "pgdata" / "postmaster.pid").read_text().splitlines()
    return f"postgresql://postgres@/facesearch?host={lines[4]}&port={lines[3]}"


def sql(home: Path, query: str, *params: object) -> list[tuple]:
    import psycopg

    with psycopg.connect(socket_url(home), connect_timeout=5) as conn:
        return conn.execute(query, params).fetchall()


def assert_whole(home: Path, domain: str) -> int:
    """Every face of ``domain`` complete (embedding, thumbnail, box) and found through the
    domain's index (top-1 for its own embedding); none twice. Returns how many there are."""
    from facesearch.store import BlockingGallery

    faces = sql(home, "SELECT f.id, f.person_id, f.photo_sha256, f.thumbnail IS NOT NULL,"
                      " f.box_w > 0 FROM faces f JOIN domains d ON d.id = f.domain_id"
                      " WHERE d.name = %s", domain)
    assert all(thumb and box for *_, thumb, box in faces), "a face without its thumbnail or box"
    assert len({(p, bytes(s)) for _, p, s, *_ in faces}) == len(faces), "a photo enrolled twice"
    invalid = sql(home, "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                        " WHERE NOT i.indisvalid OR NOT i.indisready")
    assert invalid == [], invalid
    if faces:
        with BlockingGallery(socket_url(home)) as g:
            dom = g.get_domain(domain)
            rows = g.run(g.conn.execute(
                "SELECT id, embedding FROM faces WHERE domain_id = %s ORDER BY id", (dom.id,)))
            stored = {r[0]: np.asarray(r[1].to_numpy(), np.float32) for r in g.run(rows.fetchall())}
            found = g.search(dom, DEFAULT_MODEL, list(stored.values()), k=1, threshold=0.01)
            assert [m[0].face_id for m in found] == list(stored), "a face the index misses"
    return len(faces)


def facesearch(home: Path) -> list[str]:
    exe = shutil.which("facesearch", path=str(Path(sys.executable).parent)) or "facesearch"
    return [exe]


def env(home: Path) -> dict[str, str]:
    environ = {**os.environ, "FACESEARCH_HOME": str(home), "FACESEARCH_WORKERS": "2"}
    environ.pop("FACESEARCH_DATABASE_URL", None)
    return environ


@pytest.fixture(scope="module")
def folder(lfw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One photo each of BATCH + 64 people: one full transaction of the CLI, then more."""
    root = tmp_path_factory.mktemp("crash-photos")
    for name in pick_people(lfw, 1, BATCH + 64, skip=2):
        (root / name).mkdir()
        photo = photos_of(lfw, name)[0]
        (root / name / photo.name).symlink_to(photo)
    return root


def test_cli_killed_mid_batch(home: Path, folder: Path, server: list[Server]) -> None:
    """(The module's server runs meanwhile: it keeps the embedded PostgreSQL up to be checked.)"""
    photos = sum(1 for _ in folder.glob("*/*.jpg"))
    cmd = [*facesearch(home), "enroll", "-d", CLI_DOMAIN, str(folder), "--json"]
    proc = subprocess.Popen(cmd, env=env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        stored = 0
        while not stored and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                stored = sql(home, "SELECT count(*) FROM faces")[0][0]
            except Exception:  # the database is not up yet
                continue
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its model workers, not PostgreSQL
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the enrollment ended before it could be killed"
    after_kill = assert_whole(home, CLI_DOMAIN)
    assert 0 < after_kill < photos

    again = subprocess.run(cmd, env=env(home), capture_output=True, text=True, timeout=600,
                           stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["already_enrolled"] == after_kill
    complete = assert_whole(home, CLI_DOMAIN)
    assert complete == after_kill + report["enrolled"] == photos - report["no_face"] - report["unreadable"]


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[list[Server]]:
    """The module's server, in a list: tests kill it and put the restarted one in its place."""
    holder = [start_server(home, home / "server.log", "--workers", "2")]
    yield holder
    holder[0].stop()


def kill_server(srv: Server) -> None:
    """SIGKILL the API process and its model workers at once (PostgreSQL lives on)."""
    victims = [srv.proc.pid, *srv.worker_pids()]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):  # a backend may go first, with its postmaster
            os.kill(pid, signal.SIGKILL)
    srv.proc.wait()
    srv.admin.close()


def enroll(srv: Server, name: str, photos: list[Path], timeout: float = 300) -> httpx.Response:
    return srv.admin.post(f"/v1/domains/{HTTP_DOMAIN}/enroll", data={"name": name},
                          files=[("photo", jpeg(p)) for p in photos], params={"face": "largest"},
                          timeout=timeout)


def test_server_killed_mid_enrollment(home: Path, server: list[Server], lfw: Path) -> None:
    srv = server[0]
    assert srv.admin.post("/v1/domains", json={"name": HTTP_DOMAIN}).status_code == 201
    name = pick_people(lfw, 16, 1, skip=4)[0]
    photos = photos_of(lfw, name)[:16]
    outcome: list[object] = []

    def send() -> None:
        try:
            outcome.append(enroll(srv, name, photos))
        except httpx.TransportError as exc:
            outcome.append(exc)

    # The workers stopped first: the request is surely mid-way (its photos taken, none embedded)
    # when the server dies, however fast the machine.
    for pid in srv.worker_pids():
        os.kill(pid, signal.SIGSTOP)
    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(1.0)  # the request is in, its photos queued or in the stopped workers
    kill_server(srv)
    sender.join()
    assert isinstance(outcome[0], httpx.TransportError), outcome
    stored = sql(home, "SELECT count(f.id) FROM people p LEFT JOIN faces f ON f.domain_id = p.domain_id"
                       " AND f.person_id = p.id JOIN domains d ON d.id = p.domain_id"
                       " WHERE p.name = %s AND d.name = %s GROUP BY p.id", name, HTTP_DOMAIN)
    assert stored in ([], [(len(photos),)]), stored  # the whole request, or nothing of it

    srv = server[0] = start_server(home, home / "server.log", "--workers", "2")
    first = enroll(srv, name, photos)
    assert first.status_code == 201, first.text
    statuses = [r["status"] for r in first.json()["results"]]
    second = enroll(srv, name, photos)
    assert second.status_code == 201, second.text
    assert {r["status"] for r in second.json()["results"]} <= {"already_enrolled", "refused"}
    assert assert_whole(home, HTTP_DOMAIN) == sum(s != "refused" for s in statuses)


def test_whole_tree_killed(home: Path, server: list[Server], lfw: Path) -> None:
    """API process, workers and the embedded PostgreSQL (postmaster and backends), all SIGKILLed
    at once, as by the OOM killer or a container's end: the next start recovers."""
    srv = server[0]
    before = {d: assert_whole(home, d) for d in (CLI_DOMAIN, HTTP_DOMAIN)}
    postmaster = int((home / "pgdata" / "postmaster.pid").read_text().split()[0])
    tree = [postmaster, *(c.pid for c in psutil.Process(postmaster).children(recursive=True))]
    victims = [srv.proc.pid, *srv.worker_pids(), *tree]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):  # a backend may go first, with its postmaster
            os.kill(pid, signal.SIGKILL)
    srv.proc.wait()
    srv.admin.close()
    assert (home / "pgdata" / "postmaster.pid").exists()  # left behind by the killed server

    srv = server[0] = start_server(home, home / "server.log", "--workers", "2")
    assert {d: assert_whole(home, d) for d in before} == before
    name = pick_people(lfw, 16, 1, skip=4)[0]
    r = srv.admin.post(f"/v1/domains/{HTTP_DOMAIN}/recognize",
                       files={"photo": jpeg(photos_of(lfw, name)[16])})
    assert r.status_code == 200 and r.json()["faces"][0]["matches"][0]["name"] == name, r.text
    # The killed processes no longer count as attached: the last one to exit stops the server.
    srv.stop()
    assert not (home / "pgdata" / "postmaster.pid").exists()
