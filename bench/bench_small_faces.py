"""Can small faces be recognized? LFW pairs verified with both photos shrunk so the faces are ~N px.

Why facesearch looks for faces down to 40 px by default (``FACESEARCH_MIN_FACE``), although those
cost the detector an upsampled pass (~4x the time on a small photo): if faces that small could not
be told apart anyway, finding them would buy nothing. LFW faces are ~110 px wide (dlib's box) in
250 px photos; each photo is scaled by ``N / 110`` (Lanczos), searched with ``min_face`` 20, and the
face nearest the centre is embedded. A pair with a photo where no face was found counts as
answered "different people".

Run: ``python -m bench.bench_small_faces [--pairs 1200] [--sizes 110,80,60,40,30]``.
The pairs are every n-th of ``pairs.txt`` (same and different people alike).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from facesearch.config import DEFAULT_VERIFY_THRESHOLD
from facesearch.models.base import Analysis
from facesearch.models.dlib_resnet import DlibResNet

from .lfw import central_face, cpu_model, faces_dir, read_pairs

LFW_FACE = 110  # px: median width of dlib's box on LFW's 250 px photos


def central_embedding(model: DlibResNet, path: Path, scale: float) -> tuple[np.ndarray, int] | None:
    """The embedding and box width of the face nearest the centre of the scaled photo."""
    image = Image.open(path).convert("RGB")
    if scale != 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)),
                             Image.Resampling.LANCZOS)
    pixels = np.asarray(image)
    faces = model.detect(pixels, min_face=20)
    central = central_face(Analysis(width=image.width, height=image.height, faces=faces,
                                    faces_found=len(faces)))
    if central is None:
        return None
    face = faces[central]
    model.embed(pixels, [face])
    assert face.embedding is not None
    return face.embedding, face.box.w


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=1200, help="of the 6,000 in pairs.txt")
    ap.add_argument("--sizes", default="110,80,60,40,30", help="face widths to shrink to, px")
    args = ap.parse_args(argv)
    pairs = read_pairs(faces_dir())
    pairs = pairs[:: max(1, len(pairs) // args.pairs)][: args.pairs]
    sizes = [int(s) for s in args.sizes.split(",")]
    model = DlibResNet(cache_dir=str(Path(tempfile.gettempdir()) / "facesearch-bench"))
    threshold = DEFAULT_VERIFY_THRESHOLD
    print(f"command: python -m bench.bench_small_faces --pairs {args.pairs} --sizes {args.sizes}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; "
          f"{len(pairs)} LFW pairs ({sum(p[3] for p in pairs)} same person)\n")
    print(f"| face width | median box found | pairs missing a face | accuracy at {threshold} "
          "| same person accepted | different people accepted | best accuracy (threshold fit here) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size in sizes:
        scale = size / LFW_FACE
        found: dict[Path, tuple[np.ndarray, int] | None] = {}
        for _, a, b, _ in pairs:
            for path in (a, b):
                if path not in found:
                    found[path] = central_embedding(model, path, scale)
        distance, same, missing = [], [], 0
        for _, a, b, is_same in pairs:
            fa, fb = found[a], found[b]
            if fa is None or fb is None:
                missing += 1
                distance.append(np.inf)  # no face: the pipeline answers "different"
            else:
                distance.append(1.0 - float(fa[0] @ fb[0]))
            same.append(is_same)
        d, y = np.array(distance), np.array(same)
        widths = [f[1] for f in found.values() if f is not None]
        accuracy = ((d < threshold) == y).mean()
        best = max(((d < t) == y).mean() for t in np.linspace(0.0, 0.3, 301))
        print(f"| {size} px | {np.median(widths):.0f} px | {missing} | {100 * accuracy:.1f} % "
              f"| {100 * (d[y] < threshold).mean():.1f} % | {100 * (d[~y] < threshold).mean():.1f} % "
              f"| {100 * best:.1f} % |", flush=True)


if __name__ == "__main__":
    main()
