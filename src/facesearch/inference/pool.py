"""A pool of spawned model worker processes.

``spawn`` (never ``fork``): a forked child would inherit the parent's database sockets and native
library state. Workers are started fresh, import only :mod:`facesearch.inference.worker`, and load
the model once in their initializer.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, replace
from typing import TypeVar

from ..errors import FacesearchError, ModelError
from ..models.base import Analysis
from . import worker

T = TypeVar("T")


@dataclass(frozen=True)
class ModelSpec:
    """What each worker loads."""

    model: str = "dlib-resnet-v1"
    detector: str = "hog"
    runtime: str = "onnx"
    cache_dir: str | None = None
    threads: int = 0  # native threads per worker; 0 = share the cores between the workers


class ModelPool:
    """Run face analysis in ``workers`` processes. Use as a context manager."""

    def __init__(self, spec: ModelSpec, workers: int | None = None) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        if spec.threads < 1:
            spec = replace(spec, threads=max(1, (os.cpu_count() or 1) // self.workers))
        self.spec = spec
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None

    def _get_executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=worker.init,
                    initargs=(asdict(self.spec),),
                )
            return self._executor

    def _reset(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is broken:
                self._executor = None
        broken.shutdown(wait=False, cancel_futures=True)

    def _submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        """Submit to the executor, replacing it first if a dead worker has broken it."""
        executor = self._get_executor()
        try:
            return executor.submit(fn, *args)
        except BrokenProcessPool:
            self._reset(executor)
            return self._get_executor().submit(fn, *args)

    def submit(self, data: bytes, *, max_pixels: int, max_faces: int,
               embed: bool = True) -> Future[Analysis]:
        """Queue one photo; the future's result is an :class:`Analysis` or a FacesearchError."""
        return self._submit(worker.analyze, data, max_pixels, max_faces, embed)

    def submit_batch(self, photos: list[bytes], *, max_pixels: int,
                     max_faces: int) -> Future[list[Analysis | FacesearchError]]:
        """Queue several photos as one task (one embedding call for all their faces); each
        photo's result is an :class:`Analysis` or the FacesearchError it raised."""
        return self._submit(worker.analyze_batch, photos, max_pixels, max_faces)

    def result(self, future: Future[T]) -> T:
        """Wait for a submitted photo; a dead worker becomes a :class:`ModelError`."""
        try:
            return future.result()
        except BrokenProcessPool:
            if self._executor is not None:
                self._reset(self._executor)
            raise ModelError(
                "the face model worker stopped while processing this photo; try again"
            ) from None

    def analyze(self, data: bytes, *, max_pixels: int = 40_000_000, max_faces: int = 50,
                embed: bool = True) -> Analysis:
        return self.result(self.submit(data, max_pixels=max_pixels, max_faces=max_faces,
                                       embed=embed))

    def process_reports(self) -> list[dict[str, object]]:
        """Ask the workers what they have loaded (see :func:`worker.process_report`)."""
        executor = self._get_executor()
        futures = [executor.submit(worker.process_report) for _ in range(self.workers * 2)]
        return [f.result() for f in futures]

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ModelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
