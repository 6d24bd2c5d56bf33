"""The supervised model pool, with the real model in real processes: a worker that dies costs only
the task it was running, a model that cannot load fails tasks promptly, closing fails the queue."""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesearch.config import Settings
from facesearch.errors import ModelError
from facesearch.inference import ModelPool, ModelSpec
from facesearch.models.base import Analysis


def wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    """Poll a condition about the pool's own state (not a guess at how long something takes)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def assert_powell(a: Analysis) -> None:
    """The LFW photo's centred face, with a unit embedding."""
    assert (a.width, a.height) == (250, 250) and a.faces_found == 1
    box = a.faces[0].box
    assert 60 < box.x + box.w / 2 < 190 and 60 < box.y + box.h / 2 < 190
    assert abs(np.linalg.norm(a.faces[0].embedding) - 1) < 1e-5


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo(lfw: Path) -> bytes:
    return (lfw / "Colin_Powell" / "Colin_Powell_0001.jpg").read_bytes()


def test_killed_worker_costs_only_its_task(settings: Settings, photo: bytes) -> None:
    # dlib's CNN detector takes ~2 s of real work on this photo: a wide window for the kill.
    spec = ModelSpec(detector="cnn", cache_dir=str(settings.cache_dir))
    with ModelPool(spec, workers=2) as pool:
        pool.start()
        futures = [pool.submit(photo, max_pixels=10**8, max_faces=5) for _ in range(2)]
        # A worker takes a task only when idle: with both busy, each is running one of the two.
        wait_until(lambda: pool.stats()["busy"] == 2)
        victim = pool.pids()[0]
        os.kill(victim, signal.SIGKILL)

        errors = [f.exception(timeout=120) for f in futures]
        failed = [e for e in errors if e is not None]
        assert len(failed) == 1, errors
        assert isinstance(failed[0], ModelError) and "stopped" in str(failed[0])
        assert_powell(futures[errors.index(None)].result())

        # The slot replaced its worker and the next task succeeds (a smaller photo: quicker).
        small = pool.analyze(jpeg(Image.open(io.BytesIO(photo)).resize((160, 160))))
        assert small.faces_found == 1 and small.faces[0].embedding.shape == (128,)
        pool.start()  # waits for the replacement to load its model
        pids = pool.pids()
        assert len(pids) == 2 and victim not in pids
        assert pool.stats()["restarts"] == 1 and pool.ready()
        assert sorted(r["pid"] for r in pool.process_reports()) == sorted(pids)


def test_worker_dying_while_idle_is_replaced_and_close_fails_the_queue(
        settings: Settings, photo: bytes) -> None:
    pool = ModelPool(ModelSpec(cache_dir=str(settings.cache_dir)), workers=1)
    pool.start()
    (victim,) = pool.pids()
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in pool.pids())
    assert_powell(pool.analyze(photo))
    assert pool.stats()["restarts"] == 1 and len(pool.pids()) == 1

    futures = [pool.submit(photo, max_pixels=10**8, max_faces=5) for _ in range(30)]
    started = time.monotonic()
    pool.close()
    assert time.monotonic() - started < 10
    for future in futures:  # the task in flight finished; the queued ones were failed
        error = future.exception(timeout=0)
        assert error is None or (isinstance(error, ModelError) and "shutting down" in str(error))
    assert sum(f.exception() is not None for f in futures) >= 20
    assert pool.pids() == [] and pool.stats()["alive"] == 0 and not pool.ready()
    pool.close()  # idempotent
    with pytest.raises(ModelError, match="shutting down"):
        pool.analyze(photo)


def test_model_that_cannot_load_fails_promptly(photo: bytes) -> None:
    started = time.monotonic()
    with ModelPool(ModelSpec(model="no-such-model"), workers=2) as pool:
        future = pool.submit(photo, max_pixels=10**8, max_faces=5)  # starts the pool lazily
        with pytest.raises(ModelError, match="could not be loaded: unknown model 'no-such-model'"):
            future.result(timeout=60)
        with pytest.raises(ModelError, match="no-such-model"):
            pool.start()
        with pytest.raises(ModelError, match="no-such-model"):
            pool.analyze(photo)  # failed at once, or after the next load attempt (backoff: 1 s)
        assert not pool.ready() and pool.stats()["load_failures"] >= 2
    assert time.monotonic() - started < 30  # and close() did not wait out the backoff
