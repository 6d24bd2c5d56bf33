"""Process layout and failure isolation of the model workers behind the HTTP API."""

from __future__ import annotations

import io
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from ..conftest import photos_of
from .conftest import assert_error, pick_people, start_server

MODEL_LIBS = ("dlib", "onnxruntime", "tensorflow", "torch")


def test_api_process_never_loads_a_model_runtime(server) -> None:
    maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert "libpq" in maps  # the API process talks to the database...
    loaded = [lib for lib in MODEL_LIBS if lib in maps]
    assert not loaded, f"the API process mapped {loaded}"  # ...and never loads a model
    workers = server.worker_pids()
    assert len(workers) == 2
    for pid in workers:
        worker_maps = Path(f"/proc/{pid}/maps").read_text()
        assert "onnxruntime" in worker_maps or "dlib" in worker_maps
        assert "libpq" not in worker_maps, f"model worker {pid} mapped libpq"


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory, lfw: Path) -> dict:
    """A server of its own (own data directory, so its own embedded PostgreSQL) on dlib-resnet-v1
    with dlib's CNN detector, which takes seconds on a 1000-pixel photo: time to act while
    requests run."""
    home = tmp_path_factory.mktemp("slow-home")
    srv = start_server(home, home / "server.log", "--workers", "2",
                       env={"FACESEARCH_MODEL": "dlib-resnet-v1", "FACESEARCH_DETECTOR": "cnn"})
    buf = io.BytesIO()
    photo = photos_of(lfw, pick_people(lfw, 1, 1, skip=5)[0])[0]
    Image.open(photo).resize((1000, 1000)).save(buf, "JPEG", quality=90)
    yield {"server": srv, "photo": buf.getvalue()}
    srv.stop()


def busy_workers(srv) -> int:
    return httpx.get(srv.base + "/readyz", timeout=10).json()["workers"]["busy"]


def wait_for(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_killed_worker_costs_only_its_request(slow: dict) -> None:
    srv = slow["server"]
    detect = srv.admin.post
    before = srv.worker_pids()
    assert len(before) == 2
    with ThreadPoolExecutor(2) as ex:
        futures = [ex.submit(detect, "/v1/detect", files={"photo": ("big.jpg", slow["photo"])})
                   for _ in range(2)]
        wait_for(lambda: busy_workers(srv) == 2)
        os.kill(before[0], signal.SIGKILL)
        responses = [f.result() for f in futures]
    assert sorted(r.status_code for r in responses) == [200, 503], [r.text for r in responses]
    failed = next(r for r in responses if r.status_code == 503)
    assert "try again" in assert_error(failed, 503, "model_unavailable")["message"]
    assert next(r for r in responses if r.status_code == 200).json()["faces"]

    srv.wait_ready()  # the pool has replaced the dead worker
    after = srv.worker_pids()
    assert len(after) == 2 and before[0] not in after and before[1] in after
    again = detect("/v1/detect", files={"photo": ("big.jpg", slow["photo"])})
    assert again.status_code == 200 and again.json()["faces"]
    assert "facesearch_model_worker_restarts 1.0" in srv.admin.get("/metrics").text


def test_sigterm_drains_requests_then_stops_everything(slow: dict) -> None:
    srv = slow["server"]
    postmaster = srv.home / "pgdata" / "postmaster.pid"
    assert postmaster.exists()
    workers = srv.worker_pids()
    with ThreadPoolExecutor(1) as ex:
        future = ex.submit(srv.admin.post, "/v1/detect", files={"photo": ("big.jpg", slow["photo"])})
        wait_for(lambda: busy_workers(srv) >= 1)
        srv.proc.send_signal(signal.SIGTERM)
        response = future.result()
    assert response.status_code == 200, response.text  # the request in flight was finished
    assert srv.proc.wait(90) == 0
    assert not postmaster.exists()  # the embedded PostgreSQL was stopped
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), timeout=10)
