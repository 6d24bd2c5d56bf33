"""Search latency and recall: facesearch's store vs the seed's pgvector query, same data, same run.

Galleries are synthetic unit vectors clustered like dlib embeddings (people ~0.2 apart in cosine
distance, each person's faces ~0.04 apart), spread over domains: the domain searched, a small one
like the seed's serbia, and the rest in other domains. Both schemas live in one embedded
PostgreSQL. Run: ``python -m bench.bench_search [--domain-faces 25000] [--other-faces 74000]``.
bench/bench_scale.py measures the same at 1k to 1M faces, with PKL mode and DeepFace's loop.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from facesearch.config import Settings
from facesearch.store import BlockingGallery, NewFace, database_url
from facesearch.store.gallery import EF_SEARCH

from .lfw import cpu_model
from .synthetic import clustered, near

DIM = 128
MODEL = "dlib-resnet-v1"


def timed(fn, queries, warmup: int = 0) -> tuple[list, np.ndarray]:
    """``fn`` of each query, and each call's time in ms (after ``warmup`` untimed calls)."""
    for q in queries[:warmup]:
        fn(q)
    out, times = [], []
    for q in queries:
        t = time.perf_counter()
        out.append(fn(q))
        times.append((time.perf_counter() - t) * 1e3)
    return out, np.array(times)


