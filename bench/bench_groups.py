"""Group photos: faces found and the time to analyze them, per pipeline, in facesearch's workers;
also one-face LFW photos and each worker's memory.

Photos are made from LFW (``bench.synthetic.group_photo``): 4-9 portraits on a 1000 x 700 canvas,
each face 40-120 px wide, one person per face. For each model: the faces found of those placed
(a box centred on the face), at the default ``min_face`` (40), and the time of a whole analysis
(decode, detect, embed every face) of each photo, p50 over the photos, run one at a time through
a pool of one worker that is lent both cores (as a request alone on the server is).

One-face photos: 100 LFW photos (250 x 250), the same way (p50 of the whole analysis, the face
embedded). Memory: the worker's resident set after all of that.

Run: ``python -m bench.bench_groups [--photos 40] [--models a,b]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from facesearch.inference import ModelPool, ModelSpec
from facesearch.models import DLIB_MODEL, FUSION_MODEL, SFACE_MODEL

from .lfw import faces_dir, machine
from .synthetic import found_all, group_photo


def timed(pool: ModelPool, data: bytes) -> float:
    t0 = time.perf_counter()
    pool.analyze(data)
    return (time.perf_counter() - t0) * 1e3


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=40)
    ap.add_argument("--models", default=",".join((SFACE_MODEL, FUSION_MODEL, DLIB_MODEL)))
    args = ap.parse_args(argv)
    lfw = faces_dir() / "lfw"
    rng = np.random.default_rng(0)
    photos = []
    for seed in range(args.photos):
        sizes = [int(s) for s in rng.integers(40, 121, size=int(rng.integers(4, 10)))]
        photos.append(group_photo(lfw, sizes, 1000 + seed))
    seven = [group_photo(lfw, [60, 70, 80, 90, 100, 110, 120], 5000 + i) for i in range(10)]
    print(f"command: python -m bench.bench_groups --photos {args.photos}")
    print(f"machine: {machine()}; {time.strftime('%Y-%m-%d')}; {len(photos)} photos of 1000 x 700 with "
          f"{sum(len(p) for _, p in photos)} faces of 40-120 px\n")
    singles = [p.read_bytes() for p in sorted(lfw.glob("*/*.jpg"))[::131][:100]]
    print("| model | faces found | of faces >= 60 px | analysis p50 ms (all faces embedded) "
          "| 7 faces, 1000 x 700: p50 ms | 1-face 250 px photo: p50 ms | worker RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    cache = str(Path(tempfile.gettempdir()) / "facesearch-bench")
    for model in args.models.split(","):
        with ModelPool(ModelSpec(model=model, cache_dir=cache), workers=1) as pool:
            pool.analyze(photos[0][0])  # warm-up
            found, big, times = [], [], []
            for data, placed in photos:
                t0 = time.perf_counter()
                a = pool.analyze(data)
                times.append((time.perf_counter() - t0) * 1e3)
                ok = found_all([(f.box.x, f.box.y, f.box.w, f.box.h) for f in a.faces], placed)
                found += ok
                big += [hit for hit, (_, _, size) in zip(ok, placed, strict=True) if size >= 60]
            seven_ms = [timed(pool, data) for data, _ in seven]
            single_ms = [timed(pool, data) for data in singles]
            rss = max(rss_mb(pid) for pid in pool.pids())
        print(f"| {model} | {sum(found)} / {len(found)} ({100 * np.mean(found):.1f} %) "
              f"| {sum(big)} / {len(big)} | {statistics.median(times):.0f} "
              f"| {statistics.median(seven_ms):.0f} | {statistics.median(single_ms):.1f} | {rss:.0f} |",
              flush=True)
    print(f"\n(cores: {os.cpu_count()}; the pool's one worker is lent all of them for each photo)")
    if SFACE_MODEL in args.models.split(","):
        smallest(lfw, cache)


def smallest(lfw: Path, cache: str) -> None:
    """The smallest faces YuNet finds: 9 faces of one size per made photo, at min_face=20 (the
    lowest a request may ask; YuNet itself reports smaller ones too)."""
    print("\n| face size (px) | faces found by YuNet (min_face=20, 5 photos of 9 faces) |")
    print("|---:|---:|")
    with ModelPool(ModelSpec(model=SFACE_MODEL, cache_dir=cache), workers=1) as pool:
        for size in (20, 24, 28, 32, 40):
            hits = []
            for seed in range(5):
                data, placed = group_photo(lfw, [size] * 9, 9000 + seed, canvas=(400, 300))
                a = pool.analyze(data, embed=False, min_face=20)
                hits += found_all([(f.box.x, f.box.y, f.box.w, f.box.h) for f in a.faces], placed)
            print(f"| {size} | {sum(hits)} / {len(hits)} |", flush=True)


if __name__ == "__main__":
    main()
