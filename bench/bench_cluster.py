"""Clustering unknown faces on LFW with the default model: which rule, which cut, how fast.

The central face of every LFW photo (bench_models' cached table, else embedded now) is clustered
with facesearch.clustering's average linkage at several cuts, and for comparison single linkage
(connected pairs under a cut) and Immich's DBSCAN-like rule (a face with ``min_samples`` faces
within ``eps`` is a core). At several gallery sizes (whole people drawn at random, seed 0, up to
all 13,233 photos): pairwise precision and recall (of the pairs of photos put in one cluster, how
many are one person; of the pairs of one person, how many share a cluster), BCubed F, clusters of
2+ faces vs people with 2+ photos, time and the peak memory the run added (tracemalloc).

Run: ``python -m bench.bench_cluster [--sizes 1000,3000,13233] [--model sface-2021dec]``.
Writes ``bench/results/cluster.json``.
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np

from facesearch import clustering
from facesearch.models import SFACE_MODEL

from .bench_models import _pools, faces_for
from .lfw import REPO, faces_dir, machine, people_photos


def _pairs(counts: np.ndarray) -> float:
    return float((counts * (counts - 1) / 2).sum())


def scores(labels: np.ndarray, truth: np.ndarray) -> dict:
    """Pairwise precision/recall/F and BCubed F of predicted ``labels`` against ``truth`` (noise,
    label -1, counts as one singleton per face)."""
    labels = labels.copy()
    noise = labels < 0
    labels[noise] = labels.max(initial=0) + 1 + np.arange(noise.sum())
    _, lab = np.unique(labels, return_inverse=True)
    _, tru = np.unique(truth, return_inverse=True)
    joint = np.unique(lab * (tru.max() + 1) + tru, return_counts=True)[1]
    per_label = np.bincount(lab)
    per_truth = np.bincount(tru)
    tp = _pairs(joint)
    precision = tp / max(_pairs(per_label), 1)
    recall = tp / max(_pairs(per_truth), 1)
    # BCubed: per face, the share of its cluster that is its person, and of its person in its cluster.
    cell = {}
    keys, cnt = np.unique(np.stack([lab, tru], 1), axis=0, return_counts=True)
    for (a, b), c in zip(keys, cnt, strict=True):
        cell[(a, b)] = c
    n = np.array([cell[(a, b)] for a, b in zip(lab, tru, strict=True)], dtype=np.float64)
    bp = float(np.mean(n / per_label[lab]))
    br = float(np.mean(n / per_truth[tru]))
    return {"pair_precision": round(precision, 4), "pair_recall": round(recall, 4),
            "pair_f": round(2 * precision * recall / max(precision + recall, 1e-12), 4),
            "bcubed_f": round(2 * bp * br / (bp + br), 4),
            "clusters_2plus": int(np.sum(np.bincount(lab) >= 2)),
            "noise": int(noise.sum())}


def measure(run: Callable[[], np.ndarray], truth: np.ndarray) -> dict:
    tracemalloc.start()
    start = time.perf_counter()
    labels = run()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {**scores(labels, truth), "seconds": round(seconds, 2), "peak_mb": round(peak / 2**20, 1)}


def subset(person: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of whole people drawn at random until ``size`` photos (all rows if size >= all)."""
    if size >= len(person):
        return np.arange(len(person))
    rows: list[int] = []
    for p in rng.permutation(np.unique(person)):
        rows += list(np.flatnonzero(person == p))
        if len(rows) >= size:
            break
    return np.array(sorted(rows[:size]))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=SFACE_MODEL)
    ap.add_argument("--sizes", default="1000,3000,6000,13233")
    ap.add_argument("--cuts", default="0.5,0.55,0.6,0.65,0.7", help="average-linkage cuts")
    ap.add_argument("--compare-at", type=int, default=3000,
                    help="the size at which single linkage and DBSCAN-like are also measured")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--first", type=int, default=None, help="only the first N LFW people (quick runs)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cluster.json")
    args = ap.parse_args(argv)
    root = faces_dir()
    paths = [p for ps in people_photos(root, args.first).values() for p in ps]
    try:
        table = faces_for(args.model, root, paths, args.workers)
    finally:
        for pool in _pools.values():
            pool.close()
    found = table.found
    emb = table.embeddings[found]
    person = np.array([p.split("/")[1] for p, f in zip(table.paths, found, strict=True) if f])
    _, person_id = np.unique(person, return_inverse=True)
    rng = np.random.default_rng(0)
    report: dict = {"date": date.today().isoformat(), "machine": machine(), "model": args.model,
                    "photos": len(paths), "with_a_face": int(found.sum()), "sizes": []}
    for size in (int(s) for s in args.sizes.split(",")):
        rows = subset(person_id, size, rng)
        x, truth = emb[rows], person_id[rows]
        entry: dict = {"faces": len(rows), "people": len(np.unique(truth)),
                       "people_2plus": int(np.sum(np.bincount(truth)[np.unique(truth)] >= 2)),
                       "runs": {}}
        for cut in (float(c) for c in args.cuts.split(",")):
            entry["runs"][f"average cut {cut}"] = measure(
                lambda c=cut, x=x: clustering.average_linkage(x, c), truth)
        if len(rows) <= args.compare_at:
            for cut in (0.4, 0.45, 0.5):
                entry["runs"][f"single cut {cut}"] = measure(
                    lambda c=cut, x=x: clustering.single_linkage(x, c), truth)
            for eps, m in ((0.5, 3), (0.55, 2), (0.6, 3)):
                entry["runs"][f"dbscan eps {eps} min {m}"] = measure(
                    lambda e=eps, k=m, x=x: clustering.dbscan_like(x, e, k), truth)
        report["sizes"].append(entry)
        print(json.dumps(entry, indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
