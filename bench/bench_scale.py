"""Search at scale (issue 5): galleries of 1k to 1M faces over several domains, one domain searched.

The faces are synthetic (bench/synthetic.py: unit vectors clustered like dlib's 128-d embeddings,
4 faces a person, every domain drawn from the same distribution as real tenants' faces would be):
right for speed and for recall of an index against exact search, silent on a real model's accuracy.
Each size is a total number of faces (the domain searched in brackets):

    1k     serbia 1,000                                            [serbia]
    25k    slovenia 25,000 + serbia 1,000 (26,000: the seed's own layout)   [slovenia]
    100k   slovenia 25,000 + serbia 1,000 + 74,000 in 3 other domains       [slovenia]
    1M     slovenia 25,000 + serbia 1,000 + 974,000 in 39 other domains     [slovenia]

Searches compared on the same faces and queries (each query a new sample near a random person of
the searched domain; recall at person level, against exact search over that domain):

- facesearch's pgvector store, through its own ``Gallery.search`` (the product's code path, as the
  HTTP service awaits it) at top_k 10 and at the API's default top_k 5;
- PKL mode: the domain's DeepFace PKL file read once (facesearch's safe reader) into an
  L2-normalized float32 NumPy matrix, then one matrix product + argpartition per query. This is
  how facesearch's PKL mode searches; implemented here in the bench until that mode lands;
- the seed's query as written (``persons`` JOIN, ``WHERE p.domain = %s AND distance < threshold
  ORDER BY distance LIMIT n``) on the seed's schema (one table, one HNSW index over every domain),
  with pgvector's default ef_search 40 (the seed set none), and the same with pgvector 0.8's
  ``hnsw.iterative_scan = strict_order`` (the index walks on until enough rows pass the filter);
- a pandas loop as DeepFace's ``find()`` runs it (serengil/deepface, deepface/modules/recognition.py:
  ``df.iterrows()`` and one cosine distance per row, then threshold and sort), over the searched
  domain's PKL only (DeepFace keeps one PKL per ``db_path``, i.e. per domain): a few queries.

facesearch's variants run interleaved (the queries in 5 chunks, each chunk by every variant in
turn), so load drift on a shared machine hits each alike, each on its own connection set up as
facesearch's pool sets them up; so do the seed's two rows; PKL mode runs alone.
``--ef-search 24,32`` adds rows at other ef_search values; ``--compare-before`` adds a copy of the
searched domain indexed and searched as facesearch did before the per-domain query (m 16,
ef_construction 64, ef_search 100, one parameterized query planned at every search). NumPy runs on
one BLAS thread (the script sets OPENBLAS_NUM_THREADS=1 unless given): one request, one core.

Each size has its own data directory and embedded server under ``--home`` (kept: a later run with
the same ``--home`` reuses the galleries, and the load + build times recorded when they were built).
Results: a JSON file in bench/results/ and a Markdown table.

Run: ``python -m bench.bench_scale [--quick] [--sizes 1k,25k,100k,1M] [--queries 500]
[--pandas-queries 5] [--ef-search 24,32] [--compare-before] [--home DIR]``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

from facesearch.config import Settings
from facesearch.deepface_pkl import deepface_row, read_pkl, write_atomically
from facesearch.store import BlockingGallery, Gallery, GalleryCache, NewFace, configure, connect, database_url
from facesearch.store import gallery as gallery_module
from facesearch.store.gallery import EF_SEARCH

from .bench_search import timed
from .lfw import cpu_model
from .synthetic import clustered, near

DIM = 128
MODEL = "dlib-resnet-v1"
PER_PERSON = 4
DOMAIN_FACES = 25_000  # the searched domain, and every "other" domain but the last
SMALL_FACES = 1_000  # serbia, like the seed's 933
SEARCHED, SMALL = "slovenia", "serbia"
SIZES = {"1k": 1_000, "25k": 26_000, "100k": 100_000, "1M": 1_000_000}
TOP_K = 10
SEED_EF_SEARCH = 40  # pgvector's default: the seed's code sets none
OPEN_THRESHOLD = 2.0  # cosine distance is <= 2: every candidate passes, so recall is the index's
RESULTS = Path(__file__).resolve().parent / "results"
# --compare-before: a copy of the searched domain indexed and searched as facesearch did before
# the per-domain query (pgvector's default graph, 100 candidates, one parameterized query for all domains).
BEFORE = {"m": 16, "ef_construction": 64, "ef_search": 100}
BEFORE_DOMAIN = f"{SEARCHED}-before"


# -- the galleries -------------------------------------------------------------------------------

def parse_size(text: str) -> int:
    """A size from --sizes: 1k, 25k, 100k, 1M, or a plain number of faces."""
    if text in SIZES:
        return SIZES[text]
    scale = {"k": 1_000, "K": 1_000, "m": 1_000_000, "M": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("kKmM")) * scale)


def size_label(total: int) -> str:
    return next((k for k, v in SIZES.items() if v == total), f"{total:,}")


def layout(total: int) -> dict[str, int]:
    """Faces per domain for a total (see the module docstring); sizes are multiples of 4."""
    total -= total % PER_PERSON
    if total <= SMALL_FACES:
        return {SMALL: total}
    domains = {SEARCHED: min(DOMAIN_FACES, total - SMALL_FACES), SMALL: SMALL_FACES}
    rest, i = total - sum(domains.values()), 0
    while rest > 0:
        i += 1
        domains[f"other{i:02d}"] = min(DOMAIN_FACES, rest)
        rest -= domains[f"other{i:02d}"]
    return domains


def searched(domains: dict[str, int]) -> str:
    return SEARCHED if SEARCHED in domains else SMALL


def shared_mean() -> np.ndarray:
    """The centre of every domain's cone: different tenants' faces look alike, as real ones do."""
    mean = np.random.default_rng(0).normal(size=DIM)
    return mean / np.linalg.norm(mean)


def domain_faces(name: str, faces: int) -> tuple[np.ndarray, np.ndarray]:
    """(centres, faces[people, PER_PERSON, DIM]) of a domain: the same for the same name and size,
    in every run, so a kept gallery and the freshly drawn truth agree (the "before" copy of the
    searched domain has its faces)."""
    name = SEARCHED if name == BEFORE_DOMAIN else name
    rng = np.random.default_rng([zlib.crc32(name.encode()), faces])
    return clustered(rng, faces // PER_PERSON, PER_PERSON, mean=shared_mean())


def photo_sha(name: str, person: int, face: int) -> bytes:
    return hashlib.sha256(f"{name}/{person}/{face}".encode()).digest()


class State:
    """What a --home holds across runs: each facesearch domain's size and build time, and which
    gallery the seed's tables hold."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        self.data.setdefault("domains", {})

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1))


