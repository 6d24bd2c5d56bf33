"""The gallery audit on LFW with the default model: does it find planted mistakes?

300 people with at least 4 photos (drawn at random, seed 0) make a gallery of the central face of
each of their photos (bench_models' cached table, else embedded now). Then, on purpose:

- 2 % of the faces are *mislabeled*: filed under another of the 300 people, drawn at random;
- 5 % of the people are *split*: half of their photos (the even ones) under a second name.

The audit (facesearch.audit, exactly as ``GET /v1/domains/{domain}/audit`` runs it) then lists
outliers and duplicate pairs. Reported: how many of the planted ones are in its top list (the
first as many as were planted, and twice as many) and in its whole list, and how many findings
of the whole list were not planted ("false alarms": some are LFW's own mistakes or look-alikes).

Run: ``python -m bench.bench_audit [--people 300] [--seed 0]``. Writes ``bench/results/audit.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

import numpy as np

from facesearch import audit, clustering
from facesearch.models import SFACE_MODEL, default_thresholds

from .bench_models import _pools, faces_for
from .lfw import REPO, faces_dir, machine, people_photos


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=SFACE_MODEL)
    ap.add_argument("--people", type=int, default=300)
    ap.add_argument("--mislabel", type=float, default=0.02)
    ap.add_argument("--split", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--first", type=int, default=None, help="only the first N LFW people (quick runs)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "audit.json")
    args = ap.parse_args(argv)
    root = faces_dir()
    everyone = people_photos(root, args.first)
    paths = [p for ps in everyone.values() for p in ps]
    try:
        table = faces_for(args.model, root, paths, args.workers)
    finally:
        for pool in _pools.values():
            pool.close()
    rng = np.random.default_rng(args.seed)
    row = table.row()
    # People with >= 4 photos that have a face.
    usable = {n: [row[str(p.relative_to(root))] for p in ps] for n, ps in everyone.items()}
    usable = {n: [r for r in rows if table.found[r]] for n, rows in usable.items()}
    usable = {n: rows for n, rows in usable.items() if len(rows) >= 4}
    chosen = sorted(rng.choice(sorted(usable), size=args.people, replace=False))
    rows = np.array([r for n in chosen for r in usable[n]])
    person = np.array([i for i, n in enumerate(chosen) for _ in usable[n]])
    emb = table.embeddings[rows]
    face_ids = np.arange(len(rows))
    labels = person.copy()

    planted_faces = rng.choice(len(rows), size=round(args.mislabel * len(rows)), replace=False)
    for f in planted_faces:
        labels[f] = rng.choice([p for p in range(args.people) if p != person[f]])
    split_people = rng.choice(args.people, size=round(args.split * args.people), replace=False)
    twins = {}
    for k, p in enumerate(split_people):
        twin = args.people + k
        twins[int(p)] = twin
        mine = np.flatnonzero((person == p) & (labels == p))
        labels[mine[::2]] = twin
    planted_pairs = {frozenset((p, t)) for p, t in twins.items()}

    threshold = default_thresholds(args.model)[0]
    cut = clustering.cut_for(args.model)
    start = time.perf_counter()
    found = audit.audit(face_ids, labels, emb, outlier_cut=cut, duplicate_threshold=threshold,
                        limit=10**6)
    seconds = time.perf_counter() - start

    planted = set(planted_faces.tolist())
    flagged = [o.face_id for o in found.outliers]
    pairs = [frozenset((d.person_a, d.person_b)) for d in found.duplicates]
    same = [frozenset((d.person_a, d.person_b)) for d in found.duplicates if d.distance < cut]

    def hits(found_list: list, wanted: set, n: int | None) -> int:
        return len(set(found_list[:n]) & wanted)

    report = {
        "date": date.today().isoformat(), "machine": machine(), "model": args.model,
        "people": args.people, "faces": len(rows), "outlier_cut": cut, "duplicate_threshold": threshold,
        "seconds": round(seconds, 3),
        "mislabeled": {"planted": len(planted), "in_top_planted": hits(flagged, planted, len(planted)),
                       "in_top_2x": hits(flagged, planted, 2 * len(planted)),
                       "in_whole_list": hits(flagged, planted, None), "whole_list": len(flagged),
                       "false_alarms": len(set(flagged) - planted)},
        "split": {"planted": len(planted_pairs),
                  "in_top_planted": hits(pairs, planted_pairs, len(planted_pairs)),
                  "in_top_2x": hits(pairs, planted_pairs, 2 * len(planted_pairs)),
                  "in_whole_list": hits(pairs, planted_pairs, None), "whole_list": len(pairs),
                  "false_alarms": len(set(pairs) - planted_pairs),
                  # the pairs the audit calls likely the same (average linkage under the cut)
                  "likely_same": len(same), "likely_same_planted": len(set(same) & planted_pairs)},
        "single_face": len(found.single_face),
    }
    print(json.dumps(report, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
