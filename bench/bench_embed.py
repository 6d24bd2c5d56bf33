"""Per-face embedding time: dlib's ``compute_face_descriptor`` vs the ONNX conversion.

Cuts real LFW face chips (HOG + 5 landmarks + ``get_face_chip``), then times, in one run:
dlib at batch 1 and 16, and onnxruntime at batch 1, 8 and 16 with 1 and 2 intra-op threads.
Prints a markdown table, the command and the machine.

    python -m bench.bench_embed [--faces 32] [--rounds 3]

LFW is read from ``$FACESEARCH_FACES/lfw`` (default ``../shared/faces`` beside the repository).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import dlib
import face_recognition_models
import numpy as np
import onnxruntime

from bench.lfw import cpu_model, lfw_chips
from facesearch.models.dlib_onnx import OnnxFaceEncoder

REPO = Path(__file__).resolve().parent.parent


def per_face_ms(run: Callable[[np.ndarray], object], chips: np.ndarray, batch: int,
                rounds: int) -> float:
    """Best-of-``rounds`` wall time per face, running ``chips`` in batches of ``batch``."""
    run(chips[:batch])  # warm-up
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(0, len(chips), batch):
            run(chips[i : i + batch])
        best = min(best, time.perf_counter() - start)
    return 1000 * best / len(chips)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=32, help="number of LFW face chips")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes (best is kept)")
    args = parser.parse_args(argv)

    faces = Path(os.environ.get("FACESEARCH_FACES", REPO.parent / "shared" / "faces"))
    if not (faces / "lfw").is_dir():
        sys.exit(f"LFW not found at {faces} (set FACESEARCH_FACES to the folder holding lfw/)")
    chips = lfw_chips(faces / "lfw", args.faces)
    dat = Path(face_recognition_models.face_recognition_model_location())

    net = dlib.face_recognition_model_v1(str(dat))

    def dlib_embed(batch: np.ndarray) -> object:
        if len(batch) == 1:
            return net.compute_face_descriptor(batch[0])
        return net.compute_face_descriptor(list(batch))  # dlib runs lists in batches of 16

    rows: list[tuple[str, int, int, float]] = []
    for batch in (1, 16):
        rows.append(("dlib", batch, 1, per_face_ms(dlib_embed, chips, batch, args.rounds)))

    with tempfile.TemporaryDirectory() as cache:
        diffs = []
        for threads in (1, 2):
            encoder = OnnxFaceEncoder(dat, Path(cache), threads=threads)
            for batch in (1, 8, 16):
                ms = per_face_ms(encoder.embed, chips, batch, args.rounds)
                rows.append(("onnxruntime", batch, threads, ms))
            diffs.append(np.abs(encoder.embed(chips) - np.array(dlib_embed(chips))).max())

    baseline = rows[0][3]
    print(f"Embedding time per face, {len(chips)} LFW chips, best of {args.rounds} passes\n")
    print("| runtime | batch | threads | ms / face | faces / s | vs dlib batch 1 |")
    print("|---|---:|---:|---:|---:|---:|")
    for runtime, batch, threads, ms in rows:
        print(f"| {runtime} | {batch} | {threads} | {ms:.1f} | {1000 / ms:.1f} "
              f"| {baseline / ms:.1f}x |")
    print(f"\nmax |onnx - dlib| over {len(chips)} faces: {max(diffs):.2e}")
    print(f"\ncommand: {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical cores "
          f"({len(os.sched_getaffinity(0))} usable), {platform.system()} {platform.release()}")
    print(f"versions: dlib {dlib.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"numpy {np.__version__}, python {platform.python_version()}")


if __name__ == "__main__":
    main()
