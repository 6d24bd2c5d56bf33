"""A gallery made by DeepFace, queried by facesearch: how far apart the two pipelines are, and which
threshold keeps a migrated gallery answering.

DeepFace (the pinned version, offline: its ``Dlib`` model and detectors ``opencv`` and ``dlib``,
the weights copied from face-recognition-models) builds its datastore over ``--people`` LFW people
(2 photos each) with its own ``find()``. facesearch then embeds, with dlib-resnet-v1 (the same
network, its own detector and alignment), the same gallery photos (the self offset: one photo, two
pipelines), a third photo of each person (known probes) and one photo each of as many people with a
single photo (strangers). For each gallery (DeepFace-opencv, DeepFace-dlib, and facesearch's own as
the baseline) and each threshold: known probes named right, nearest person right, strangers named.

Run: ``python -m bench.bench_migrated [--people 120]``; writes ``bench/results/migrated.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

from facesearch import deepface_pkl
from facesearch.deepface_calibrate import calibrate
from facesearch.inference import ModelPool, ModelSpec
from facesearch.models import DLIB_MODEL, default_thresholds

from .lfw import REPO, embed_photos, faces_dir, machine

FIND = r"""
import sys
from deepface import DeepFace
DeepFace.find(sys.argv[1], db_path=sys.argv[2], model_name="Dlib", detector_backend=sys.argv[3],
              silent=True)
"""

REPRESENT = r"""
import json, sys
from deepface import DeepFace
for path in sys.argv[2:]:
    try:
        faces = DeepFace.represent(path, model_name="Dlib", detector_backend=sys.argv[1])
        best = max(faces, key=lambda f: f["facial_area"]["w"] * f["facial_area"]["h"])
        print(json.dumps([path, best["embedding"]]))
    except ValueError:  # no face
        print(json.dumps([path, None]))
