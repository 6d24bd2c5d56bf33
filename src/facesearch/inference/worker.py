"""Code that runs inside a model worker process. Imported there by the spawn machinery.

Keep this module's top-level imports free of the model runtime (it is loaded in :func:`init`) and
of anything that loads libpq.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from ..errors import FacesearchError
from ..imaging import decode_image
from ..models.base import Analysis

if TYPE_CHECKING:
    from ..models.base import FaceModel

_model: FaceModel | None = None


def init(spec: dict[str, object]) -> None:
    """Process initializer: load the model once per worker."""
    global _model
    threads = int(spec.get("threads", 1))  # type: ignore[arg-type]
    # Several workers share the cores: keep each one's native thread pools to its share.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    from ..models import load_model

    _model = load_model(
        str(spec["model"]),
        detector=str(spec.get("detector", "hog")),
        runtime=str(spec.get("runtime", "onnx")),
        cache_dir=spec.get("cache_dir"),  # type: ignore[arg-type]
        threads=threads,
    )


def analyze(data: bytes, max_pixels: int, max_faces: int, embed: bool = True) -> Analysis:
    """Decode a photo, find its faces (largest first) and, if asked, embed the first ``max_faces``."""
    assert _model is not None, "worker not initialised"
    t0 = time.perf_counter()
    image = decode_image(data, max_pixels)
    t1 = time.perf_counter()
    faces = _model.detect(image)
    t2 = time.perf_counter()
    found = len(faces)
    faces = faces[:max_faces]
    if embed:
        _model.embed(image, faces)
    t3 = time.perf_counter()
    height, width = image.shape[:2]
    timings = {"decode": (t1 - t0) * 1e3, "detect": (t2 - t1) * 1e3}
    if embed:
        timings["embed"] = (t3 - t2) * 1e3
    return Analysis(width=width, height=height, faces=faces, faces_found=found, timings_ms=timings)


def analyze_batch(photos: list[bytes], max_pixels: int,
                  max_faces: int) -> list[Analysis | FacesearchError]:
    """:func:`analyze` for several photos with one embedding call for all their faces. A photo
    that cannot be read gives its error in its place instead of failing the batch. ``embed`` in
    ``timings_ms`` is the batch's time shared out per face."""
    assert _model is not None, "worker not initialised"
    results: list[Analysis | FacesearchError] = []
    images = {}
    for i, data in enumerate(photos):
        try:
            t0 = time.perf_counter()
            image = decode_image(data, max_pixels)
            t1 = time.perf_counter()
            faces = _model.detect(image)
            t2 = time.perf_counter()
        except FacesearchError as exc:
            results.append(exc)
            continue
        height, width = image.shape[:2]
        images[i] = image
        results.append(Analysis(width=width, height=height, faces=faces[:max_faces],
                                faces_found=len(faces),
                                timings_ms={"decode": (t1 - t0) * 1e3, "detect": (t2 - t1) * 1e3}))
    done = {i: r for i, r in enumerate(results) if isinstance(r, Analysis)}
    t0 = time.perf_counter()
    _model.embed_batch([(images[i], a.faces) for i, a in done.items()])
    per_face = (time.perf_counter() - t0) * 1e3 / max(1, sum(len(a.faces) for a in done.values()))
    for a in done.values():
        a.timings_ms["embed"] = per_face * len(a.faces)
    return results


def process_report() -> dict[str, object]:
    """What this worker process has loaded: lets tests prove the process layout."""
    with open("/proc/self/maps") as maps:
        libs = maps.read()
    return {"pid": os.getpid(), "libpq_loaded": "libpq" in libs,
            "model_loaded": _model is not None}