def load_facesearch(gallery: BlockingGallery, domains: dict[str, int], state: State) -> None:
    """Make facesearch's gallery hold exactly these domains, building only what is missing, each
    through Gallery.add_faces (binary COPY, then the domain's HNSW index in one pass, then ANALYZE)."""
    have = {d.name: d.faces for d in gallery.list_domains()}
    for name in have:
        if domains.get(name) != have[name] or state.data["domains"].get(name, {}).get("faces") != have[name]:
            gallery.delete_domain(name)
            state.data["domains"].pop(name, None)
    for name, faces in domains.items():
        if name in state.data["domains"] and have.get(name) == faces:
            continue
        _, vectors = domain_faces(name, faces)
        graph = (gallery_module.HNSW_M, gallery_module.HNSW_EF_CONSTRUCTION)
        if name == BEFORE_DOMAIN:  # built as facesearch built its indexes before
            gallery_module.HNSW_M = BEFORE["m"]
            gallery_module.HNSW_EF_CONSTRUCTION = BEFORE["ef_construction"]
        t = time.perf_counter()
        try:
            dom = gallery.create_domain(name, model=MODEL)
            ids = gallery.ensure_people(dom, [f"p{i}" for i in range(len(vectors))])
            gallery.add_faces(dom, MODEL, [
                NewFace(ids[f"p{i}"], e, (0, 0, 1, 1), 1.0, photo_sha(name, i, j))
                for i, person in enumerate(vectors) for j, e in enumerate(person)])
        finally:
            gallery_module.HNSW_M, gallery_module.HNSW_EF_CONSTRUCTION = graph
        seconds = time.perf_counter() - t
        state.data["domains"][name] = {"faces": faces, "seconds": round(seconds, 2)}
        state.save()
        print(f"  facesearch: {name} ({faces:,} faces) loaded and indexed in {seconds:.1f} s", flush=True)


