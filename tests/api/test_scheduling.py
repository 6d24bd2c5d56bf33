"""The model workers' fair share over HTTP: a stuck worker is cut off after the task timeout, a
full queue answers 503 at once, one domain's big enrollment does not delay another domain's
recognize, oversized requests are refused before any work, and a client that leaves has its
queued work dropped. One server of its own (small timeout and queue limit) on the session's
PostgreSQL."""

from __future__ import annotations

import io
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from ..conftest import photos_of
from .conftest import ADMIN_KEY, assert_error, pick_people, start_server

TIMEOUT = 6  # FACESEARCH_TASK_TIMEOUT of this server, seconds (a loaded CI machine stays under)
QUEUE_LIMIT = 6  # FACESEARCH_QUEUE_LIMIT: photos a domain may have waiting
BIG, OTHER = "sched-big", "sched-other"


def upscaled(photo: Path, side: int, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.open(photo).convert("RGB").resize((side, side)).save(buf, fmt, quality=85)
    return buf.getvalue()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, db_url: str):
    home = tmp_path_factory.mktemp("sched-home")
    server = start_server(home, home / "server.log", "--workers", "2", env={
        "FACESEARCH_DATABASE_URL": db_url, "FACESEARCH_TASK_TIMEOUT": str(TIMEOUT),
        "FACESEARCH_QUEUE_LIMIT": str(QUEUE_LIMIT)})
    for name in (BIG, OTHER):
        assert server.admin.post("/v1/domains", json={"name": name}).status_code == 201
    yield server
    server.stop()


@pytest.fixture(scope="module")
def people(lfw: Path) -> list[str]:
    return pick_people(lfw, 2, 40, skip=11)


@pytest.fixture(scope="module")
def large(lfw: Path, people: list[str]) -> list[bytes]:
    """32 different LFW faces enlarged to 3000 x 3000 (9 MP, 288 MP in all): a few hundred ms of
    work each, under the per-request caps."""
    return [upscaled(photos_of(lfw, name)[0], 3000) for name in people[:32]]


def pool_stats(srv) -> dict:
    return httpx.get(srv.base + "/readyz", timeout=10).json()["workers"]


