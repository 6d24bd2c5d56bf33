"""Shared by the benchmark scripts (and some tests): LFW access, the pairs protocol, face chips,
batch embedding, and the machine's description."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facesearch.inference import ModelPool
from facesearch.models.base import Analysis

REPO = Path(__file__).resolve().parent.parent


def faces_dir() -> Path:
    """``$FACESEARCH_FACES`` or ``../shared/faces`` beside the repository; exit if absent."""
    path = Path(os.environ.get("FACESEARCH_FACES", REPO.parent / "shared" / "faces"))
    if not (path / "lfw").is_dir():
        sys.exit(f"LFW not found at {path} (set FACESEARCH_FACES to the folder holding lfw/)")
    return path


def photo_path(root: Path, name: str, number: int) -> Path:
    return root / "lfw" / name / f"{name}_{number:04d}.jpg"


def read_pairs(root: Path) -> list[tuple[int, Path, Path, bool]]:
    """The official protocol: ``(fold, photo_a, photo_b, same_person)`` for 10 x 600 pairs."""
    lines = (root / "pairs.txt").read_text().splitlines()
    folds, per_fold = (int(x) for x in lines[0].split())
    pairs = []
    for i, line in enumerate(lines[1:]):
        fold = i // (2 * per_fold) + 1
        parts = line.split("\t")
        if len(parts) == 3:
            name, a, b = parts
            pairs.append((fold, photo_path(root, name, int(a)), photo_path(root, name, int(b)), True))
        else:
            n1, a, n2, b = parts
            pairs.append((fold, photo_path(root, n1, int(a)), photo_path(root, n2, int(b)), False))
    assert len(pairs) == folds * 2 * per_fold
    return pairs


def central_face(analysis: Analysis) -> int | None:
    """Index of the face nearest the photo's centre: LFW centres the labelled person."""
    if not analysis.faces:
        return None
    cx, cy = analysis.width / 2, analysis.height / 2

    def off(i: int) -> float:
        b = analysis.faces[i].box
        return (b.x + b.w / 2 - cx) ** 2 + (b.y + b.h / 2 - cy) ** 2

    return min(range(len(analysis.faces)), key=off)


def embed_photos(pool: ModelPool, paths: Iterable[Path], desc: str = "embedding",
                 ) -> dict[Path, np.ndarray | None]:
    """Embedding of the central face of each photo (None where no face was found)."""
    paths = list(dict.fromkeys(paths))
    out: dict[Path, np.ndarray | None] = {}
    window = pool.workers * 4
    futures = {}
    with tqdm(total=len(paths), desc=desc, unit="photo", file=sys.stderr) as bar:
        for i, path in enumerate(paths):
            futures[path] = pool.submit(path.read_bytes(), max_pixels=40_000_000, max_faces=50)
            if len(futures) >= window or i == len(paths) - 1:
                for p, fut in futures.items():
                    analysis = pool.result(fut)
                    idx = central_face(analysis)
                    out[p] = None if idx is None else analysis.faces[idx].embedding
                    bar.update()
                futures = {}
    return out


def lfw_chips(lfw: Path, count: int) -> np.ndarray:
    """Face chips exactly as dlib cuts them (HOG, 5 landmarks, ``get_face_chip(150, 0.25)``): the
    first face of the first photo of the first ``count`` people, alphabetically, with one."""
    import dlib
    import face_recognition_models
    from PIL import Image

    detector = dlib.get_frontal_face_detector()
    landmarks = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
    chips = []
    for person in sorted(p for p in lfw.iterdir() if p.is_dir()):
        photo = min(person.glob("*.jpg"), default=None)
        if photo is None:
            continue
        image = np.asarray(Image.open(photo).convert("RGB"))
        found = detector(image, 0)
        if found:
            chips.append(dlib.get_face_chip(image, landmarks(image, found[0]), size=150, padding=0.25))
        if len(chips) == count:
            break
    return np.stack(chips)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