def load_seed(conn: psycopg.Connection, domains: dict[str, int], state: State) -> dict[str, float]:
    """The seed's schema (persons with a domain column, face_embeddings with one HNSW index over
    all of them, pgvector's default build parameters) holding these domains; rebuilt if it holds
    anything else."""
    key = sorted(domains.items())
    if state.data.get("seed", {}).get("domains") == [list(kv) for kv in key]:
        return state.data["seed"]["seconds"]
    conn.execute("DROP TABLE IF EXISTS face_embeddings, persons")
    conn.execute("CREATE TABLE persons (id bigserial PRIMARY KEY, name text, domain text)")
    conn.execute(f"CREATE TABLE face_embeddings (id bigserial PRIMARY KEY,"
                 f" person_id bigint REFERENCES persons (id), embedding vector({DIM}))")
    t = time.perf_counter()
    for name, faces in domains.items():
        _, vectors = domain_faces(name, faces)
        ids = dict(conn.execute(
            "INSERT INTO persons (name, domain) SELECT 'p' || (g - 1), %s FROM generate_series(1, %s) g"
            " RETURNING name, id", (name, len(vectors))).fetchall())
        copy = "COPY face_embeddings (person_id, embedding) FROM STDIN (FORMAT BINARY)"
        with conn.cursor().copy(copy) as cp:
            cp.set_types(["bigint", "vector"])
            for i, person in enumerate(vectors):
                for e in person:
                    cp.write_row((ids[f"p{i}"], e))
    load = time.perf_counter() - t
    t = time.perf_counter()
    # Memory enough for a 1M-face graph (pgvector slows down a lot once it no longer fits).
    conn.execute("SET maintenance_work_mem = '2GB'")
    conn.execute("CREATE INDEX ON face_embeddings USING hnsw (embedding vector_cosine_ops)")
    conn.execute("CREATE INDEX ON persons (domain)")
    conn.execute("ANALYZE persons, face_embeddings")
    index = time.perf_counter() - t
    seconds = {"load": round(load, 2), "index": round(index, 2)}
    state.data["seed"] = {"domains": [list(kv) for kv in key], "seconds": seconds}
    state.save()
    print(f"  seed schema: {sum(domains.values()):,} faces loaded in {load:.1f} s, indexed in {index:.1f} s",
          flush=True)
    return seconds


def write_domain_pkl(path: Path, name: str, faces: int) -> None:
    """The domain as DeepFace's generation-3 PKL (db_path/<person>/<photo>, raw lists of floats)."""
    if path.exists():
        return
    _, vectors = domain_faces(name, faces)
    rows = [deepface_row(f"/srv/{name}/p{i}/{j}.jpg", photo_sha(name, i, j).hex(), e, (0, 0, 1, 1))
            for i, person in enumerate(vectors) for j, e in enumerate(person)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, rows)


# -- measuring -----------------------------------------------------------------------------------

def people_order(order: Iterable[int], person_of: np.ndarray, k: int = TOP_K) -> list[int]:
    """The first k distinct people of faces given best first."""
    seen: dict[int, None] = {}
    for j in order:
        seen.setdefault(int(person_of[j]), None)
        if len(seen) == k:
            break
    return list(seen)


def exact_people(matrix: np.ndarray, person_of: np.ndarray, queries: np.ndarray) -> list[list[int]]:
    """The truth: people of the exact nearest faces (float64, whole domain), best first."""
    scores = queries.astype(np.float64) @ matrix.astype(np.float64).T
    top = np.argpartition(-scores, 200, axis=1)[:, :200] if scores.shape[1] > 200 else \
        np.tile(np.arange(scores.shape[1]), (len(queries), 1))
    return [people_order(t[np.argsort(-s[t])], person_of) for s, t in zip(scores, top, strict=True)]


def recall(found: list[list[int]], truth: list[list[int]], k: int) -> float:
    if k == 1:
        return float(np.mean([f[:1] == t[:1] for f, t in zip(found, truth, strict=True)]))
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth, strict=True)]))


async def _connection(url: str, ef_search: int) -> psycopg.AsyncConnection[Any]:
    """A connection as facesearch's pool makes them (store.configure), at this ef_search."""
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await configure(conn)
    if ef_search != EF_SEARCH:
        await conn.execute(f"SET hnsw.ef_search = {int(ef_search)}")
    return conn


