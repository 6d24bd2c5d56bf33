"""Every shipped face pipeline on all of LFW, side by side, in one run.

For each model: the central face of each of LFW's 13,233 photos, found and embedded through
facesearch's own worker pool (cached in ``bench/results/lfw_faces_<model>.npz``), then:

- faces found: photos where the detector found a face (LFW has one labelled face per photo);
- LFW 10-fold: the official ``pairs.txt`` protocol (threshold chosen on 9 folds, tested on the
  10th); a pair with a photo without a face counts as "different people";
- verify threshold: the largest (0.001 grid) with at most 0.1 % of the different-person pairs
  among all photos of folds 1-5 under it (as ``calibrate_threshold``);
- open set with 1, 2, 4 photos enrolled: the people with more than k photos are enrolled with
  their first k; known probes are their other photos, unknown probes every photo of the 4,069
  people with a single photo. A probe's distance to a person is that of their nearest enrolled
  face (as the search answers); exact nearest neighbours (numpy), not the HNSW index
  (``bench_openset`` measures that the index agrees). DIR: the right person nearest and under the
  threshold; FAR: an unknown probe with anyone under it. Reported at FAR 1 % and 0.1 %;
- recognize threshold: the largest with FAR <= 1 % (k = 1) on the probes of the people at even
  positions in name order, checked on the odd ones' (both against the whole gallery).

Run: ``python -m bench.bench_models [--models a,b] [--workers N]``. Writes
``bench/results/models.json``. SFace's table is the SFace half of the fusion's when that exists
(same detector, same crops, same network: the fusion model computes SFace's vector first).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

from facesearch.inference import ModelPool, ModelSpec
from facesearch.models import DLIB_MODEL, FUSION_MODEL, SFACE_MODEL, default_thresholds

from .calibrate_threshold import ten_fold
from .lfw import REPO, FaceTable, cached_faces, faces_dir, machine, people_photos, read_pairs

MODELS = (SFACE_MODEL, FUSION_MODEL, DLIB_MODEL)
GRID = np.round(np.arange(0.0, 1.2 + 1e-9, 0.001), 3)
CACHE_DIR = Path(tempfile.gettempdir()) / "facesearch-bench"


def table_path(model: str) -> Path:
    return REPO / "bench" / "results" / f"lfw_faces_{model.replace(':', '_')}.npz"


def faces_for(model: str, root: Path, paths: list[Path], workers: int | None) -> FaceTable:
    if model == SFACE_MODEL and _has_all(table_path(FUSION_MODEL), root, paths):
        fused, _, _ = cached_faces(root, paths, table_path(FUSION_MODEL),
                                   pool=_NoPool(ModelSpec(model=FUSION_MODEL)))  # type: ignore[arg-type]
        half = fused.embeddings[:, :128] * math.sqrt(2)
        return FaceTable(fused.paths, half / np.linalg.norm(half, axis=1, keepdims=True),
                         fused.boxes, fused.scores, fused.faces_found)
    spec = ModelSpec(model=model, cache_dir=str(CACHE_DIR))
    table, n, seconds = cached_faces(root, paths, table_path(model), workers=workers,
                                     pool=_pool(spec, workers))
    if n:
        print(f"{model}: embedded {n} photos in {seconds:.0f} s", file=sys.stderr)
    return table


def _has_all(cache: Path, root: Path, paths: list[Path]) -> bool:
    if not cache.is_file():
        return False
    with np.load(cache) as data:
        known = {str(p) for p in data["paths"]}
    return all(str(p.relative_to(root)) in known for p in paths)


class _NoPool:
    """Stands for a pool when every photo is cached (the cache checks the spec only)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec


_pools: dict[str, ModelPool] = {}


def _pool(spec: ModelSpec, workers: int | None) -> ModelPool:
    if spec.model not in _pools:
        _pools[spec.model] = ModelPool(spec, workers=workers)
    return _pools[spec.model]


def largest_with(rate: np.ndarray, target: float) -> float:
    ok = np.flatnonzero(rate <= target)
    return float(GRID[ok[-1]]) if ok.size else 0.0


def pairs_report(root: Path, table: FaceTable) -> dict:
    pairs = read_pairs(root)
    row = table.row()
    emb, found = table.embeddings, table.found

    def distance(a: Path, b: Path) -> float:
        i, j = row[str(a.relative_to(root))], row[str(b.relative_to(root))]
        return float(1 - emb[i] @ emb[j]) if found[i] and found[j] else math.inf

    dist = np.array([distance(a, b) for _, a, b, _ in pairs])
    same = np.array([s for *_, s in pairs])
    fold = np.array([f for f, *_ in pairs])
    acc, thresholds = ten_fold(dist, same, fold)
    # The verify threshold: 0.1 % FAR over all different-person pairs of the photos of folds 1-5.
    photos = sorted({row[str(p.relative_to(root))] for f, a, b, _ in pairs if f <= 5 for p in (a, b)})
    photos = [i for i in photos if found[i]]
    m = emb[photos]
    ident = np.array([table.paths[i].split("/")[-2] for i in photos])
    d = 1 - m @ m.T
    upper = np.triu(np.ones(d.shape, dtype=bool), 1)
    impostor = np.sort(d[upper & (ident[:, None] != ident[None, :])])
    t_verify = math.floor(impostor[int(1e-3 * len(impostor))] * 1000) / 1000
    return {"ten_fold_mean": float(np.mean(acc)), "ten_fold_std": float(np.std(acc)),
            "ten_fold_thresholds": thresholds, "verify_threshold": t_verify,
            "verify_far": float(np.mean(impostor < t_verify)),
            "pairs_with_a_photo_without_face": int(np.sum(~np.isfinite(dist)))}


