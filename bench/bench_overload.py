"""Latency under overload, with and without the bounded queue (FACESEARCH_QUEUE_LIMIT).

Run: ``python -m bench.bench_overload [--rate-factor 1.5] [--seconds 20] [--limits 0,16]``.
For each queue limit, a server runs in a subprocess on a fresh data directory (its own embedded
PostgreSQL) with ``--workers`` model workers. Its capacity is measured first (closed loop, 8 at a
time, LFW portraits); then requests arrive open loop at ``--rate-factor`` times that capacity for
``--seconds`` (each at its scheduled time, whatever the others are doing), as clients that do not
slow down when the server does. Without a bound the queue, and so latency, grows for as long as the
overload lasts; with one, latency stays flat and the excess is answered 503 ``overloaded`` at once.
Meanwhile one request a second from another domain measures what the overload costs the others.
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from .bench_http import start_server
from .lfw import cpu_model, faces_dir

BUSY, QUIET = "overload-busy", "overload-quiet"


def portraits(count: int) -> list[bytes]:
    lfw = faces_dir() / "lfw"
    people = sorted(d for d in lfw.iterdir() if d.is_dir())[::50][:count]
    return [sorted(p.glob("*.jpg"))[0].read_bytes() for p in people]


def post(client: httpx.Client, domain: str, photo: bytes) -> tuple[int, float]:
    started = time.perf_counter()
    r = client.post(f"/v1/domains/{domain}/recognize", files={"photo": ("p.jpg", photo, "image/jpeg")})
    return r.status_code, time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e3 if values else float("nan")


def run(limit: int, args: argparse.Namespace, photos: list[bytes]) -> dict:
    key = "fsa_bench_" + secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="facesearch-overload-") as tmp:
        os.environ["FACESEARCH_QUEUE_LIMIT"] = str(limit)
        proc, base = start_server(Path(tmp), args.workers, key)
        try:
            with httpx.Client(base_url=base, timeout=300, headers={"Authorization": f"Bearer {key}"},
                              limits=httpx.Limits(max_connections=256)) as client:
                for domain in (BUSY, QUIET):
                    client.post("/v1/domains", json={"name": domain}).raise_for_status()
                with ThreadPoolExecutor(8) as ex:  # capacity: closed loop, 8 at a time
                    started = time.perf_counter()
                    list(ex.map(lambda i: post(client, BUSY, photos[i % len(photos)]), range(160)))
                    capacity = 160 / (time.perf_counter() - started)
                rate = capacity * args.rate_factor
                total = int(rate * args.seconds)
                begin = time.perf_counter() + 0.5
                results: list[tuple[float, int, float]] = []  # (sent at, status, latency)
                quiet: list[float] = []
                done = threading.Event()

                def scheduled(i: int) -> None:
                    at = begin + i / rate
                    time.sleep(max(0.0, at - time.perf_counter()))
                    status, took = post(client, BUSY, photos[i % len(photos)])
                    results.append((at - begin, status, took))

                def other_domain() -> None:
                    while not done.wait(1.0):
                        status, took = post(client, QUIET, photos[0])
                        if status == 200:
                            quiet.append(took)

                watcher = threading.Thread(target=other_domain)
                watcher.start()
                with ThreadPoolExecutor(args.threads) as ex:
                    list(ex.map(scheduled, range(total)))
                done.set()
                watcher.join()
        finally:
            proc.terminate()
            proc.wait(60)
    ok = [t for _, s, t in results if s == 200]
    refused = [t for _, s, t in results if s == 503]
    late = [t for at, s, t in results if s == 200 and at > args.seconds * 0.75]
    return {"limit": limit, "capacity": capacity, "rate": rate, "sent": total, "ok": len(ok),
            "refused": len(refused), "other": len(results) - len(ok) - len(refused),
            "p50": pct(ok, 50), "p95": pct(ok, 95), "p99": pct(ok, 99), "max": pct(ok, 100),
            "late_p50": pct(late, 50), "refused_p50": pct(refused, 50), "refused_max": pct(refused, 100),
            "quiet_p50": pct(quiet, 50), "quiet_max": pct(quiet, 100)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limits", default="0,16", help="FACESEARCH_QUEUE_LIMIT values (0: none)")
    ap.add_argument("--rate-factor", type=float, default=1.5, help="arrival rate / capacity")
    ap.add_argument("--seconds", type=float, default=20, help="how long the overload lasts")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--threads", type=int, default=200, help="client threads (requests in flight)")
    args = ap.parse_args(argv)
    photos = portraits(40)
    rows = [run(int(limit), args, photos) for limit in args.limits.split(",")]
    print(f"\n{args.workers} workers, {cpu_model()}; {args.seconds:g} s at {args.rate_factor:g}x "
          "capacity (open loop), LFW portraits; latencies in ms\n")
    print("| queue limit | capacity req/s | offered req/s | 200 | 503 | other | p50 | p95 | p99 | max "
          "| p50, last quarter | 503 p50 / max | other domain p50 / max |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['limit'] or 'none'} | {r['capacity']:.1f} | {r['rate']:.1f} | {r['ok']} | "
              f"{r['refused']} | {r['other']} | {r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | "
              f"{r['max']:.0f} | {r['late_p50']:.0f} | {r['refused_p50']:.0f} / "
              f"{r['refused_max']:.0f} | {r['quiet_p50']:.0f} / {r['quiet_max']:.0f} |")


if __name__ == "__main__":
    main()