async def _plans(conn: psycopg.AsyncConnection[Any]) -> list[tuple[int, int]]:
    """(generic, custom) plan counts of the connection's prepared search statements."""
    cur = await conn.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                             " WHERE statement LIKE '%%WITH nearest AS%%'")
    return [tuple(r) for r in await cur.fetchall()]


async def interleaved(fns: dict[str, Callable[[np.ndarray], Any]], queries: np.ndarray, warmup: int,
                      rounds: int = 5) -> dict[str, tuple[list[list[int]], np.ndarray]]:
    """Per search, its answers and times for every query, awaited inside the event loop as the HTTP
    service awaits them; the queries in ``rounds`` chunks, each chunk run by every search in turn."""
    for fn in fns.values():
        for q in queries[:warmup]:
            await fn(q)
    out: dict[str, tuple[list[list[int]], list[float]]] = {label: ([], []) for label in fns}
    for chunk in np.array_split(np.arange(len(queries)), rounds):
        for label, fn in fns.items():
            found, ms = out[label]
            for i in chunk:
                t = time.perf_counter()
                found.append(await fn(queries[i]))
                ms.append((time.perf_counter() - t) * 1e3)
    return {label: (found, np.array(ms)) for label, (found, ms) in out.items()}


def row(label: str, found: list[list[int]], ms: np.ndarray, truth: list[list[int]], *, k: int = TOP_K,
        build: str = "", memory: str = "") -> dict[str, Any]:
    return {"search": label, "queries": len(ms), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "recall_at_1": recall(found, truth, 1),
            "recall_at_10": recall(found, truth, 10) if k >= 10 else None, "build": build,
            "memory": memory}


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB" if n >= 2**20 else f"{n / 2**20:.1f} MB"


def explain_stats(conn: psycopg.Connection, query: str, params: list[Any]) -> dict[str, float]:
    """Median planning and execution time (server side) and buffers of a query's runs."""
    plan, execute, buffers = [], [], []
    for p in params:
        out = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query, p).fetchone()[0][0]
        plan.append(out["Planning Time"])
        execute.append(out["Execution Time"])
        buffers.append(out["Plan"].get("Shared Hit Blocks", 0) + out["Plan"].get("Shared Read Blocks", 0))
    return {"planning_ms": float(np.median(plan)), "execution_ms": float(np.median(execute)),
            "buffers": float(np.median(buffers))}


# -- one size ------------------------------------------------------------------------------------

