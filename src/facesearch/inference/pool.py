"""A supervised pool of spawned model worker processes.

``spawn`` (never ``fork``): a forked child would inherit the parent's database sockets and native
library state. Workers start fresh, import only :mod:`facesearch.inference.worker` and load the
model once (:func:`worker.serve`); the parent sends them photo bytes and gets :class:`Analysis`
objects back over a pipe.

Each worker has a *slot*: its process, the parent's end of its pipe, and a dispatcher thread that
hands it one task at a time and waits for either the answer or the process's death. So a worker
that dies (OOM killer, SIGKILL, a native crash) fails only the task it was running, with a
:class:`ModelError`; its slot starts a replacement and carries on. (A ``ProcessPoolExecutor``
instead breaks as a whole and fails every task in flight.) A worker that cannot load the model
fails the waiting tasks with the reason instead of leaving them to hang, and is retried with a
growing backoff.

Scheduling (see :mod:`.fair`): tasks wait in one queue per *tenant* (a domain), served round robin,
so one domain's backlog delays another's task by at most the tasks already running. With a
``queue_limit``, a tenant's request is refused at once (:class:`Overloaded`) rather than queued
behind more than that many of its own tasks. With a ``task_timeout``, a task running longer (a
worker stuck in native code) has its worker killed and replaced and fails with
:class:`TaskTimeout`. A photo that stopped a worker (killed it, or timed out) ``crash_limit``
times is refused from then on (:class:`PhotoRefused`), so a client retrying a poison photo
cannot keep the workers restarting. A queued task whose future is cancelled (its client left) is
dropped before it starts; one already running is left to finish (at most one photo per worker:
killing the worker would cost everyone a model reload).
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from typing import Any, Literal, TypeVar

from ..errors import FacesearchError, ModelError, Overloaded, PhotoRefused, TaskTimeout
from ..models.base import MIN_FACE, Analysis
from . import worker
from .fair import FairQueue, Strikes

T = TypeVar("T")
log = logging.getLogger(__name__)

DIED = "the face model worker stopped while processing this photo; try again"
CLOSING = "the model pool is shutting down"
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0  # seconds between attempts to load a model that failed
IDLE_CHECK = 1.0  # seconds between liveness checks of an idle worker
CRASH_LIMIT = 2  # a photo that stopped a worker this many times is refused from then on
_TIMED_OUT = ("timed out",)  # _receive's answer when the worker did not reply in time
# A task this small (pickled) is written to the pipe directly: it fits the pipe's buffer (64 KiB),
# so the write returns even if the worker has stopped reading. A bigger one (a photo) is written
# by a helper thread, so a stuck worker cannot block the dispatcher past the task timeout.
_SEND_DIRECT = 32 * 1024

_spawn = multiprocessing.get_context("spawn")
_launch_lock = threading.Lock()  # Process.start() from several threads at once is not documented safe

State = Literal["starting", "ready", "busy", "failed", "stopped"]


@dataclass(frozen=True)
class ModelSpec:
    """What each worker loads."""

    model: str = "dlib-resnet-v1"  # the default: tasks that name no model
    models: tuple[str, ...] = ()  # also loaded at start-up (every model in use); others on demand
    detector: str = "hog"
    runtime: str = "onnx"
    cache_dir: str | None = None
    threads: int = 0  # native threads per worker; 0 = share the cores between the workers
    memory_mb: int = 0  # address-space cap of each worker (RLIMIT_AS); 0 = none


@dataclass(eq=False)
class _Task:
    name: str  # a function in worker.TASKS
    args: tuple[object, ...]
    future: Future[Any] = field(default_factory=Future)
    threads: int = 0  # native threads lent to it; 0 = its worker's share of the cores
    tenant: str = ""  # whose queue it waits in (a domain)
    key: bytes | None = None  # digest of its photos, for Strikes (None: not a photo task)


@dataclass(eq=False)
class _Slot:
    """One worker: its process and pipe, and what its dispatcher thread knows about it."""

    index: int
    state: State = "starting"
    process: BaseProcess | None = None
    conn: Connection | None = None
    error: str | None = None  # why the last attempt to load the model failed
    private: deque[_Task] = field(default_factory=deque)  # tasks for this very worker
    thread: threading.Thread | None = None


class _RemoteTraceback(Exception):
    """The worker's traceback of an unexpected exception, chained as its ``__cause__``."""

    def __str__(self) -> str:
        return str(self.args[0])


