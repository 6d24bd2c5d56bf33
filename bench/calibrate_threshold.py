"""Choose the default match threshold on LFW folds 1-5 and check it on folds 6-10.

A search compares one probe with every face of a domain, so the default threshold is chosen for a
low false-accept rate, not for the best pairwise accuracy: it is the largest threshold at which at
most 1 in 1,000 different-person photo pairs among all photos of folds 1-5 (every cross-identity
pair, ~7 million) falls under it. The accuracy-maximizing pairwise threshold is reported too.

Also reports the official 10-fold LFW verification accuracy (each fold's threshold chosen on the
other nine), the accuracy of the shipped default threshold (``facesearch.config.DEFAULT_VERIFY_THRESHOLD``)
with no tuning at all, and the photos where no face was found (their pairs count as "different
people", the pipeline's answer). Run: ``python -m bench.calibrate_threshold [--workers N]
[--runtime dlib|onnx] [--cache]``; ``--pairs-per-fold`` runs a small part of the protocol.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np

from facesearch.config import DEFAULT_VERIFY_THRESHOLD
from facesearch.inference import ModelPool, ModelSpec

from .lfw import REPO, cached_faces, embed_photos, faces_cache, faces_dir, machine, read_pairs

FAR_TARGET = 1e-3


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


def subsample(pairs: list[tuple[int, Path, Path, bool]], per_fold: int | None,
              ) -> list[tuple[int, Path, Path, bool]]:
    """The first ``per_fold`` same-person and different-person pairs of each fold (all if None)."""
    if per_fold is None:
        return pairs
    kept: dict[tuple[int, bool], int] = {}
    out = []
    for pair in pairs:
        key = (pair[0], pair[3])
        if kept.get(key, 0) < per_fold:
            kept[key] = kept.get(key, 0) + 1
            out.append(pair)
    return out


def ten_fold(dist: np.ndarray, same: np.ndarray, fold: np.ndarray) -> tuple[list[float], list[float]]:
    """The official protocol: each fold's accuracy at the threshold best on the other nine."""
    accs, thresholds = [], []
    for k in np.unique(fold):
        t, _ = best_threshold(dist[fold != k], same[fold != k])
        thresholds.append(t)
        accs.append(accuracy(dist[fold == k], same[fold == k], t))
    return accs, thresholds


def at_fixed_threshold(dist: np.ndarray, same: np.ndarray, fold: np.ndarray, t: float) -> dict:
    """Accuracy of one threshold with no tuning: over every pair, and per fold (mean, std)."""
    per_fold = [accuracy(dist[fold == k], same[fold == k], t) for k in np.unique(fold)]
    return {
        "threshold": t,
        "accuracy_all_pairs": accuracy(dist, same, t),
        "per_fold_mean": float(np.mean(per_fold)),
        "per_fold_std": float(np.std(per_fold)),
        "per_fold": per_fold,
        "false_accepts": int(np.sum((dist < t) & ~same)),
        "false_rejects": int(np.sum((dist >= t) & same)),
        "pairs": len(dist),
    }