def run_size(total: int, args: argparse.Namespace, gallery: BlockingGallery, seed: psycopg.Connection,
             state: State, home: Path) -> dict[str, Any]:
    gallery_layout = layout(total)
    domains = dict(gallery_layout)
    if args.compare_before and SEARCHED in domains:
        domains[BEFORE_DOMAIN] = domains[SEARCHED]
    name = searched(domains)
    print(f"\n{size_label(total)}: {sum(gallery_layout.values()):,} faces in {len(gallery_layout)} domains, "
          f"searching {name} ({domains[name]:,})", flush=True)
    load_facesearch(gallery, domains, state)
    seed_seconds = load_seed(seed, gallery_layout, state)
    built = sum(state.data["domains"][d]["seconds"] for d in gallery_layout)

    centres, faces = domain_faces(name, domains[name])
    matrix = faces.reshape(-1, DIM)
    person_of = np.repeat(np.arange(len(faces)), PER_PERSON)
    rng = np.random.default_rng([1, total])
    queries = near(rng, centres[rng.integers(0, len(centres), args.queries)])
    truth = exact_people(matrix, person_of, queries)
    warmup = min(30, len(queries))
    rows = []

    n = max(TOP_K * 4, 20)

    # PKL mode: the domain's PKL read once into a normalized float32 matrix.
    pkl = home / "pkl" / name / f"faces-{domains[name]}.pkl"
    write_domain_pkl(pkl, name, domains[name])
    gc.collect()
    tracemalloc.start()
    t = time.perf_counter()
    contents = read_pkl(pkl)
    pkl_matrix = np.stack([f.embedding for f in contents.faces]).astype(np.float32)
    pkl_matrix /= np.linalg.norm(pkl_matrix, axis=1, keepdims=True)
    pkl_person = np.array([int(f.person[1:]) for f in contents.faces])
    pkl_load = time.perf_counter() - t
    del contents
    gc.collect()
    pkl_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    n_pkl = min(n, len(pkl_matrix))

    async def pkl_search(q: np.ndarray) -> list[int]:
        distance = 1.0 - pkl_matrix @ q
        best = np.argpartition(distance, n_pkl - 1)[:n_pkl]
        return people_order(best[np.argsort(distance[best])], pkl_person)

    # The seed's query as written, on its schema, from a plain connection as the seed's code had
    # (pgvector's default ef_search 40); and the same with pgvector 0.8's iterative scans, where the
    # index keeps walking until enough rows pass the domain filter (strict_order: rows stay in
    # distance order, as the query asks).
    seed_sql = ("SELECT p.name, (f.embedding <=> %s::vector) as distance FROM face_embeddings f"
                " JOIN persons p ON f.person_id = p.id WHERE p.domain = %s"
                " AND (f.embedding <=> %s::vector) < %s ORDER BY distance LIMIT %s")
    seed_iterative = psycopg.connect(gallery_url(home), autocommit=True)
    register_vector(seed_iterative)
    seed_iterative.execute("SET hnsw.iterative_scan = strict_order")
    seed.execute(f"SET hnsw.ef_search = {SEED_EF_SEARCH}")

    def seed_query(conn: psycopg.Connection) -> Callable[[np.ndarray], Any]:
        async def search(q: np.ndarray) -> list[int]:
            found = conn.execute(seed_sql, (q, name, q, OPEN_THRESHOLD, n)).fetchall()
            return people_order(range(len(found)), np.array([int(r[0][1:]) for r in found]))
        return search

    # facesearch's store, through Gallery.search, each variant on its own connection set up as
    # facesearch's pool sets them up.
    dom = gallery.get_domain(name)
    sizes = gallery.run(_sizes(gallery, dom.id))
    url = gallery_url(home)
    variants: dict[str, tuple[int, Callable[[np.ndarray], Any]]] = {}
    conns: list[psycopg.AsyncConnection[Any]] = []

    conn_labels: list[str] = []  # what each of conns runs

    def product(k: int, ef: int = EF_SEARCH) -> Callable[[np.ndarray], Any]:
        conns.append(gallery.run(_connection(url, ef)))
        conn_labels.append(f"facesearch, top_k {k}, ef_search {ef}")
        ours = Gallery(conns[-1], GalleryCache())

        async def search(q: np.ndarray) -> list[int]:
            found = await ours.search(dom, MODEL, [q], k=k, threshold=OPEN_THRESHOLD)
            return [int(m.person[1:]) for m in found[0]]
        return search

    for k in (TOP_K, 5):
        variants[f"facesearch pgvector (Gallery.search, top_k {k}, ef_search {EF_SEARCH})"] = (k, product(k))
    for ef in args.ef_search:  # the candidates curve
        variants[f"facesearch pgvector, top_k {TOP_K}, ef_search {ef}"] = (TOP_K, product(TOP_K, ef))
    if BEFORE_DOMAIN in domains:
        old = gallery.get_domain(BEFORE_DOMAIN)
        conns.append(gallery.run(_connection(url, BEFORE["ef_search"])))
        conn_labels.append("facesearch before, top_k 10 and 5")
        old_gallery = Gallery(conns[-1], GalleryCache())
        # The search as it was: one parameterized text for every domain, planned at each run.
        old_query = gallery.run(old_gallery.search_sql(MODEL)).as_bytes(conns[-1])

        def previous(k: int) -> Callable[[np.ndarray], Any]:
            async def search(q: np.ndarray) -> list[int]:
                params = {"q": q, "domain": old.id, "n": max(k * 4, 20), "threshold": OPEN_THRESHOLD,
                          "k": k}
                return [int(m.person[1:]) for m in (await old_gallery._search(old_query, [params]))[0]]
            return search

        for k in (TOP_K, 5):
            variants[f"facesearch before (m {BEFORE['m']}, ef_construction {BEFORE['ef_construction']}, "
                     f"ef_search {BEFORE['ef_search']}, parameterized query), top_k {k}"] = (k, previous(k))
    pkl_label = "PKL mode (bench's implementation: float32 matrix in RAM, matmul + argpartition)"
    seed_label = f"seed's query as written (JOIN persons, WHERE p.domain), ef_search {SEED_EF_SEARCH}"
    variants[pkl_label] = (TOP_K, pkl_search)
    variants[seed_label] = (TOP_K, seed_query(seed))
    variants[f"seed's query, ef_search {SEED_EF_SEARCH} + hnsw.iterative_scan = strict_order "
             "(pgvector >= 0.8)"] = (TOP_K, seed_query(seed_iterative))
    conns.append(gallery.run(_connection(url, EF_SEARCH)))
    conn_labels.append("SELECT 1")
    floor_conn = conns[-1]

    async def select_one(q: np.ndarray) -> list[int]:
        await floor_conn.execute("SELECT 1")
        return []

    # Interleaved within each family: facesearch's variants (and a bare round trip), then PKL mode
    # alone, as its own process would run it (between PostgreSQL's searches, the CPU caches lose
    # its 12 MB matrix), then the seed's two.
    families = [[label for label in variants if label.startswith("facesearch")] + ["SELECT 1"],
                [pkl_label], [label for label in variants if label.startswith("seed")]]
    fns = {**{label: fn for label, (_, fn) in variants.items()}, "SELECT 1": select_one}
    try:
        found_ms = {}
        for family in families:
            found_ms.update(gallery.run(interleaved({label: fns[label] for label in family}, queries,
                                                    warmup)))
        # How PostgreSQL ran each connection's search statement: prepared by psycopg after a few
        # runs, then planned once (generic) or at every run (custom).
        plans = [gallery.run(_plans(conn)) for conn in conns]
    finally:
        for conn in conns:
            gallery.run(conn.close())
        seed_iterative.close()
    round_trip = float(np.median(found_ms["SELECT 1"][1]))
    seed_sizes = seed.execute(
        "SELECT pg_total_relation_size('face_embeddings') + pg_total_relation_size('persons'),"
        " (SELECT sum(pg_relation_size(indexrelid)) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        "  JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid = 'face_embeddings'::regclass"
        "  AND a.amname = 'hnsw')").fetchone()
    extra = {
        next(iter(variants)): (f"{built:.1f} s", f"{name}: heap {mb(sizes['heap'])} + HNSW "
                                                  f"{mb(sizes['index'])}; all domains {mb(sizes['all'])}"),
        pkl_label: (f"{pkl_load:.1f} s (read PKL)", f"matrix {mb(pkl_matrix.nbytes)} (peak {mb(pkl_peak)} "
                                                    f"while reading); file {mb(pkl.stat().st_size)}"),
        seed_label: (f"{seed_seconds['load'] + seed_seconds['index']:.1f} s "
                     f"(index {seed_seconds['index']:.1f} s)",
                     f"all domains {mb(seed_sizes[0])}, of which HNSW {mb(seed_sizes[1])}"),
    }
    for label, (k, _) in variants.items():
        found, ms = found_ms[label]
        build, memory = extra.get(label, ("", ""))
        rows.append(row(label, found, ms, truth, k=k, build=build, memory=memory))

    stats_conn = connect(url)  # as facesearch sets up its connections
    query = gallery.run(gallery.gallery.search_sql(MODEL, dom, TOP_K)).as_string(stats_conn)
    fs_stats = explain_stats(stats_conn, query, [{"q": q, "threshold": OPEN_THRESHOLD} for q in queries[:50]])
    before_stats = None
    if BEFORE_DOMAIN in domains:
        stats_conn.execute(f"SET hnsw.ef_search = {BEFORE['ef_search']}")
        before_stats = explain_stats(stats_conn, old_query.decode(), [
            {"q": q, "domain": old.id, "n": n, "threshold": OPEN_THRESHOLD, "k": TOP_K}
            for q in queries[:50]])
    stats_conn.close()
    seed_params = (queries[0], name, queries[0], OPEN_THRESHOLD, n)
    seed_plan = [re.sub(r"'\[[^]]*\]'::vector", "<query>", r[0])
                 for r in seed.execute("EXPLAIN " + seed_sql, seed_params)]
    seed_stats = explain_stats(seed, seed_sql, [(q, name, q, OPEN_THRESHOLD, n) for q in queries[:20]])

    # The pandas loop, DeepFace find()-style, over the domain's PKL.
    if args.pandas_queries:
        import pandas as pd

        t = time.perf_counter()
        with pkl.open("rb") as f:
            df = pd.DataFrame(pickle.load(f))
        df_load = time.perf_counter() - t
        df_memory = df.memory_usage(deep=True).sum()

        def deepface_find(q: np.ndarray) -> list[int]:
            target = q.astype(np.float64).tolist()  # DeepFace's represent() gives a list
            result = df.copy()
            distances = []
            for _, instance in df.iterrows():
                source = instance["embedding"]
                if len(list(target)) != len(list(source)):
                    raise ValueError("dimensions differ")
                a, b = np.asarray(source), np.asarray(target)
                distances.append(1 - np.dot(a, b) / (np.sqrt(np.sum(a * a)) * np.sqrt(np.sum(b * b))))
            result["distance"] = distances
            result = result.drop(columns=["embedding"])
            result = result[result["distance"] <= OPEN_THRESHOLD].sort_values(by=["distance"])
            persons = np.array([int(i.split("/")[-2][1:]) for i in result["identity"].iloc[:n]])
            return people_order(range(len(persons)), persons)

        few = queries[:args.pandas_queries]
        found, ms = timed(deepface_find, few, 1)
        rows.append(row(f"pandas loop, DeepFace find()-style ({len(few)} queries; {name}'s PKL only)",
                        found, ms, truth[:len(few)], build=f"{df_load:.1f} s (unpickle + DataFrame)",
                        memory=f"DataFrame {mb(df_memory)}"))
        del df

    return {"size": size_label(total), "total_faces": sum(gallery_layout.values()), "domains": gallery_layout,
            "before_domain": domains.get(BEFORE_DOMAIN), "before_build_s":
            state.data["domains"].get(BEFORE_DOMAIN, {}).get("seconds") if BEFORE_DOMAIN in domains else None,
            "searched": name, "searched_faces": domains[name], "rows": rows,
            "facesearch_relations": sizes, "facesearch_explain": fs_stats, "before_explain": before_stats,
            "facesearch_plans": dict(zip(conn_labels, plans, strict=True)), "round_trip_ms": round_trip,
            "seed_explain": seed_stats, "seed_plan": seed_plan, "seed_build_s": seed_seconds,
            "facesearch_build_s": built}