def wait_for(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def files(photos: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("photo", (f"p{i}.jpg", data, "image/jpeg")) for i, data in enumerate(photos)]


def test_another_domains_recognize_is_answered_within_1s_during_a_32_photo_enroll(
        srv, lfw: Path, people: list[str], large: list[bytes]) -> None:
    probe_person = people[-1]
    first, second = photos_of(lfw, probe_person)[:2]
    r = srv.admin.post(f"/v1/domains/{OTHER}/enroll", data={"name": probe_person},
                       files={"photo": (first.name, first.read_bytes(), "image/jpeg")})
    assert r.status_code == 201, r.text

    box: dict = {}

    def enroll() -> None:
        started = time.monotonic()
        box["response"] = srv.admin.post(f"/v1/domains/{BIG}/enroll", data={"name": "Big Batch"},
                                         params={"face": "largest"}, files=files(large))
        box["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=enroll)
    thread.start()
    try:
        wait_for(lambda: pool_stats(srv)["queued"] >= 20)  # the enroll fills the queue
        started = time.monotonic()
        r = srv.admin.post(f"/v1/domains/{OTHER}/recognize",
                           files={"photo": (second.name, second.read_bytes(), "image/jpeg")})
        elapsed = time.monotonic() - started
        still_running = thread.is_alive()
    finally:
        thread.join(300)
    assert r.status_code == 200, r.text
    assert r.json()["faces"][0]["matches"][0]["name"] == probe_person
    assert still_running, "the enroll was over before the recognize: nothing was measured"
    enrolled = box["response"]
    assert enrolled.status_code == 201, enrolled.text
    assert len(enrolled.json()["results"]) == 32
    # Fair: the recognize waits for at most the photos already running (one per worker), not
    # for the 20+ queued before it (10+ photo-times on two workers). A photo-time is measured in
    # this run, so a loaded machine moves both sides; 1 s is the target on a quiet one.
    photo_seconds = box["seconds"] * 2 / 32
    assert elapsed < max(1.0, 2.5 * photo_seconds), (
        f"recognize took {elapsed:.2f} s behind the other domain's enroll "
        f"({photo_seconds:.2f} s a photo)")


def test_oversized_requests_are_refused_before_any_work(srv, lfw: Path, people: list[str]) -> None:
    before = pool_stats(srv)["started"]
    small = photos_of(lfw, people[0])[0].read_bytes()
    r = srv.admin.post(f"/v1/domains/{BIG}/enroll", data={"name": "Too Many"},
                       files=files([small] * 33))
    assert "FACESEARCH_MAX_PHOTOS" in assert_error(r, 413, "too_many_photos")["message"]
    # The attack: 32 copies of a 6,200 x 6,200 PNG (38 MP; mostly flat, so ~100 KB).
    canvas = Image.new("RGB", (6200, 6200), (128, 128, 128))
    canvas.paste(Image.open(photos_of(lfw, people[0])[0]), (3000, 3000))
    buf = io.BytesIO()
    canvas.save(buf, "PNG")
    started = time.monotonic()
    r = srv.admin.post(f"/v1/domains/{BIG}/enroll", data={"name": "Too Big"},
                       files=[("photo", (f"b{i}.png", buf.getvalue(), "image/png"))
                              for i in range(32)])
    message = assert_error(r, 413, "too_many_pixels")["message"]
    assert "1230 megapixels" in message and "FACESEARCH_MAX_REQUEST_MEGAPIXELS" in message
    assert time.monotonic() - started < 10  # headers read, nothing decoded
    assert pool_stats(srv)["started"] == before  # no photo reached a worker
    assert srv.admin.get(f"/v1/domains/{BIG}/people", params={"q": "Too "}).json()["total"] == 0


def test_a_full_queue_answers_503_overloaded_at_once(srv, lfw: Path, people: list[str]) -> None:
    photo = upscaled(photos_of(lfw, people[1])[0], 3000)  # ~0.2 s or more a task
    with httpx.Client(base_url=srv.base, timeout=120, headers=srv.admin.headers,
                      limits=httpx.Limits(max_connections=24)) as client:
        def recognize(_: int) -> tuple[httpx.Response, float]:
            started = time.monotonic()
            r = client.post(f"/v1/domains/{BIG}/recognize", files=files([photo]))
            return r, time.monotonic() - started

        with ThreadPoolExecutor(24) as ex:
            answers = list(ex.map(recognize, range(24)))
    statuses = sorted(r.status_code for r, _ in answers)
    assert set(statuses) == {200, 503}, statuses  # some admitted, some refused, nothing else
    refused = [(r, t) for r, t in answers if r.status_code == 503]
    served = [t for r, t in answers if r.status_code == 200]
    assert len(served) >= 2 + QUEUE_LIMIT, statuses  # running + waiting were admitted
    for r, took in refused:
        assert "full" in assert_error(r, 503, "overloaded")["message"]
        assert int(r.headers["Retry-After"]) >= 1
        assert took < 5, f"a 503 took {took:.2f} s: it should not wait for the queue"
    assert max(t for _, t in refused) < max(served)
    assert pool_stats(srv)["overloaded"] >= len(refused)
    assert srv.admin.post(f"/v1/domains/{BIG}/recognize", files=files([photo])).status_code == 200


def test_a_stopped_worker_is_cut_off_after_the_timeout(srv, lfw: Path, people: list[str]) -> None:
    photo = photos_of(lfw, people[2])[0].read_bytes()
    slow = upscaled(photos_of(lfw, people[3])[0], 3000)  # a few hundred ms of work
    wait_for(lambda: pool_stats(srv)["busy"] == 0)
    victim, healthy = srv.worker_pids()
    os.kill(victim, signal.SIGSTOP)  # stuck as in native code: alive, never answers

    try:
        with srv.client(ADMIN_KEY, limits=httpx.Limits(max_connections=10)) as client, \
                ThreadPoolExecutor(10) as ex:
            def recognize(data: bytes) -> tuple[httpx.Response, float]:
                started = time.monotonic()
                r = client.post(f"/v1/domains/{OTHER}/recognize", files=files([data]))
                return r, time.monotonic() - started

            # The slow photo takes one worker; the next photo, sent while it runs, takes the
            # other. So exactly one of the two lands on the stopped worker, whichever took the
            # slow one (an idle healthy worker would otherwise win every task, never testing
            # the timeout). That one hangs there; the healthy worker answers the rest meanwhile.
            futures = [ex.submit(recognize, slow)]
            wait_for(lambda: pool_stats(srv)["busy"] == 1)
            for _ in range(9):
                futures.append(ex.submit(recognize, photo))
                time.sleep(0.15)
            answers = [f.result() for f in futures]
    finally:
        if Path(f"/proc/{victim}").exists():
            os.kill(victim, signal.SIGCONT)
    statuses = sorted(r.status_code for r, _ in answers)
    assert statuses == [200] * 9 + [504], [r.text for r, _ in answers]
    timed_out, took = next((r, t) for r, t in answers if r.status_code == 504)
    assert f"longer than {TIMEOUT} s" in assert_error(timed_out, 504, "model_timeout")["message"]
    assert TIMEOUT <= took < TIMEOUT + 15
    assert all(t < TIMEOUT for r, t in answers if r.status_code == 200)  # the others went on

    srv.wait_ready()  # replaced
    pids = srv.worker_pids()
    assert victim not in pids and healthy in pids and len(pids) == 2
    assert srv.admin.post(f"/v1/domains/{OTHER}/recognize", files=files([photo])).status_code == 200
    assert pool_stats(srv)["timeouts"] == 1
    assert 'facesearch_model_tasks{outcome="timeouts"} 1.0' in srv.admin.get("/metrics").text


def test_a_client_that_leaves_has_its_queued_photos_dropped(srv, large: list[bytes]) -> None:
    wait_for(lambda: pool_stats(srv)["queued"] == 0 and pool_stats(srv)["busy"] == 0)
    before = pool_stats(srv)
    request = httpx.Request("POST", srv.base + f"/v1/domains/{BIG}/enroll",
                            headers=srv.admin.headers, data={"name": "Gone Away"},
                            files=files(large))
    body = request.read()
    head = [f"POST {request.url.raw_path.decode()} HTTP/1.1", f"Host: {request.url.netloc.decode()}",
            *(f"{k}: {v}" for k, v in request.headers.items() if k.lower() != "host")]
    with socket.create_connection((request.url.host, request.url.port)) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        wait_for(lambda: pool_stats(srv)["started"] > before["started"])  # the work has begun
        # The client gives up: closes the connection without reading an answer.
    wait_for(lambda: pool_stats(srv)["queued"] == 0 and pool_stats(srv)["busy"] == 0)
    after = pool_stats(srv)
    ran = after["started"] - before["started"]
    dropped = after["dropped"] - before["dropped"]
    assert ran + dropped == 32, (ran, dropped)
    assert dropped >= 16, f"only {dropped} of 32 photos dropped after the client left"
    # Nothing was stored for the request that was never answered.
    assert srv.admin.get(f"/v1/domains/{BIG}/people", params={"q": "Gone"}).json()["total"] == 0
