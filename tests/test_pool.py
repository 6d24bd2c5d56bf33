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
from facesearch.errors import ImageTooLarge, ModelError, Overloaded, PhotoRefused, TaskTimeout
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


# -- scheduling and limits: timeouts, poison photos, memory cap, fair queues, bounds -----------

def upscaled(photo: bytes, side: int, fmt: str = "JPEG") -> bytes:
    """The LFW photo enlarged to ``side`` x ``side``: more work per task for the same face."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(photo)).convert("RGB").resize((side, side)).save(
        buf, fmt, **({"compress_level": 1} if fmt == "PNG" else {"quality": 90}))
    return buf.getvalue()


def gone(pid: int) -> bool:
    """The process has exited and been reaped (a killed worker, not just a stopped one)."""
    return not Path(f"/proc/{pid}").exists()


def test_stopped_worker_times_out_and_is_replaced(settings: Settings, photo: bytes) -> None:
    with ModelPool(ModelSpec(cache_dir=str(settings.cache_dir)), workers=1,
                   task_timeout=2) as pool:
        pool.start()
        (victim,) = pool.pids()
        os.kill(victim, signal.SIGSTOP)  # stuck, as in native code: alive, never answers
        started = time.monotonic()
        error = pool.submit(photo, max_pixels=10**8, max_faces=5).exception(timeout=60)
        assert isinstance(error, TaskTimeout) and error.status == 504, error
        assert "longer than 2 s" in str(error) and time.monotonic() - started >= 2
        wait_until(lambda: gone(victim), timeout=10)  # killed (SIGKILL works on a stopped one)
        assert_powell(pool.analyze(photo))  # the replacement answers
        stats = pool.stats()
        assert stats["timeouts"] == 1 and stats["restarts"] == 1 and victim not in pool.pids()


def test_a_photo_bigger_than_the_pipe_times_out_on_a_stopped_worker(settings: Settings,
                                                                     photo: bytes) -> None:
    """A stopped worker stops reading its pipe: writing a photo bigger than the pipe's buffer
    (64 KiB) must not hang the dispatcher past the timeout (it did, for as long as the client
    waited)."""
    big = upscaled(photo, 1500, "PNG")
    assert len(big) > 256 * 1024
    with ModelPool(ModelSpec(cache_dir=str(settings.cache_dir)), workers=1,
                   task_timeout=2) as pool:
        pool.start()
        (victim,) = pool.pids()
        os.kill(victim, signal.SIGSTOP)
        started = time.monotonic()
        error = pool.submit(big, max_pixels=10**8, max_faces=5).exception(timeout=30)
        assert isinstance(error, TaskTimeout), error
        assert 2 <= time.monotonic() - started < 20
        wait_until(lambda: gone(victim), timeout=10)
        assert pool.analyze(big).faces_found >= 1  # the replacement answers the same photo


@pytest.fixture(scope="module")
def huge(photo: bytes) -> bytes:
    """A 64-megapixel PNG: seconds of decoding and ~1.7 GB of address space in a worker."""
    return upscaled(photo, 8000, "PNG")


def test_photo_that_keeps_stopping_workers_is_refused(settings: Settings, photo: bytes,
                                                     huge: bytes) -> None:
    # A real fault, every time: the huge photo takes far longer than the timeout, so each
    # attempt gets its worker killed.
    poison = huge
    with ModelPool(ModelSpec(cache_dir=str(settings.cache_dir)), workers=1,
                   task_timeout=1.0) as pool:
        pool.start()

        def attempt() -> BaseException | None:
            return pool.submit(poison, max_pixels=10**8, max_faces=5).exception(timeout=60)

        first = attempt()
        assert isinstance(first, TaskTimeout), first
        second = attempt()  # the second strike: refused from now on, and told so
        assert isinstance(second, PhotoRefused) and "2 times" in str(second), second
        started = pool.stats()["started"]
        third = pool.submit(poison, max_pixels=10**8, max_faces=5)
        assert isinstance(third.exception(timeout=0), PhotoRefused)  # at once, never run
        assert_powell(pool.analyze(photo))  # the pool is fine
        stats = pool.stats()
        assert stats["started"] == started + 1 and stats["refused"] == 1
        assert stats["timeouts"] == 2 and stats["restarts"] == 2 and pool.ready()


def test_worker_memory_cap_refuses_the_photo_and_keeps_the_worker(
        settings: Settings, photo: bytes, huge: bytes) -> None:
    # RLIMIT_AS in the worker: the loaded model maps ~0.55 GB, the huge photo's pixels alone take
    # 0.2 GB more (~1.7 GB at its peak), so it fails with MemoryError inside the worker, which
    # survives; a small photo still fits.
    spec = ModelSpec(cache_dir=str(settings.cache_dir), memory_mb=720, threads=1)
    with ModelPool(spec, workers=1) as pool:
        pool.start()
        (pid,) = pool.pids()
        error = pool.submit(huge, max_pixels=10**8, max_faces=5).exception(timeout=120)
        assert isinstance(error, ImageTooLarge) and error.status == 413, error
        assert "720 MB" in str(error) and "FACESEARCH_WORKER_MEMORY_MB" in str(error)
        assert_powell(pool.analyze(photo))
        assert pool.pids() == [pid] and pool.stats()["restarts"] == 0


def test_domains_share_the_workers_fairly_and_queues_are_bounded(
        settings: Settings, photo: bytes) -> None:
    medium = upscaled(photo, 2000)  # ~0.1-0.3 s a task: the queue outlives the test's submits
    with ModelPool(ModelSpec(cache_dir=str(settings.cache_dir)), workers=1,
                   queue_limit=4) as pool:
        pool.start()
        done: list[str] = []

        def track(futures, label: str) -> None:
            for i, future in enumerate(futures):
                future.add_done_callback(lambda _, i=i: done.append(f"{label}{i}"))

        backlog = pool.submit_many([medium] * 8, tenant="a", max_pixels=10**8, max_faces=1)
        track(backlog, "a")  # admitted whole over the limit: "a" had nothing waiting
        wait_until(lambda: pool.stats()["busy"] == 1)
        # "a" has 7 waiting, at its limit of 4: refused at once, with when to try again...
        with pytest.raises(Overloaded) as refused:
            pool.submit_many([medium], tenant="a", max_pixels=10**8, max_faces=1)
        assert refused.value.retry_after >= 1 and refused.value.status == 503
        # ...while another domain is admitted and served next, ahead of a's backlog.
        [other] = pool.submit_many([photo], tenant="b", max_pixels=10**8, max_faces=1)
        track([other], "b")
        assert_powell(other.result(timeout=60))
        assert done.index("b0") <= 1, done  # after at most the one task of "a" running

        # A client that leaves: its queued tasks are cancelled and never run.
        cancelled = sum(f.cancel() for f in backlog)
        assert cancelled >= 5
        wait_until(lambda: pool.stats()["queued"] == 0 and pool.stats()["busy"] == 0)
        stats = pool.stats()
        assert stats["dropped"] == cancelled and stats["overloaded"] == 1
        assert stats["started"] == 1 + (8 - cancelled)  # b's, and a's that were not cancelled


def test_fair_queue_serves_tenants_in_turn() -> None:
    from facesearch.inference.fair import FairQueue

    queue: FairQueue[str] = FairQueue()
    queue.extend("a", [f"a{i}" for i in range(4)])
    queue.extend("b", ["b0", "b1"])  # arrives with nothing waiting: served next
    assert [queue.popleft() for _ in range(3)] == ["b0", "a0", "b1"]
    queue.extend("c", ["c0"])
    assert queue.waiting("a") == 3 and queue.tenants() == 2 and len(queue) == 4
    assert [queue.popleft() for _ in range(4)] == ["c0", "a1", "a2", "a3"]
    with pytest.raises(IndexError):
        queue.popleft()
