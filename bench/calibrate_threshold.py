"""Choose the default match threshold on LFW folds 1-5 and check it on folds 6-10.

A search compares one probe with every face of a domain, so the default threshold is chosen for a
low false-accept rate, not for the best pairwise accuracy: it is the largest threshold at which at
most 1 in 1,000 different-person photo pairs among all photos of folds 1-5 (every cross-identity
pair, ~7 million) falls under it. The accuracy-maximizing pairwise threshold is reported too.

Also reports the official 10-fold LFW verification accuracy (each fold's threshold chosen on the
other nine). Run: ``python -m bench.calibrate_threshold [--workers N] [--runtime dlib|onnx]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from facesearch.inference import ModelPool, ModelSpec

from .lfw import REPO, embed_photos, faces_dir, read_pairs


def best_threshold(dist: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Threshold maximising accuracy of ``dist < t``; the middle of the best plateau."""
    finite = np.sort(np.unique(dist[np.isfinite(dist)]))
    candidates = np.concatenate([[0.0], (finite[:-1] + finite[1:]) / 2, [finite[-1] + 1e-6]])
    acc = np.array([np.mean((dist < t) == same) for t in candidates])
    best = np.flatnonzero(acc == acc.max())
    # Middle of the widest run of best candidates keeps us away from both error regions.
    t = float((candidates[best[0]] + candidates[best[-1]]) / 2) if np.all(
        np.diff(best) == 1) else float(candidates[best[len(best) // 2]])
    return t, float(acc.max())


def accuracy(dist: np.ndarray, same: np.ndarray, t: float) -> float:
    return float(np.mean((dist < t) == same))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--runtime", default="onnx", choices=["dlib", "onnx"])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "lfw_pairs.json")
    args = ap.parse_args()

    root = faces_dir()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pairs = read_pairs(root)
    start = time.time()
    spec = ModelSpec(runtime=args.runtime)
    with ModelPool(spec, workers=args.workers) as pool:
        emb = embed_photos(pool, [p for _, a, b, _ in pairs for p in (a, b)])
    elapsed = time.time() - start

    fold = np.array([f for f, *_ in pairs])
    same = np.array([s for *_, s in pairs])
    dist = np.array([
        np.inf if emb[a] is None or emb[b] is None else float(1.0 - emb[a] @ emb[b])
        for _, a, b, _ in pairs
    ])  # a pair with a photo where no face was found counts as "not the same person"
    no_face = sorted(str(p.relative_to(root)) for p, e in emb.items() if e is None)

    calib = fold <= 5
    t_best, _ = best_threshold(dist[calib], same[calib])

    # Every photo pair of folds 1-5, by identity (the folder name).
    photos = sorted({p for f, a, b, _ in pairs if f <= 5 for p in (a, b) if emb[p] is not None})
    matrix = np.stack([emb[p] for p in photos])
    ident = np.array([p.parent.name for p in photos])
    all_dist = 1.0 - matrix @ matrix.T
    upper = np.triu(np.ones(all_dist.shape, dtype=bool), 1)
    same_id = ident[:, None] == ident[None, :]
    impostor = np.sort(all_dist[upper & ~same_id])
    genuine = all_dist[upper & same_id]
    far_target = 1e-3
    t_default = round(float(np.floor(impostor[int(far_target * len(impostor))] * 1000) / 1000), 3)
    acc_calib = accuracy(dist[calib], same[calib], t_default)
    acc_heldout = accuracy(dist[~calib], same[~calib], t_default)
    np.savez(args.out.with_name("lfw_embeddings.npz"), matrix=np.stack(
        [e if e is not None else np.full(128, np.nan, np.float32) for e in emb.values()]),
        paths=np.array([str(p.relative_to(root)) for p in emb]))

    fold_acc = []
    for k in range(1, 11):
        t, _ = best_threshold(dist[fold != k], same[fold != k])
        fold_acc.append(accuracy(dist[fold == k], same[fold == k], t))
    result = {
        "photos": len(emb),
        "photos_without_face": no_face,
        "seconds": round(elapsed, 1),
        "default_threshold": t_default,
        "rule": f"largest threshold with impostor-pair FAR <= {far_target} on all folds 1-5 photos",
        "impostor_pairs_folds_1_5": len(impostor),
        "genuine_pairs_folds_1_5": len(genuine),
        "far_at_default": float(np.mean(impostor < t_default)),
        "frr_at_default": float(np.mean(genuine >= t_default)),
        "best_pairwise_threshold_folds_1_5": round(t_best, 3),
        "accuracy_folds_1_5_at_best_pairwise": accuracy(dist[calib], same[calib], t_best),
        "accuracy_folds_1_5_at_default": acc_calib,
        "accuracy_folds_6_10_at_default": acc_heldout,
        "accuracy_all_at_default": accuracy(dist, same, t_default),
        "ten_fold_mean": float(np.mean(fold_acc)),
        "ten_fold_std": float(np.std(fold_acc)),
        "ten_fold": fold_acc,
        "runtime": args.runtime,
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
    }
    args.out.write_text(json.dumps(result, indent=2))
    np.savez(args.out.with_suffix(".npz"), dist=dist, same=same, fold=fold)
    print(json.dumps({k: v for k, v in result.items() if k != "photos_without_face"}, indent=2))
    print(f"photos without a face: {len(no_face)}")


if __name__ == "__main__":
    main()
