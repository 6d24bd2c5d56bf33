"""Unknown faces in the store: what keeping one costs a recognize, and what listing and
re-clustering a domain's unassigned faces take, at several counts (up to the default retention).

A domain on a fresh embedded PostgreSQL is filled with the central faces of LFW photos (bench_models'
cached SFace table, people in name order) through ``store.unknown.add_unknown`` itself (each face
joins its nearest cluster or starts one, as a recognize does). At each count: the median time to
keep one more face (the incremental join: one aggregate query over the domain's clusters, the
insert, the retention check), ``GET .../clusters`` (list_clusters) and a full re-cluster.

Run: ``python -m bench.bench_unknown [--sizes 1000,5000]``. Writes ``bench/results/unknown.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from facesearch.config import Settings
from facesearch.models import SFACE_MODEL
from facesearch.store import BlockingGallery, database_url, unknown

from .bench_models import _pools, faces_for
from .lfw import REPO, faces_dir, machine, people_photos

PROBES = 30  # single faces kept at each size, timed one by one


def face(emb: np.ndarray, i: int) -> unknown.UnknownFace:
    return unknown.UnknownFace(emb, (0, 0, 100, 100), 0.9, hashlib.sha256(str(i).encode()).digest(),
                               b"\xff" * 3500)  # a thumbnail's size


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,5000")
    ap.add_argument("--home", type=Path, default=None)
    ap.add_argument("--first", type=int, default=None, help="only the first N LFW people (quick runs)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "unknown.json")
    args = ap.parse_args(argv)
    root = faces_dir()
    paths = [p for ps in people_photos(root, args.first).values() for p in ps]
    try:
        table = faces_for(SFACE_MODEL, root, paths, None)
    finally:
        for pool in _pools.values():
            pool.close()
    emb = table.embeddings[table.found]
    home = args.home or Path(tempfile.mkdtemp(prefix="facesearch-unknown-"))
    report: dict = {"date": date.today().isoformat(), "machine": machine(), "model": SFACE_MODEL,
                    "sizes": []}
    with BlockingGallery(database_url(Settings(home=home))) as g:
        dom = g.create_domain("bench-unknown", model=SFACE_MODEL, exist_ok=True)
        g.run(unknown.set_keep_unknown(g.gallery, dom.name, True))
        dom = g.get_domain(dom.name)
        kept = 0
        for size in (int(s) for s in args.sizes.split(",")):
            start = time.perf_counter()
            batch = 200
            while kept < size - PROBES:
                n = min(batch, size - PROBES - kept)
                g.run(unknown.add_unknown(g.gallery, dom, [face(emb[kept + i], kept + i) for i in range(n)],
                                          max_faces=10**6, max_days=365))
                kept += n
            fill = time.perf_counter() - start
            times = []
            for _ in range(PROBES):
                t0 = time.perf_counter()
                g.run(unknown.add_unknown(g.gallery, dom, [face(emb[kept], kept)], max_faces=10**6,
                                          max_days=365))
                times.append((time.perf_counter() - t0) * 1e3)
                kept += 1
            t0 = time.perf_counter()
            clusters = g.run(unknown.list_clusters(g.gallery, dom, limit=100))
            listing = (time.perf_counter() - t0) * 1e3
            t0 = time.perf_counter()
            k = g.run(unknown.recluster(g.gallery, dom))
            recluster = time.perf_counter() - t0
            entry = {"unassigned_faces": kept, "fill_seconds": round(fill, 1),
                     "keep_one_ms_median": round(statistics.median(times), 2),
                     "keep_one_ms_p90": round(sorted(times)[int(0.9 * len(times))], 2),
                     "list_100_clusters_ms": round(listing, 1), "listed": len(clusters),
                     "recluster_seconds": round(recluster, 2), "clusters": k}
            report["sizes"].append(entry)
            print(json.dumps(entry), flush=True)
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
