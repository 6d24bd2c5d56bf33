"""Shared by the benchmark scripts (and some tests): LFW access, the pairs protocol, face chips,
batch embedding, and the machine's description."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facesearch.inference import ModelPool, ModelSpec
from facesearch.models.base import Analysis, Face

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


def central_faces(pool: ModelPool, paths: Iterable[Path], desc: str = "embedding",
                  ) -> dict[Path, tuple[Face, int] | None]:
    """The embedded face nearest the centre of each photo with the number of faces found in the
    photo (None where no face was found). Photos go to every worker, a few in flight each."""
    paths = list(dict.fromkeys(paths))
    out: dict[Path, tuple[Face, int] | None] = {}
    window = pool.workers * 4
    futures = {}
    with tqdm(total=len(paths), desc=desc, unit="photo", file=sys.stderr) as bar:
        for i, path in enumerate(paths):
            futures[path] = pool.submit(path.read_bytes(), max_pixels=40_000_000, max_faces=50)
            if len(futures) >= window or i == len(paths) - 1:
                for p, fut in futures.items():
                    analysis = pool.result(fut)
                    idx = central_face(analysis)
                    out[p] = None if idx is None else (analysis.faces[idx], analysis.faces_found)
                    bar.update()
                futures = {}
    return out


def embed_photos(pool: ModelPool, paths: Iterable[Path], desc: str = "embedding",
                 ) -> dict[Path, np.ndarray | None]:
    """Embedding of the central face of each photo (None where no face was found)."""
    return {p: None if found is None else found[0].embedding
            for p, found in central_faces(pool, paths, desc).items()}


@dataclass
class FaceTable:
    """The central face of each of ``paths`` (relative to the faces root, e.g.
    ``lfw/Name/Name_0001.jpg``), row by row; rows of photos without a face are NaN / -1 / 0."""

    paths: list[str]
    embeddings: np.ndarray  # (n, dim) float32, L2-normalized
    boxes: np.ndarray  # (n, 4) int32: x, y, w, h
    scores: np.ndarray  # (n,) float32: the detector's
    faces_found: np.ndarray  # (n,) int32: faces in the whole photo

    @property
    def found(self) -> np.ndarray:
        """Which rows have a face."""
        return self.faces_found > 0

    def row(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.paths)}

    def take(self, paths: list[str]) -> FaceTable:
        index = self.row()
        rows = np.array([index[p] for p in paths], dtype=np.int64)
        return FaceTable(list(paths), self.embeddings[rows], self.boxes[rows], self.scores[rows],
                         self.faces_found[rows])


def faces_cache(runtime: str) -> Path:
    """Where :func:`cached_faces` keeps the central faces of LFW photos for one runtime."""
    return REPO / "bench" / "results" / f"lfw_faces_{runtime}.npz"


def _spec_key(spec: ModelSpec) -> str:
    """What decides the faces and embeddings (not where the model is cached, nor threads)."""
    return f"model={spec.model} detector={spec.detector} runtime={spec.runtime}"


def _load_table(cache: Path, key: str) -> FaceTable | None:
    if not cache.is_file():
        return None
    with np.load(cache) as data:
        made_with = str(data["spec"])
        if made_with != key:
            sys.exit(f"{cache} was made with {made_with}, not {key}: delete it or pass another --cache")
        return FaceTable([str(p) for p in data["paths"]], data["embeddings"], data["boxes"],
                         data["scores"], data["faces_found"])


def cached_faces(root: Path, paths: Iterable[Path], cache: Path | None, *, runtime: str = "onnx",
                 workers: int | None = None, pool: ModelPool | None = None,
                 ) -> tuple[FaceTable, int, float]:
    """The central faces of ``paths`` (photos under ``root``), embedded through facesearch's
    worker pool (``pool``, or a new one of ``workers`` for ``runtime``). Photos already in
    ``cache`` (an ``.npz`` file, if given) are not embedded again; new ones are added to it.
    Returns the table in the order of ``paths``, how many photos were embedded now and the
    seconds that took (the start-up of a new pool included)."""
    spec = pool.spec if pool is not None else ModelSpec(runtime=runtime)
    wanted = [str(p.relative_to(root)) for p in dict.fromkeys(paths)]
    table = _load_table(cache, _spec_key(spec)) if cache is not None else None
    known = set(table.paths) if table is not None else set()
    missing = [p for p in wanted if p not in known]
    seconds = 0.0
    if missing:
        start = time.time()
        with contextlib.nullcontext(pool) if pool is not None else ModelPool(spec, workers=workers) as used:
            found = central_faces(used, [root / p for p in missing])
        seconds = time.time() - start
        dim = next((f.embedding.shape[0] for f, _ in filter(None, found.values())), 128)
        new = FaceTable(
            missing,
            np.stack([np.full(dim, np.nan, np.float32) if f is None else f[0].embedding.astype(np.float32)
                      for f in found.values()]),
            np.array([(-1, -1, -1, -1) if f is None else (f[0].box.x, f[0].box.y, f[0].box.w, f[0].box.h)
                      for f in found.values()], dtype=np.int32).reshape(-1, 4),
            np.array([np.nan if f is None else f[0].score for f in found.values()], dtype=np.float32),
            np.array([0 if f is None else f[1] for f in found.values()], dtype=np.int32))
        if table is not None:
            new = FaceTable(table.paths + new.paths, np.concatenate([table.embeddings, new.embeddings]),
                            np.concatenate([table.boxes, new.boxes]),
                            np.concatenate([table.scores, new.scores]),
                            np.concatenate([table.faces_found, new.faces_found]))
        table = new
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            part = cache.with_name(cache.name + ".part")
            with part.open("wb") as f:  # a file object: np.savez would append ".npz" to a name
                np.savez(f, paths=np.array(table.paths), embeddings=table.embeddings, boxes=table.boxes,
                         scores=table.scores, faces_found=table.faces_found, spec=np.array(_spec_key(spec)))
            part.replace(cache)  # never a half-written cache
    assert table is not None
    return table.take(wanted), len(missing), seconds


def people_photos(root: Path, people: int | None = None) -> dict[str, list[Path]]:
    """Each person's photos in LFW (folder name -> photos sorted by number), people sorted by
    name; ``people``: only the first so many of them (for quick runs)."""
    folders = sorted(p for p in (root / "lfw").iterdir() if p.is_dir())
    if people is not None:
        folders = folders[:people]
    return {f.name: sorted(f.glob("*.jpg")) for f in folders}


def machine() -> str:
    """``<cores> cores, <CPU model>`` for the reports."""
    return f"{os.cpu_count()} cores, {cpu_model()}"


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
