"""HOG face detection on LFW: time per photo and detection rate, for the detector settings one could
choose, and facesearch's own detection policies. Run: ``python -m bench.bench_detect [--photos 1000]``.

The photos are a deterministic spread over LFW (every n-th by path); the time is dlib's ``run`` (or
facesearch's ``detect``, which adds the 5 landmarks) on an already decoded image, single thread.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import dlib
import numpy as np
from PIL import Image

from facesearch.models.dlib_resnet import DlibResNet

from .lfw import cpu_model, faces_dir


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--photos", type=int, default=1000)
    args = ap.parse_args(argv)
    paths = sorted((faces_dir() / "lfw").glob("*/*.jpg"))
    paths = paths[:: max(1, len(paths) // args.photos)][: args.photos]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    detector = dlib.get_frontal_face_detector()
    model = DlibResNet(cache_dir=str(Path(tempfile.gettempdir()) / "facesearch-bench"))

    def facesearch(**options: object):
        return lambda i: (model.detect(i, **options),)

    def gray(img: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(img).convert("L"))

    variants = {
        "RGB, upsampled once (faces from ~40 px)": lambda i: detector.run(i, 1, 0.0),
        "grayscale, upsampled once": lambda i: detector.run(gray(i), 1, 0.0),
        "RGB, no upsampling (faces from ~80 px)": lambda i: detector.run(i, 0, 0.0),
        "grayscale, no upsampling": lambda i: detector.run(gray(i), 0, 0.0),
        "facesearch `detect`, default (min_face 40: upsampled once)": facesearch(),
        "facesearch `detect`, largest face only (enroll, verify)": facesearch(largest=True),
        "facesearch `detect`, FACESEARCH_MIN_FACE=80": facesearch(min_face=80),
    }
    print(f"command: python -m bench.bench_detect --photos {args.photos}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; "
          f"{len(images)} LFW photos of 250x250\n")
    print("| HOG variant | ms / photo | photos with a face |")
    print("|---|---:|---:|")
    for label, run in variants.items():
        start = time.perf_counter()
        found = sum(bool(run(img)[0]) for img in images)
        ms = (time.perf_counter() - start) / len(images) * 1e3
        print(f"| {label} | {ms:.1f} | {found} / {len(images)} ({100 * found / len(images):.1f} %) |")


if __name__ == "__main__":
    main()