async def atimed(fn, queries) -> tuple[list, np.ndarray]:
    """:func:`timed` for a coroutine function, run inside the event loop as the HTTP service
    awaits it (a blocking call per query would add the loop's entry and exit to each)."""
    out, times = [], []
    for q in queries:
        t = time.perf_counter()
        out.append(await fn(q))
        times.append((time.perf_counter() - t) * 1e3)
    return out, np.array(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--domain-faces", type=int, default=25_000)
    ap.add_argument("--small-faces", type=int, default=1_000)
    ap.add_argument("--other-faces", type=int, default=74_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--home", type=Path, default=None)
    args = ap.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="facesearch-bench-"))
    rng = np.random.default_rng(0)
    per = 4
    sizes = {"slovenia": args.domain_faces, "serbia": args.small_faces, "other": args.other_faces}

    url = database_url(Settings(home=home))
    gallery = BlockingGallery(url)  # the async Gallery, as the CLI runs it
    seed = psycopg.connect(url, autocommit=True)
    register_vector(seed)
    # The seed's schema and its HNSW index over all domains' faces.
    seed.execute("DROP TABLE IF EXISTS face_embeddings, persons")
    seed.execute("CREATE TABLE persons (id bigserial PRIMARY KEY, name text, domain text)")
    seed.execute(f"CREATE TABLE face_embeddings (id bigserial PRIMARY KEY, person_id bigint"
                 f" REFERENCES persons(id), embedding vector({DIM}))")

    data = {}
    mean = rng.normal(size=DIM)
    mean /= np.linalg.norm(mean)
    build = {"facesearch": 0.0, "seed": 0.0}
    for name, n in sizes.items():
        # One shared distribution: other tenants' faces look like this one's, as real faces do.
        centres, faces = clustered(rng, max(1, n // per), per, mean=mean)
        data[name] = (centres, faces)
        for d in gallery.list_domains():
            if d.name == name:
                gallery.delete_domain(name)
        t = time.perf_counter()
        dom = gallery.create_domain(name, model=MODEL)
        ids = gallery.ensure_people(dom, [f"p{i}" for i in range(len(faces))])
        gallery.add_faces(dom, MODEL, [
            NewFace(ids[f"p{i}"], e, (0, 0, 1, 1), 1.0, hashlib.sha256(f"{name}{i}/{j}".encode()).digest())
            for i, fs in enumerate(faces) for j, e in enumerate(fs)])
        build["facesearch"] += time.perf_counter() - t
        t = time.perf_counter()
        pids = [r[0] for r in seed.execute(
            "INSERT INTO persons (name, domain) SELECT 'p' || g, %s FROM generate_series(1, %s) g"
            " RETURNING id", (name, len(faces))).fetchall()]
        with seed.cursor().copy("COPY face_embeddings (person_id, embedding) FROM STDIN") as cp:
            for pid, fs in zip(pids, faces, strict=True):
                for e in fs:
                    cp.write_row((pid, e))
        build["seed"] += time.perf_counter() - t
    t = time.perf_counter()
    seed.execute("CREATE INDEX ON face_embeddings USING hnsw (embedding vector_cosine_ops)")
    seed.execute("CREATE INDEX ON persons (domain)")
    build["seed"] += time.perf_counter() - t
    seed.execute("ANALYZE")

    dom = gallery.get_domain("slovenia")
    centres, faces = data["slovenia"]
    picks = rng.choice(len(centres), size=args.queries)
    queries = near(rng, centres[picks])
    flat = faces.reshape(-1, DIM)
    exact = np.argsort(-(queries @ flat.T), axis=1)[:, :10] // per  # person index of top 10

    # facesearch: top-10 people, threshold wide open so recall is measured, not the threshold.
    async def ours(q):
        found = await gallery.gallery.search(dom, MODEL, [q], k=10, threshold=2.0)
        return [int(m.person[1:]) for m in found[0]]

    seed_sql = ("SELECT p.name, (f.embedding <=> %s) AS distance FROM face_embeddings f"
                " JOIN persons p ON f.person_id = p.id WHERE p.domain = %s"
                " AND (f.embedding <=> %s) < %s ORDER BY distance LIMIT %s")

    def seeds(q):
        rows = seed.execute(seed_sql, (q, "slovenia", q, 2.0, 40)).fetchall()
        people = []
        for name, _ in rows:
            if int(name[1:]) - 1 not in people:
                people.append(int(name[1:]) - 1)
        return people[:10]

    def numpy_exact(q):
        return list(np.argsort(-(flat @ q))[:10] // per)

    rows = []
    other_ef = 100 if EF_SEARCH != 100 else 40
    for label, ef, fn in ((f"facesearch, ef_search {EF_SEARCH} (default)", EF_SEARCH, ours),
                          (f"facesearch, ef_search {other_ef}", other_ef, ours),
                          ("seed query (JOIN, domain filter), ef_search 40", 40, seeds),
                          ("NumPy exact, one domain in RAM", None, numpy_exact)):
        if ef is not None:
            gallery.run(gallery.conn.execute(f"SET hnsw.ef_search = {ef}"))
        if inspect.iscoroutinefunction(fn):
            gallery.run(atimed(fn, queries[:20]))
            found, ms = gallery.run(atimed(fn, queries))
        else:
            timed(fn, queries[:20])
            found, ms = timed(fn, queries)
        r1 = np.mean([bool(f) and f[0] == e[0] for f, e in zip(found, exact, strict=True)])
        r10 = np.mean([len(set(f) & set(dict.fromkeys(e))) / len(set(dict.fromkeys(e)))
                       for f, e in zip(found, exact, strict=True)])
        rows.append((label, np.percentile(ms, 50), np.percentile(ms, 99), r1, r10))
    plan = "\n".join(r[0] for r in seed.execute("EXPLAIN " + seed_sql,
                                                (queries[0], "slovenia", queries[0], 2.0, 40)))

    total = sum(sizes.values())
    print(f"command: python -m bench.bench_search --domain-faces {args.domain_faces} "
          f"--small-faces {args.small_faces} --other-faces {args.other_faces} --queries {args.queries}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}")
    print(f"gallery: {total} faces; searched domain: {args.domain_faces} faces\n")
    print("| search | p50 ms | p99 ms | recall@1 | recall@10 (people) |")
    print("|---|---:|---:|---:|---:|")
    for label, p50, p99, r1, r10 in rows:
        print(f"| {label} | {p50:.2f} | {p99:.2f} | {r1:.3f} | {r10:.3f} |")
    print(f"\nload + index build: facesearch {build['facesearch']:.1f} s, seed {build['seed']:.1f} s")
    print(f"\nseed query plan:\n{plan}")
    gallery.close()
    seed.close()


if __name__ == "__main__":
    main()