def open_set(people: dict[str, list[str]], table: FaceTable,
             k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each probe: is its person enrolled, is the nearest person right, that distance, and
    whose photo it is."""
    row = table.row()
    found, emb = table.found, table.embeddings
    enrolled: dict[str, list[int]] = {}
    probes: list[tuple[str, int]] = []
    for person, photos in people.items():
        rows = [row[p] for p in photos]
        if len(rows) > k:
            enrolled[person] = [r for r in rows[:k] if found[r]]
            probes += [(person, r) for r in rows[k:]]
        elif len(rows) == 1:
            probes.append((person, rows[0]))
    gallery = [(p, r) for p, rs in enrolled.items() for r in rs]
    g_person = np.array([p for p, _ in gallery], dtype=object)
    g = emb[[r for _, r in gallery]]
    order = {p: i for i, p in enumerate(enrolled)}
    g_index = np.array([order[p] for p in g_person])
    known = np.array([p in enrolled for p, _ in probes])
    right = np.zeros(len(probes), dtype=bool)
    best = np.full(len(probes), np.inf)
    persons = list(enrolled)
    for start in range(0, len(probes), 2048):
        chunk = probes[start:start + 2048]
        q = emb[[r for _, r in chunk]]
        d = 1 - q @ g.T
        per = np.full((len(chunk), len(persons)), np.inf)
        np.minimum.at(per.T, g_index, d.T)  # nearest face per person
        nearest = np.argmin(per, axis=1)
        dist = per[np.arange(len(chunk)), nearest]
        ok = np.array([found[r] for _, r in chunk])
        best[start:start + len(chunk)] = np.where(ok, dist, np.inf)
        right[start:start + len(chunk)] = [persons[n] == p for n, (p, _) in zip(nearest, chunk, strict=True)]
    return known, right, best, np.array([p for p, _ in probes], dtype=object)


def rates_at(known: np.ndarray, right: np.ndarray, dist: np.ndarray, t: float) -> dict:
    under = dist < t
    return {"threshold": t, "dir": float(np.mean((right & under)[known])),
            "far": float(np.mean(under[~known]))}


def far_curve(known: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """FAR at each threshold of GRID."""
    return np.searchsorted(np.sort(dist[~known]), GRID, side="left") / max(1, (~known).sum())


def open_set_report(people: dict[str, list[str]], table: FaceTable, model: str) -> dict:
    out: dict = {}
    for k in (1, 2, 4):
        known, right, dist, _ = open_set(people, table, k)
        far = far_curve(known, dist)
        out[f"photos_{k}"] = {
            "enrolled_people": len(_people(people, k)),
            "known_probes": int(known.sum()), "unknown_probes": int((~known).sum()),
            "rank1": float(np.mean(right[known & np.isfinite(dist)])),
            **{f"far<={x:g}": rates_at(known, right, dist, largest_with(far, x)) for x in (0.01, 0.001)},
            "at_default": rates_at(known, right, dist, default_thresholds(model)[0]),
        }
    # The threshold is chosen on the probes of half the people and checked on the other half's,
    # both against the whole gallery (false accepts grow with the gallery's size).
    known, right, dist, who = open_set(people, table, 1)
    even = np.isin(who, list(people)[::2])
    t_rec = largest_with(far_curve(known[even], dist[even]), 0.01)
    out["recognize_threshold"] = {
        "threshold": t_rec,
        "calibration_half": rates_at(known[even], right[even], dist[even], t_rec),
        "held_out_half": rates_at(known[~even], right[~even], dist[~even], t_rec)}
    return out


def _people(people: dict[str, list[str]], k: int) -> list[str]:
    return [p for p, photos in people.items() if len(photos) > k]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--people", type=int, default=None, help="only the first N people (quick runs)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "models.json")
    args = ap.parse_args(argv)
    root = faces_dir()
    people_paths = people_photos(root, args.people)
    people = {n: [str(p.relative_to(root)) for p in ps] for n, ps in people_paths.items()}
    paths = [p for ps in people_paths.values() for p in ps]
    report: dict = {"date": date.today().isoformat(), "machine": machine(), "photos": len(paths),
                    "people": len(people), "models": {}}
    try:
        for model in args.models.split(","):
            table = faces_for(model, root, paths, args.workers)
            entry = {"photos_with_a_face": int(table.found.sum()),
                     "photos_with_several_faces": int(np.sum(table.faces_found > 1))}
            if args.people is None:
                entry |= pairs_report(root, table)
            entry |= open_set_report(people, table, model)
            report["models"][model] = entry
            print(json.dumps({model: entry}, indent=1), flush=True)
    finally:
        for pool in _pools.values():
            pool.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