async def _sizes(gallery: BlockingGallery, domain_id: int) -> dict[str, int]:
    """Bytes on disk: the searched partition's heap (+ TOAST), its HNSW index, every partition."""
    cur = await gallery.conn.execute(
        "SELECT pg_table_size(%(p)s::regclass), pg_indexes_size(%(p)s::regclass),"
        " (SELECT coalesce(sum(pg_relation_size(i.indexrelid)), 0) FROM pg_index i"
        "  JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam"
        "  WHERE i.indrelid = %(p)s::regclass AND a.amname = 'hnsw'),"
        " (SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits"
        "  WHERE inhparent = 'faces'::regclass)", {"p": f"faces_d{int(domain_id)}"})
    heap, indexes, hnsw, total = await cur.fetchone()
    return {"heap": heap, "indexes": indexes, "index": hnsw, "all": int(total)}


_URL: dict[Path, str] = {}


def gallery_url(home: Path) -> str:
    if home not in _URL:
        _URL[home] = database_url(Settings(home=home))
    return _URL[home]


def print_table(results: list[dict[str, Any]]) -> None:
    print("\n| gallery (searched domain) | search | p50 ms | p99 ms | recall@1 | recall@10 | load + build |"
          " memory |")
    print("|---|---|---:|---:|---:|---:|---|---|")
    for res in results:
        where = f"{res['size']}: {res['total_faces']:,} in {len(res['domains'])} ({res['searched']} " \
                f"{res['searched_faces']:,})"
        for r in res["rows"]:
            r10 = "—" if r["recall_at_10"] is None else f"{r['recall_at_10']:.3f}"
            print(f"| {where} | {r['search']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                  f"{r['recall_at_1']:.3f} | {r10} | {r['build']} | {r['memory']} |")
            where = ""
    for res in results:
        fs, sd = res["facesearch_explain"], res["seed_explain"]
        print(f"\n{res['size']}: SELECT 1 round trip p50 {res['round_trip_ms']:.3f} ms (async psycopg, as"
              " Gallery runs)")
        print(f"{res['size']}: facesearch query server-side (median of 50, EXPLAIN ANALYZE): planning "
              f"{fs['planning_ms']:.2f} ms, execution {fs['execution_ms']:.2f} ms, {fs['buffers']:.0f} "
              f"buffers; seed's query: planning {sd['planning_ms']:.2f} ms, execution "
              f"{sd['execution_ms']:.2f} ms, {sd['buffers']:.0f} buffers.")
        if res.get("before_explain"):
            bf = res["before_explain"]
            print(f"  facesearch before: planning {bf['planning_ms']:.2f} ms, execution "
                  f"{bf['execution_ms']:.2f} ms, {bf['buffers']:.0f} buffers")
        for label, counts in res["facesearch_plans"].items():
            print(f"  {label}: (generic, custom) plans of its prepared statements {counts}")
        print("Seed's plan:")
        print("    " + "\n    ".join(res["seed_plan"]))


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1k,25k,100k,1M",
                    help="Comma-separated totals: 1k, 25k (26,000: slovenia + serbia), 100k, 1M, or numbers.")
    ap.add_argument("--quick", action="store_true", help="Sizes 1k and 25k, 200 queries, 2 pandas queries.")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--compare-before", action="store_true",
                    help=f"Add {BEFORE_DOMAIN!r}, a copy of the searched domain indexed and searched as "
                         "before the per-domain query, and its rows (not in the totals).")
    ap.add_argument("--pandas-queries", type=int, default=5, help="0 skips the pandas loop.")
    ap.add_argument("--ef-search", default="",
                    help="Extra facesearch rows at these ef_search values, e.g. 40,60.")
    ap.add_argument("--home", type=Path, default=None,
                    help="Data directory (one subdirectory per size), kept with its galleries for the "
                         "next run; default: a new one.")
    args = ap.parse_args()
    if os.environ.get("OPENBLAS_NUM_THREADS") is None:
        # One BLAS thread, as one request's search should have: on 2 shared cores OpenBLAS's own
        # threads made PKL mode's 25,000-row product ~5x slower (p50 10 ms against 1.8 ms).
        os.execve(sys.executable, [sys.executable, "-m", "bench.bench_scale", *sys.argv[1:]],
                  {**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    if args.quick:
        args.sizes, args.queries, args.pandas_queries = "1k,25k", 200, 2
    args.ef_search = [int(x) for x in args.ef_search.split(",") if x]
    totals = sorted({parse_size(s) for s in args.sizes.split(",")})
    root = args.home or Path(tempfile.mkdtemp(prefix="facesearch-scale-"))
    started = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg": load_average()}
    results, server = [], {}
    for total in totals:
        # Each size in its own data directory (and embedded server): its totals are exactly its
        # own, and a later run with the same --home reuses every size's galleries.
        home = root / size_label(total)
        home.mkdir(parents=True, exist_ok=True)
        # Start the embedded server once in another process: its memory settings (shared_buffers
        # sized for vectors) are written at first start and apply from the next one, ours.
        start = ("import sys, pathlib, facesearch.config as c, facesearch.store as s;"
                 " s.database_url(c.Settings(home=pathlib.Path(sys.argv[1])))")
        subprocess.run([sys.executable, "-c", start, str(home)], check=True)
        gallery = BlockingGallery(gallery_url(home))
        seed = psycopg.connect(gallery_url(home), autocommit=True)
        register_vector(seed)
        try:
            server = dict(seed.execute(
                "SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name IN"
                " ('shared_buffers', 'work_mem', 'maintenance_work_mem', 'effective_cache_size',"
                " 'server_version', 'max_parallel_maintenance_workers')").fetchall())
            server["pgvector"] = seed.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
            results.append(run_size(total, args, gallery, seed, State(home / "bench_scale.json"), home))
        finally:
            gallery.close()
            seed.close()
    command = "python -m bench.bench_scale " + " ".join(sys.argv[1:])
    meta = {"command": command, "machine": f"{cpu_model()}, {os.cpu_count()} cores",
            "started": started, "finished": {"date": time.strftime("%Y-%m-%d %H:%M:%S"),
                                             "loadavg": load_average()},
            "server": server, "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
            "ef_search": EF_SEARCH, "queries": args.queries, "top_k": TOP_K}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench_scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=float))
    print(f"\ncommand: {command}\nmachine: {meta['machine']}; {started['date']} to "
          f"{meta['finished']['date']}; load average {started['loadavg']} at start, "
          f"{meta['finished']['loadavg']} at end")
    print(f"server: {server}")
    print_table(results)
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