def plot(path: Path, dist: np.ndarray, same: np.ndarray, thresholds: dict[str, float]) -> None:
    """Histograms of same- and different-person pair distances with the given thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = np.isfinite(dist)
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    bins = np.linspace(0, max(0.3, float(np.max(dist[finite], initial=0.3))), 90)
    ax.hist(dist[finite & same], bins=bins, alpha=0.6, label="same person")
    ax.hist(dist[finite & ~same], bins=bins, alpha=0.6, label="different people")
    for (name, t), style in zip(thresholds.items(), ["-", "--", ":"], strict=False):
        ax.axvline(t, color="k", linestyle=style, linewidth=1, label=f"{name} {t:.3f}")
    ax.set_xlabel("cosine distance")
    ax.set_ylabel("pairs")
    ax.set_title(f"LFW pairs.txt ({len(dist)} pairs, {int(np.sum(~finite))} with a photo without a face)",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None, pool: ModelPool | None = None) -> dict:
    """Run the report (``argv`` as on the command line); ``pool``: an open model pool to use
    instead of starting one (its spec then replaces ``--runtime`` and ``--workers``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--runtime", default="onnx", choices=["dlib", "onnx"])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "lfw_pairs.json")
    ap.add_argument("--cache", nargs="?", type=Path, const=True, default=None,
                    help="reuse (and complete) the central faces cached by bench.bench_openset "
                         "(default file: bench/results/lfw_faces_<runtime>.npz) instead of "
                         "embedding every photo afresh; 'seconds' then counts only new photos")
    ap.add_argument("--pairs-per-fold", type=int, default=None,
                    help="only the first N same- and N different-person pairs of each fold (quick runs)")
    ap.add_argument("--plot", default=str(REPO / "docs" / "lfw_pairs.png"),
                    help="distance histograms with the thresholds (PNG); '' for none")
    args = ap.parse_args(argv)

    root = faces_dir()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pairs = subsample(read_pairs(root), args.pairs_per_fold)
    photos = [p for _, a, b, _ in pairs for p in (a, b)]
    if args.cache is not None:
        cache = faces_cache(args.runtime) if args.cache is True else args.cache
        table, _, elapsed = cached_faces(root, photos, cache, runtime=args.runtime, workers=args.workers,
                                         pool=pool)
        emb = {root / p: (e if ok else None) for p, e, ok in zip(table.paths, table.embeddings, table.found,
                                                                    strict=True)}
    else:
        start = time.time()
        with (contextlib.nullcontext(pool) if pool is not None
              else ModelPool(ModelSpec(runtime=args.runtime), workers=args.workers)) as used:
            emb = embed_photos(used, photos)
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
    photos_1_5 = sorted({p for f, a, b, _ in pairs if f <= 5 for p in (a, b) if emb[p] is not None})
    matrix = np.stack([emb[p] for p in photos_1_5])
    ident = np.array([p.parent.name for p in photos_1_5])
    all_dist = 1.0 - matrix @ matrix.T
    upper = np.triu(np.ones(all_dist.shape, dtype=bool), 1)
    same_id = ident[:, None] == ident[None, :]
    impostor = np.sort(all_dist[upper & ~same_id])
    genuine = all_dist[upper & same_id]
    t_rule = round(float(np.floor(impostor[int(FAR_TARGET * len(impostor))] * 1000) / 1000), 3)
    acc_calib = accuracy(dist[calib], same[calib], t_rule)
    acc_heldout = accuracy(dist[~calib], same[~calib], t_rule)
    np.savez(args.out.with_name("lfw_embeddings.npz"), matrix=np.stack(
        [e if e is not None else np.full(128, np.nan, np.float32) for e in emb.values()]),
        paths=np.array([str(p.relative_to(root)) for p in emb]))

    fold_acc, fold_thresholds = ten_fold(dist, same, fold)
    result = {
        "photos": len(emb),
        "pairs": len(pairs),
        "photos_without_face_count": len(no_face),
        "photos_without_face": no_face,
        "pairs_with_a_photo_without_face": int(np.sum(~np.isfinite(dist))),
        "same_person_pairs_with_a_photo_without_face": int(np.sum(~np.isfinite(dist) & same)),
        "seconds": round(elapsed, 1),
        "default_threshold": t_rule,
        "rule": f"largest threshold with impostor-pair FAR <= {FAR_TARGET} on all folds 1-5 photos",
        "impostor_pairs_folds_1_5": len(impostor),
        "genuine_pairs_folds_1_5": len(genuine),
        "far_at_default": float(np.mean(impostor < t_rule)),
        "frr_at_default": float(np.mean(genuine >= t_rule)),
        "best_pairwise_threshold_folds_1_5": round(t_best, 3),
        "accuracy_folds_1_5_at_best_pairwise": accuracy(dist[calib], same[calib], t_best),
        "accuracy_folds_1_5_at_default": acc_calib,
        "accuracy_folds_6_10_at_default": acc_heldout,
        "accuracy_all_at_default": accuracy(dist, same, t_rule),
        "ten_fold_mean": float(np.mean(fold_acc)),
        "ten_fold_std": float(np.std(fold_acc)),
        "ten_fold": fold_acc,
        "ten_fold_thresholds": fold_thresholds,
        # The threshold facesearch ships (config.DEFAULT_VERIFY_THRESHOLD), no per-fold tuning.
        "shipped_threshold": at_fixed_threshold(dist, same, fold, DEFAULT_VERIFY_THRESHOLD),
        "runtime": pool.spec.runtime if pool is not None else args.runtime,
        "machine": machine(),
    }
    args.out.write_text(json.dumps(result, indent=2))
    np.savez(args.out.with_suffix(".npz"), dist=dist, same=same, fold=fold)
    if args.plot:
        plot(Path(args.plot), dist, same, {"verify default": DEFAULT_VERIFY_THRESHOLD,
                                     "10-fold thresholds (mean)": float(np.mean(fold_thresholds))})
    print(json.dumps({k: v for k, v in result.items() if k != "photos_without_face"}, indent=2))
    print(f"photos without a face: {len(no_face)}")
    return result


if __name__ == "__main__":
    main()
