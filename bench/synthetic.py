"""Synthetic face embeddings for search tests and benchmarks (no photos needed at 25k-1M scale), and
group photos made from LFW portraits."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def clustered(rng: np.random.Generator, people: int, per_person: int, dim: int = 128,
              mean: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors shaped like dlib's embeddings: all in one cone around ``mean`` (different people
    ~0.2 apart in cosine distance), each person's faces ~0.04 apart. Give several galleries the same
    ``mean`` to make them alike, as real faces of different tenants are.
    Returns (centres, faces[people, per, dim])."""
    if mean is None:
        mean = rng.normal(size=dim)
        mean /= np.linalg.norm(mean)
    centres = mean + 0.5 * rng.normal(size=(people, dim)) / np.sqrt(dim)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    faces = centres[:, None, :] + 0.2 * rng.normal(size=(people, per_person, dim)) / np.sqrt(dim)
    faces /= np.linalg.norm(faces, axis=2, keepdims=True)
    return centres, faces.astype(np.float32)


def near(rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """A new "photo" of each given person: a fresh sample around their centre."""
    q = centres + 0.2 * rng.normal(size=centres.shape) / np.sqrt(centres.shape[1])
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def group_photo(lfw: Path, sizes: list[int], seed: int,
                canvas: tuple[int, int] = (1000, 700)) -> tuple[bytes, list[tuple[int, int, int]]]:
    """A group photo we make from LFW: portraits' central regions scaled so that each face (about
    110 px wide in LFW's 250 px photos) is ``size`` px, in rows on a grey canvas, one person per
    face (picked by ``seed``). Returns the JPEG and each face's centre and size."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    people = sorted(p for p in lfw.iterdir() if p.is_dir())
    picks = rng.choice(len(people), len(sizes), replace=False)
    image = Image.new("RGB", canvas, (128, 128, 128))
    faces, x, y, row_h = [], 10, 10, 0
    for size, pick in zip(sizes, picks, strict=True):
        photo = Image.open(sorted(people[pick].glob("*.jpg"))[0]).convert("RGB").crop((50, 50, 200, 200))
        side = round(150 * size / 110)
        if x + side > canvas[0] - 10:
            x, y, row_h = 10, y + row_h + 20, 0
        image.paste(photo.resize((side, side), Image.Resampling.LANCZOS), (x, y))
        faces.append((x + side // 2, y + side // 2, size))
        x, row_h = x + side + 30, max(row_h, side)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=92)
    return buf.getvalue(), faces


def found_all(boxes: list[tuple[int, int, int, int]], placed: list[tuple[int, int, int]]) -> list[bool]:
    """For each placed face (centre, size): is a box centred within half its size of it."""
    return [any(abs(x + w / 2 - cx) < size / 2 and abs(y + h / 2 - cy) < size / 2
                for x, y, w, h in boxes) for cx, cy, size in placed]