def _load_failed_message(reason: str | None) -> str:
    return f"the face model could not be loaded: {reason}"


def _fail(future: Future[Any], message: str) -> None:
    """Fail a task's future unless its caller cancelled it meanwhile."""
    if future.running() or future.set_running_or_notify_cancel():
        future.set_exception(ModelError(message))


def _refused_message(strikes: int) -> str:
    return (f"this photo stopped the face model worker {strikes} times (crashed it or ran past "
            "the task timeout), so it is not tried again; check the file, or send another photo")


def _kill(process: BaseProcess) -> None:
    with contextlib.suppress(OSError, ValueError):  # already gone
        process.kill()


class ModelPool:
    """Run face analysis in ``workers`` supervised processes. Thread-safe; use as a context manager.

    Workers are spawned at :meth:`start`, or lazily by the first ``submit``. ``submit`` never
    blocks: it queues the task and returns a future, which ends with the result, the
    :class:`FacesearchError` the photo raised, or a :class:`ModelError` if the worker died with it,
    the model cannot be loaded, or the pool is closing.
    """

    def __init__(self, spec: ModelSpec, workers: int | None = None, *,
                 task_timeout: float | None = None, queue_limit: int | None = None,
                 crash_limit: int = CRASH_LIMIT) -> None:
        """``task_timeout``: seconds a task may run (None: no limit). ``queue_limit``: tasks a
        tenant may have waiting before :meth:`submit_many` refuses its requests (None: no
        limit). ``crash_limit``: strikes after which a photo is refused."""
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.task_timeout = task_timeout or None
        self.queue_limit = queue_limit or None
        self.crash_limit = crash_limit
        cores = os.cpu_count() or 1
        # Threads left to the pool (0) are shared out, and a task running alone gets them all;
        # a number set by the user is kept for every task.
        self._lend = cores if spec.threads < 1 else 0
        if spec.threads < 1:
            spec = replace(spec, threads=max(1, cores // self.workers))
        self.spec = spec
        self._cond = threading.Condition()  # guards everything below; dispatchers wait on it
        self._queue: FairQueue[_Task] = FairQueue()
        self._strikes = Strikes()
        self._task_seconds = 0.1  # moving average of a task's run time, for Retry-After
        self._counts = dict.fromkeys(("started", "timeouts", "dropped", "overloaded", "refused"), 0)
        self._slots = [_Slot(i) for i in range(self.workers)]
        self._started = False
        self._closing = False
        self._deadline = 0.0  # when close() stops waiting for tasks in flight
        self._restarts = 0
        self._load_failures = 0
        self._load_error: str | None = None

    # -- public API ----------------------------------------------------------------------------

    def start(self, timeout: float = 120) -> None:
        """Spawn the workers if not yet done and wait until every one has loaded its model.

        Raises :class:`ModelError` with the reason if a worker could not load it, or on timeout.
        """
        deadline = time.monotonic() + timeout
        self._ensure_started()
        with self._cond:
            while True:
                if self._closing:
                    raise ModelError(CLOSING)
                failed = [s.error for s in self._slots if s.state == "failed"]
                if failed:
                    raise ModelError(_load_failed_message(failed[0]))
                if all(s.state in ("ready", "busy") for s in self._slots):
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ModelError(f"the face model workers did not load within {timeout:g} s")
                self._cond.wait(remaining)

    def submit(self, data: bytes, *, max_pixels: int, max_faces: int, embed: bool = True,
               thumbnails: bool = False, min_face: int = MIN_FACE,
               largest: bool = False, model: str | None = None,
               tenant: str = "") -> Future[Analysis]:
        """Queue one photo; the future's result is an :class:`Analysis` or a FacesearchError.
        ``thumbnails``: also a small JPEG crop of each face (``Face.thumbnail``), for enrollment.
        ``min_face``, ``largest``: how hard to look for small faces (``FaceModel.detect``).
        ``model``: which model (None: the spec's default). ``tenant``: whose queue it waits in."""
        return self._submit([self._photo_task(data, tenant, max_pixels, max_faces, embed,
                                              thumbnails, min_face, largest, model)])[0]

    def submit_many(self, photos: list[bytes], *, tenant: str, max_pixels: int, max_faces: int,
                    embed: bool = True, thumbnails: bool = False, min_face: int = MIN_FACE,
                    largest: bool = False, model: str | None = None) -> list[Future[Analysis]]:
        """One task per photo (so other tenants' tasks interleave with them), admitted as a
        whole: raises :class:`Overloaded` if ``tenant`` already has tasks waiting and these
        would take it past the queue limit (a tenant with nothing waiting is always admitted)."""
        tasks = [self._photo_task(data, tenant, max_pixels, max_faces, embed, thumbnails,
                                  min_face, largest, model) for data in photos]
        return self._submit(tasks, admit=True)

    def _photo_task(self, data: bytes, tenant: str, *args: object) -> _Task:
        return _Task("analyze", (data, *args), tenant=tenant, key=Strikes.key([data]))

    def submit_batch(self, photos: list[bytes], *, max_pixels: int, max_faces: int,
                     thumbnails: bool = False, min_face: int = MIN_FACE,
                     largest: bool = False, model: str | None = None,
                     ) -> Future[list[Analysis | FacesearchError]]:
        """Queue several photos as one task (one embedding call for all their faces); each
        photo's result is an :class:`Analysis` or the FacesearchError it raised."""
        return self._submit([_Task("analyze_batch", (photos, max_pixels, max_faces, thumbnails,
                                                     min_face, largest, model),
                                   key=Strikes.key(photos))])[0]

    def result(self, future: Future[T]) -> T:
        """Wait for a submitted task; a dead worker or an unloadable model is a :class:`ModelError`."""
        return future.result()

    def analyze(self, data: bytes, *, max_pixels: int = 40_000_000, max_faces: int = 50,
                embed: bool = True, thumbnails: bool = False, min_face: int = MIN_FACE,
                largest: bool = False, model: str | None = None) -> Analysis:
        return self.result(self.submit(data, max_pixels=max_pixels, max_faces=max_faces,
                                       embed=embed, thumbnails=thumbnails, min_face=min_face,
                                       largest=largest, model=model))

    def process_reports(self) -> list[dict[str, object]]:
        """Ask each loaded worker what it has loaded (see :func:`worker.process_report`)."""
        self.start()
        with self._cond:
            live = [s for s in self._slots if s.state in ("ready", "busy")]
        futures = [self._submit([_Task("process_report", ())], slot=slot)[0] for slot in live]
        return [f.result() for f in futures]

    def pids(self) -> list[int]:
        """Process ids of the workers (loading or loaded) not yet found dead."""
        with self._cond:
            return [s.process.pid for s in self._slots if s.process is not None and s.process.pid]

    def ready(self) -> bool:
        """Whether every slot has a loaded worker (for a readiness probe)."""
        with self._cond:
            return (self._started and not self._closing
                    and all(s.state in ("ready", "busy") for s in self._slots))

    def stats(self) -> dict[str, int]:
        """Gauges and counters for metrics: ``restarts`` counts workers replaced after dying (or
        killed for running past the timeout: ``timeouts``); ``started`` tasks sent to a worker,
        ``dropped`` cancelled before they started, ``overloaded`` requests' tasks refused for a
        full queue, ``refused`` photos refused for having stopped workers before."""
        with self._cond:
            states = [s.state for s in self._slots]
            return {
                "size": self.workers,
                "alive": sum(s.process is not None for s in self._slots),
                "ready": sum(state in ("ready", "busy") for state in states),
                "busy": states.count("busy"),
                "queued": len(self._queue),
                "restarts": self._restarts,
                "load_failures": self._load_failures,
                **self._counts,
            }

    def close(self, timeout: float = 10) -> None:
        """Stop: fail queued tasks, let tasks in flight finish for up to ``timeout`` seconds, stop
        the workers (killing those still busy after that) and join the threads. Idempotent."""
        with self._cond:
            if not self._closing:
                self._closing = True
                self._deadline = time.monotonic() + timeout
            deadline = self._deadline
            queued = [*self._queue.drain(), *(t for s in self._slots for t in s.private)]
            for s in self._slots:
                s.private.clear()
            # A worker still loading has no task: no need to wait for it.
            loading = [s.process for s in self._slots if s.state == "starting" and s.process]
            threads = [s.thread for s in self._slots if s.thread is not None]
            self._cond.notify_all()
        for task in queued:
            _fail(task.future, CLOSING)
        for process in loading:
            _kill(process)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in threads):  # still busy: their tasks fail
            with self._cond:
                busy = [s.process for s in self._slots if s.process is not None]
            for process in busy:
                _kill(process)
            for thread in threads:
                thread.join(5)

    def __enter__(self) -> ModelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the parent side -----------------------------------------------------------------------

    def _ensure_started(self) -> None:
        """Start the dispatcher threads (which spawn the workers); returns at once."""
        with self._cond:
            if self._started or self._closing:
                return
            self._started = True
            for slot in self._slots:
                slot.thread = threading.Thread(target=self._dispatch, args=(slot,), daemon=True,
                                               name=f"facesearch-model-{slot.index}")
                slot.thread.start()

    def _submit(self, tasks: list[_Task], slot: _Slot | None = None,
                admit: bool = False) -> list[Future[Any]]:
        """Queue ``tasks`` (for ``slot`` only, if given); ``admit``: apply the queue limit."""
        self._ensure_started()
        refused: list[tuple[_Task, FacesearchError]] = []
        with self._cond:
            if self._closing:
                error: str | None = CLOSING
            elif slot is None and all(s.state == "failed" for s in self._slots):
                # No worker can run it before the next attempt to load the model: fail now.
                error = _load_failed_message(self._load_error)
            else:
                error = None
                if admit and tasks:
                    self._admit(tasks)
                if slot is not None:
                    slot.private.extend(tasks)
                else:
                    for task in tasks:
                        if self._strikes.count(task.key) >= self.crash_limit:
                            refused.append((task, PhotoRefused(_refused_message(self.crash_limit))))
                            self._counts["refused"] += 1
                    bad = {id(t) for t, _ in refused}
                    for tenant in dict.fromkeys(t.tenant for t in tasks):
                        self._queue.extend(tenant, (t for t in tasks if t.tenant == tenant
                                                    and id(t) not in bad))
                self._cond.notify_all()
        for task, exc in refused:
            task.future.set_exception(exc)
        if error is not None:
            for task in tasks:
                task.future.set_exception(ModelError(error))
        return [task.future for task in tasks]

    def _admit(self, tasks: list[_Task]) -> None:
        """Raise :class:`Overloaded` if the tenant's queue cannot take ``tasks`` (lock held)."""
        tenant = tasks[0].tenant
        waiting = self._queue.waiting(tenant)
        if self.queue_limit is None or not waiting or waiting + len(tasks) <= self.queue_limit:
            return
        self._counts["overloaded"] += len(tasks)
        # When a worker could start them: the tasks waiting ahead, shared by the workers.
        ahead = len(self._queue) * self._task_seconds / self.workers
        error = Overloaded(f"the face model queue of this domain is full ({waiting} photos "
                           f"waiting, limit {self.queue_limit}): try again in a moment")
        error.retry_after = max(1, min(60, math.ceil(ahead)))
        raise error

    def _dispatch(self, slot: _Slot) -> None:
        """A slot's thread: keep a loaded worker in it and feed it tasks until the pool closes."""
        backoff = BACKOFF_FIRST
        while not self._closing:
            try:
                if slot.state == "starting":
                    error = (self._launch(slot) if slot.process is None else None) \
                        or self._await_ready(slot)
                    if error is not None:
                        if self._closing:
                            break
                        self._load_failed(slot, error, backoff)
                        with self._cond:
                            if self._cond.wait_for(lambda: self._closing, backoff):
                                break
                            slot.state = "starting"
                        backoff = min(2 * backoff, BACKOFF_MAX)
                        continue
                    backoff = BACKOFF_FIRST
                task = self._next_task(slot)
                if task is None:
                    if not self._closing:  # it died while idle: nothing lost
                        self._replace(slot)
                    continue
                self._run(slot, task)
            except Exception:  # a bug here must not strand the slot
                log.exception("model worker slot %d failed; restarting its worker", slot.index)
                if slot.process is not None:
                    _kill(slot.process)
                    self._reap(slot)
                with self._cond:
                    slot.state = "starting"
                    if self._cond.wait_for(lambda: self._closing, BACKOFF_FIRST):
                        break
        self._stop(slot)

    def _launch(self, slot: _Slot) -> str | None:
        """Spawn the slot's worker (it then loads the model); returns why it could not."""
        conn, child = _spawn.Pipe()
        process = _spawn.Process(target=worker.serve, args=(child, asdict(self.spec)), daemon=True,
                                 name=f"facesearch-model-{slot.index}")
        try:
            with _launch_lock:
                process.start()
        except Exception as exc:  # e.g. out of memory or processes
            conn.close()
            return f"could not start a worker process: {exc}"
        finally:
            child.close()  # the worker's end; closing ours lets us see EOF when it dies
        with self._cond:
            slot.process, slot.conn, slot.state = process, conn, "starting"
        return None

    def _await_ready(self, slot: _Slot) -> str | None:
        """Wait for the slot's new worker to load the model; returns why it could not."""
        message = self._receive(slot)
        if message is not None and message[0] == "ready":
            with self._cond:
                slot.state, slot.error = "ready", None
                self._cond.notify_all()
            return None
        exitcode = self._reap(slot)
        if message is not None:
            return str(message[1])
        return f"the worker exited while loading the model (exit code {exitcode})"

    def _load_failed(self, slot: _Slot, error: str, backoff: float) -> None:
        log.error("model worker %d could not load the model: %s; retrying in %g s",
                  slot.index, error, backoff)
        message = _load_failed_message(error)
        with self._cond:
            slot.state, slot.error = "failed", error
            self._load_error = error
            self._load_failures += 1
            doomed = list(slot.private)
            slot.private.clear()
            if all(s.state == "failed" for s in self._slots):  # nobody left to run the queue
                doomed += self._queue.drain()
            self._cond.notify_all()
        for task in doomed:
            _fail(task.future, message)

    def _next_task(self, slot: _Slot) -> _Task | None:
        """Wait for a task for this idle worker: its own first, then the shared queue. None if
        the pool is closing or the worker died meanwhile."""
        assert slot.process is not None
        with self._cond:
            while not self._closing and slot.process.is_alive():
                for queue in (slot.private, self._queue):
                    while queue:
                        task = queue.popleft()
                        if not task.future.set_running_or_notify_cancel():
                            self._counts["dropped"] += 1  # cancelled (its client left): skip it
                            continue
                        slot.state = "busy"
                        self._counts["started"] += 1
                        # Alone, a task may use every core (a single request is then ~4 ms
                        # faster); with others running, each keeps its worker's share.
                        alone = not self._queue and not any(
                            s.state == "busy" for s in self._slots if s is not slot)
                        task.threads = self._lend if alone else 0
                        return task
                self._cond.wait(IDLE_CHECK)
        return None

    def _run(self, slot: _Slot, task: _Task) -> None:
        """Send one task to the slot's worker and settle its future with the answer."""
        assert slot.conn is not None
        started = time.monotonic()
        try:
            try:
                reply = self._exchange(slot, (task.name, task.args, task.threads))
            except OSError:
                reply = None
            except Exception as exc:  # the task or its answer did not (un)pickle; the worker is fine
                reply = ("error", ModelError(f"the face model worker could not exchange a task: {exc}"))
            if reply is None or reply is _TIMED_OUT:
                task.future.set_exception(self._lost(slot, task, timed_out=reply is _TIMED_OUT))
            elif reply[0] == "ok":
                with self._cond:
                    self._strikes.clear(task.key)
                task.future.set_result(reply[1])
            else:
                exc = reply[1]
                if len(reply) > 2 and not isinstance(exc, FacesearchError):
                    exc.__cause__ = _RemoteTraceback(reply[2])
                task.future.set_exception(exc)
        finally:
            if not task.future.done():  # only on a bug above
                task.future.set_exception(ModelError(DIED))
            with self._cond:
                if slot.state == "busy":
                    slot.state = "ready"
                self._task_seconds += 0.2 * (time.monotonic() - started - self._task_seconds)
                self._cond.notify_all()

    def _exchange(self, slot: _Slot, message: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """Send a task and wait for the answer, both within the task timeout (``_receive``'s
        answers). A stopped worker stops reading its pipe: writing a photo bigger than the pipe's
        buffer would then block as long as its answer would never come."""
        assert slot.conn is not None
        data = ForkingPickler.dumps(message)  # what Connection.send does; unpicklable: raises here
        started = time.monotonic()
        if len(data) <= _SEND_DIRECT or self.task_timeout is None:
            slot.conn.send_bytes(data)
        else:
            failed: list[BaseException] = []

            def send() -> None:
                try:
                    slot.conn.send_bytes(data)  # type: ignore[union-attr]
                except BaseException as exc:
                    failed.append(exc)

            sender = threading.Thread(target=send, daemon=True, name=f"{slot.index}-send")
            sender.start()
            sender.join(self.task_timeout)
            if sender.is_alive():
                return _TIMED_OUT  # the caller kills the worker, which ends the write (EPIPE)
            if failed:
                raise failed[0]
        if self.task_timeout is None:
            return self._receive(slot)
        return self._receive(slot, max(0.0, self.task_timeout - (time.monotonic() - started)))

    def _lost(self, slot: _Slot, task: _Task, timed_out: bool) -> FacesearchError:
        """The slot's worker died running ``task``, or ran past the timeout (it is killed):
        replace it, count a strike against the photo, and say what the caller gets."""
        pid = slot.process.pid if slot.process else None
        if timed_out and slot.process is not None:
            _kill(slot.process)
        exitcode = self._replace(slot)
        with self._cond:
            strikes = self._strikes.add(task.key)
            if timed_out:
                self._counts["timeouts"] += 1
        if timed_out:
            log.warning("model worker %d (pid %s) ran past the %g s task timeout; killed and "
                        "replaced", slot.index, pid, self.task_timeout)
        else:
            log.warning("model worker %d (pid %s) died running a task (exit code %s); replaced",
                        slot.index, pid, exitcode)
        if self._closing:
            return ModelError(CLOSING)
        if strikes >= self.crash_limit:
            return PhotoRefused(_refused_message(self.crash_limit))
        if timed_out:
            return TaskTimeout(f"the photo took longer than {self.task_timeout:g} s to analyse "
                               "(FACESEARCH_TASK_TIMEOUT), so its model worker was restarted; "
                               "try again later, or with a smaller photo")
        return ModelError(DIED)

    def _receive(self, slot: _Slot, timeout: float | None = None) -> tuple[Any, ...] | None:
        """The worker's next message; None if it died first, ``_TIMED_OUT`` after ``timeout``."""
        assert slot.conn is not None and slot.process is not None
        ready = wait([slot.conn, slot.process.sentinel], timeout)
        if not ready:
            return _TIMED_OUT
        if slot.conn not in ready:
            return None
        try:
            return slot.conn.recv()
        except (EOFError, OSError):
            return None

    def _replace(self, slot: _Slot) -> int | None:
        """Reap the slot's dead worker and spawn its replacement (loaded by the dispatch loop)."""
        exitcode = self._reap(slot)
        with self._cond:
            self._restarts += 1
            slot.state = "starting"
        if not self._closing:
            self._launch(slot)  # on failure, the dispatch loop tries again with a backoff
        return exitcode

    def _reap(self, slot: _Slot, timeout: float = 5) -> int | None:
        """Wait for the slot's worker to exit (killing it after ``timeout``) and forget it."""
        process, conn = slot.process, slot.conn
        if process is None or conn is None:
            return None
        process.join(timeout)
        if process.exitcode is None:
            _kill(process)
            process.join()
        conn.close()
        with self._cond:
            slot.process = slot.conn = None
        return process.exitcode

    def _stop(self, slot: _Slot) -> None:
        """Closing: tell an idle worker to exit (killing it if it has not by the close deadline);
        kill one still loading, which has no task to finish."""
        if slot.process is not None and slot.conn is not None:
            if slot.state == "ready":
                with contextlib.suppress(OSError):  # already dead: nothing to tell
                    slot.conn.send(None)
            else:
                _kill(slot.process)
            self._reap(slot, timeout=max(0.0, self._deadline - time.monotonic()))
        with self._cond:
            doomed = list(slot.private)
            slot.private.clear()
            slot.state = "stopped"
            self._cond.notify_all()
        for task in doomed:
            _fail(task.future, CLOSING)