"""


def deepface_embeddings(paths: list[Path], detector: str, home: Path) -> dict[Path, np.ndarray | None]:
    """DeepFace's own embeddings of photos (its detector's largest face), L2-normalized."""
    out = subprocess.run([sys.executable, "-c", REPRESENT, detector, *map(str, paths)], check=True,
                         env={**os.environ, "DEEPFACE_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"},
                         capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        if line.startswith("["):
            path, vector = json.loads(line)
            found[Path(path)] = None if vector is None else np.asarray(vector) / np.linalg.norm(vector)
    return found


def deepface_gallery(db: Path, probe: Path, detector: str, home: Path) -> Path:
    subprocess.run([sys.executable, "-c", FIND, str(probe), str(db), detector], check=True,
                   env={**os.environ, "DEEPFACE_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (made,) = db.glob(f"ds_model_dlib_detector_{detector}_*.npz")
    return made


def rates(gallery: np.ndarray, labels: np.ndarray, known: np.ndarray, known_labels: np.ndarray,
          strangers: np.ndarray, threshold: float) -> dict[str, float]:
    def nearest(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = 1 - q @ gallery.T
        i = d.argmin(axis=1)
        return labels[i], d[np.arange(len(q)), i]

    who, dist = nearest(known)
    _, sdist = nearest(strangers)
    return {"named_right": float(np.mean((who == known_labels) & (dist < threshold))),
            "nearest_right": float(np.mean(who == known_labels)),
            "strangers_named": float(np.mean(sdist < threshold))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=120)
    args = ap.parse_args()
    import face_recognition_models

    lfw = faces_dir() / "lfw"
    folders = sorted(lfw.iterdir())
    several = [d for d in folders if len(list(d.glob("*.jpg"))) >= 3]
    single = [d for d in folders if len(list(d.glob("*.jpg"))) == 1]
    people = several[:: max(1, len(several) // args.people)][: args.people]
    strangers = [sorted(d.glob("*.jpg"))[0] for d in single[:: max(1, len(single) // args.people)]
                 ][: args.people]
    work = Path(tempfile.mkdtemp(prefix="bench-migrated-"))
    home = work / "deepface-home"
    (home / ".deepface" / "weights").mkdir(parents=True)
    models = Path(face_recognition_models.__file__).parent / "models"
    for name in ("dlib_face_recognition_resnet_model_v1.dat", "shape_predictor_5_face_landmarks.dat"):
        shutil.copy(models / name, home / ".deepface" / "weights" / name)
    gallery_photos, probes = [], {}
    for d in people:
        photos = sorted(d.glob("*.jpg"))
        for db in ("opencv", "dlib"):
            (work / db / d.name).mkdir(parents=True, exist_ok=True)
            for p in photos[:2]:
                (work / db / d.name / p.name).symlink_to(p)
        gallery_photos += photos[:2]
        probes[d.name] = photos[2]

    t0 = default_thresholds(DLIB_MODEL)[0]
    spec = ModelSpec(model=DLIB_MODEL, cache_dir=str(REPO / "bench" / "results" / "cache"))
    with ModelPool(spec, workers=os.cpu_count() or 1) as pool:
        ours = embed_photos(pool, [*gallery_photos, *probes.values(), *strangers], "facesearch")
    known = [(n, ours[p]) for n, p in probes.items() if ours[p] is not None]
    known_labels = np.array([n for n, _ in known])
    known_vecs = np.stack([v for _, v in known])
    stranger_vecs = np.stack([ours[p] for p in strangers if ours[p] is not None])
    own = [(p.parent.name, ours[p]) for p in gallery_photos if ours[p] is not None]

    results: dict[str, object] = {"date": str(date.today()), "machine": machine(),
                                  "people": len(people), "gallery_photos": len(gallery_photos),
                                  "known_probes": len(known), "strangers": len(stranger_vecs),
                                  "default_threshold": t0, "galleries": {}}
    galleries: dict[str, tuple] = {
        "facesearch": (np.stack([v for _, v in own]), np.array([n for n, _ in own]), None)}
    for detector in ("opencv", "dlib"):
        file = deepface_gallery(work / detector, next(iter(probes.values())), detector, home)
        contents = deepface_pkl.read_pkl(file)
        vectors = np.stack([f.embedding for f in contents.faces])
        labels = np.array([f.person for f in contents.faces])
        pairs = [(f.embedding, ours[Path(os.path.realpath(f.identity))]) for f in contents.faces]
        cal = calibrate([a for a, b in pairs if b is not None], [b for a, b in pairs if b is not None],
                        vectors, labels, t0)
        galleries[f"deepface-{detector}"] = (vectors, labels, cal)
        # The ceiling of reproducing DeepFace's crop: queries embedded by DeepFace itself.
        theirs = deepface_embeddings([*probes.values(), *strangers], detector, home)
        galleries[f"deepface-{detector}, DeepFace's queries"] = (vectors, labels, None, {
            "known": [(n, theirs.get(p)) for n, p in probes.items()],
            "strangers": [theirs.get(p) for p in strangers]})
    for name, (vectors, labels, cal, *own_queries) in galleries.items():
        kv, kl, sv = known_vecs, known_labels, stranger_vecs
        if own_queries:
            q = own_queries[0]
            kl = np.array([n for n, v in q["known"] if v is not None])
            kv = np.stack([v for _, v in q["known"] if v is not None])
            sv = np.stack([v for v in q["strangers"] if v is not None])
        entry: dict[str, object] = {"faces": len(vectors)}
        thresholds = {"default": t0}
        if cal is not None:
            entry["offset_median"], entry["offset_p90"] = cal.offset_median, cal.offset_p90
            thresholds["calibrated"] = cal.threshold
        for t in (0.06, 0.07, 0.08, 0.09, 0.1):
            thresholds[f"{t:.2f}"] = t
        entry["thresholds"] = {k: {"threshold": round(t, 4), **rates(vectors, labels, kv, kl, sv, t)}
                               for k, t in thresholds.items()}
        results["galleries"][name] = entry  # type: ignore[index]
        print(name, json.dumps(entry, indent=1))
    out = REPO / "bench" / "results" / "migrated.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
