"""Code that runs inside a model worker process: :func:`serve` is its entry point.

Keep this module's top-level imports free of the model runtime (it is loaded in :func:`init`) and
of anything that loads libpq: the spawned worker imports it, and so does the parent.
"""

from __future__ import annotations

import os
import resource
import signal
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..errors import FacesearchError, ImageTooLarge, ModelError
from ..imaging import decode_image, face_thumbnail
from ..models.base import MIN_FACE, Analysis

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from ..models.base import FaceModel

_models: dict[str, FaceModel] = {}  # name -> the loaded model
_spec: dict[str, object] = {}
_default = ""


def init(spec: dict[str, object]) -> None:
    """Load the default model and every other model in use, once per worker."""
    global _spec, _default
    threads = int(spec.get("threads", 1))  # type: ignore[arg-type]
    # Several workers share the cores: keep each one's native thread pools to its share.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    _spec, _default = spec, str(spec["model"])
    for name in dict.fromkeys([_default, *spec.get("models", ())]):  # type: ignore[misc]
        model(name)


def model(name: str | None = None) -> FaceModel:
    """The loaded model ``name`` (None: the default); a model not loaded at start-up (a domain
    created since on another model) is loaded now, once."""
    name = name or _default
    if name not in _models:
        from ..models import load_model

        _models[name] = load_model(
            name,
            detector=str(_spec.get("detector", "hog")),
            runtime=str(_spec.get("runtime", "onnx")),
            cache_dir=_spec.get("cache_dir"),  # type: ignore[arg-type]
            threads=int(_spec.get("threads", 1)),  # type: ignore[arg-type]
        )
    return _models[name]


def _analyze(photos: list[bytes], max_pixels: int, max_faces: int, embed: bool, thumbnails: bool,
             min_face: int, largest: bool, name: str | None) -> list[Analysis | FacesearchError]:
    """Decode, detect, then embed and crop the faces kept, each stage over the whole batch (one
    network call for all faces). A photo that cannot be read gives its error in its place instead
    of failing the batch. Times in ``timings_ms`` past decoding are the batch's shared out."""
    assert _default, "worker not initialised"
    face_model = model(name)
    results: list[Analysis | FacesearchError] = []
    images: list[np.ndarray] = []
    decode_ms: list[float] = []
    for data in photos:
        t0 = time.perf_counter()
        try:
            images.append(decode_image(data, max_pixels))
        except FacesearchError as exc:
            results.append(exc)
            continue
        decode_ms.append((time.perf_counter() - t0) * 1e3)
        results.append(None)  # type: ignore[arg-type]  # filled in below
    if not images:
        return results

    t0 = time.perf_counter()
    detected = face_model.detect_batch(images, min_face=min_face, largest=largest, max_faces=max_faces)
    detect_ms = (time.perf_counter() - t0) * 1e3 / len(images)
    analyses = [Analysis(width=image.shape[1], height=image.shape[0], faces=faces,
                         faces_found=found, timings_ms={"decode": ms, "detect": detect_ms})
                for image, (faces, found), ms in zip(images, detected, decode_ms, strict=True)]
    if embed:
        t0 = time.perf_counter()
        face_model.embed_batch([(image, a.faces) for image, a in zip(images, analyses, strict=True)])
        per_face = (time.perf_counter() - t0) * 1e3 / max(1, sum(len(a.faces) for a in analyses))
        for a in analyses:
            a.timings_ms["embed"] = per_face * len(a.faces)
    if thumbnails:
        # A JPEG crop of each face kept (~1 ms a face: only enrollment asks for them).
        for image, a in zip(images, analyses, strict=True):
            t0 = time.perf_counter()
            for face in a.faces:
                b = face.box
                face.thumbnail = face_thumbnail(image, b.x, b.y, b.w, b.h)
            a.timings_ms["thumbnail"] = (time.perf_counter() - t0) * 1e3
    done = iter(analyses)
    return [next(done) if r is None else r for r in results]


def analyze(data: bytes, max_pixels: int, max_faces: int, embed: bool = True,
            thumbnails: bool = False, min_face: int = MIN_FACE, largest: bool = False,
            name: str | None = None) -> Analysis:
    """Decode a photo, find its faces (largest first) with model ``name`` (None: the default)
    and, if asked, embed the first ``max_faces`` and crop a thumbnail of each. ``min_face`` and
    ``largest``: see ``FaceModel.detect``."""
    [result] = _analyze([data], max_pixels, max_faces, embed, thumbnails, min_face, largest, name)
    if isinstance(result, FacesearchError):
        raise result
    return result


def analyze_batch(photos: list[bytes], max_pixels: int, max_faces: int, thumbnails: bool = False,
                  min_face: int = MIN_FACE, largest: bool = False,
                  name: str | None = None) -> list[Analysis | FacesearchError]:
    """:func:`analyze` for several photos (enrollment), embedded with one network call."""
    return _analyze(photos, max_pixels, max_faces, True, thumbnails, min_face, largest, name)


def process_report() -> dict[str, object]:
    """What this worker process has loaded: lets tests prove the process layout."""
    with open("/proc/self/maps") as maps:
        libs = maps.read()
    return {"pid": os.getpid(), "libpq_loaded": "libpq" in libs,
            "model_loaded": bool(_models), "models": sorted(_models)}


TASKS: dict[str, Callable[..., object]] = {
    "analyze": analyze, "analyze_batch": analyze_batch, "process_report": process_report,
}


def _memory_message(memory_mb: int) -> str:
    limit = (f"the {memory_mb} MB a model worker may use (FACESEARCH_WORKER_MEMORY_MB)"
             if memory_mb else "the memory free on the server")
    return f"analysing this photo needs more than {limit}: send a smaller photo"


def serve(conn: Connection, spec: dict[str, object]) -> None:
    """Worker process main: load the model, say ``("ready", pid)``, then answer tasks until ``None``.

    A task is ``(name, args, threads)`` naming a function in :data:`TASKS` and the native
    threads it may use (0: the worker's share of the cores); the answer is ``("ok", result)``
    or ``("error", exception, traceback text)``. If the model cannot be loaded the answer to
    start-up is ``("error", reason)`` and the process exits: the pool decides when to retry.
    """
    # Ctrl-C reaches the whole process group, and service managers SIGTERM every process of the
    # service: the parent decides when workers stop (after draining), or they see its pipe close.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    memory_mb = int(spec.get("memory_mb") or 0)  # type: ignore[call-overload]
    if memory_mb > 0:
        # Address space, not resident memory: an allocation past it fails (MemoryError) instead
        # of the OOM killer taking the worker, or the machine, down.
        cap = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        init(spec)
    except Exception as exc:
        reason = str(exc) if isinstance(exc, FacesearchError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, MemoryError):
            reason = (f"out of memory loading the model under the {memory_mb} MB cap "
                      "(FACESEARCH_WORKER_MEMORY_MB): raise it")
        conn.send(("error", reason))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if task is None:
            return
        name, args, threads = task
        for loaded in _models.values():
            loaded.set_threads(threads)
        try:
            reply: tuple[object, ...] = ("ok", TASKS[name](*args))
        except MemoryError:
            reply = ("error", ImageTooLarge(_memory_message(memory_mb)), traceback.format_exc())
        except Exception as exc:
            reply = ("error", exc, traceback.format_exc())
        try:
            conn.send(reply)
        except (EOFError, OSError):  # the parent is gone
            return
        except Exception as exc:  # the answer does not pickle (nothing was written): say so instead
            conn.send(("error", ModelError(f"the face model worker could not send its answer: {exc}"),
                       traceback.format_exc()))
