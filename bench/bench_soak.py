"""Soak: one server under a long mixed load (recognize, enroll, delete), its resources sampled.

Run: ``python -m bench.bench_soak [--requests 20000] [--minutes 20] [--concurrency 4]
[--sample 30] [--plot docs/soak.png]``. One ``facesearch serve`` on a fresh data directory (its
embedded PostgreSQL), ``--people`` enrolled first (one LFW photo each). Then ``--requests``
requests, paced to spread over ``--minutes`` (an open loop: a slow server falls behind, it is not
given a rest): 80 % recognize of another photo of an enrolled person, 15 % enroll of a new photo
(a rotating pool of LFW photos), 5 % delete of a face the soak enrolled (so the gallery stays
about the same size). Every ``--sample`` seconds: resident memory (RSS) of the API process and of
each model worker, their open file descriptors, the database sessions (pg_stat_activity) and the
statuses and latencies of the requests since the last sample. Flat is the goal: the summary
compares the first samples after warm-up with the last ones.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from .bench_http import rss_mb, start_server, worker_pids
from .lfw import cpu_model, faces_dir

DOMAIN = "soak"


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def db_sessions(home: Path) -> int:
    """Sessions of the facesearch database other than this one (the embedded server's socket
    is named in its postmaster.pid)."""
    import psycopg

    lines = (home / "pgdata" / "postmaster.pid").read_text().splitlines()
    url = f"postgresql://postgres@/facesearch?host={lines[4]}&port={lines[3]}"
    with psycopg.connect(url, connect_timeout=5) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = 'facesearch'"
                            " AND pid <> pg_backend_pid()").fetchone()[0]


class Soak:
    """The load and its bookkeeping (threads share it under a lock)."""

    def __init__(self, client: httpx.Client, people: dict[str, list[Path]], seed: int) -> None:
        self.client = client
        self.people = people
        self.names = sorted(people)
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.added: list[int] = []  # face ids the soak enrolled, deletable
        self.next_photo = dict.fromkeys(self.names, 2)  # photo 0 enrolled, 1 recognized
        self.window: list[tuple[str, int, float]] = []  # (kind, status, seconds) since the sample
        self.statuses: Counter[tuple[str, int]] = Counter()

    def pick(self) -> tuple[str, str]:
        with self.lock:
            r = self.rng.random()
            kind = "recognize" if r < 0.80 else "enroll" if r < 0.95 else "delete"
            if kind == "delete" and not self.added:
                kind = "recognize"
            return kind, self.rng.choice(self.names)

    def one(self, _: int) -> None:
        kind, name = self.pick()
        t = time.perf_counter()
        try:
            status = getattr(self, kind)(name)
        except httpx.TransportError:
            status = 0
        took = time.perf_counter() - t
        with self.lock:
            self.window.append((kind, status, took))
            self.statuses[(kind, status)] += 1

    def recognize(self, name: str) -> int:
        photo = self.people[name][1]
        return self.client.post(f"/v1/domains/{DOMAIN}/recognize",
                                files={"photo": (photo.name, photo.read_bytes(), "image/jpeg")}
                                ).status_code

    def enroll(self, name: str) -> int:
        with self.lock:
            photos = self.people[name]
            i = self.next_photo[name]
            self.next_photo[name] = 2 + (i - 1) % (len(photos) - 2) if len(photos) > 2 else 0
        photo = photos[i % len(photos)]
        r = self.client.post(f"/v1/domains/{DOMAIN}/enroll", data={"name": name},
                             files={"photo": (photo.name, photo.read_bytes(), "image/jpeg")},
                             params={"face": "largest"})
        if r.status_code == 201:
            ids = [x["face_id"] for x in r.json()["results"] if x["status"] == "enrolled"]
            with self.lock:
                self.added.extend(ids)
        return r.status_code

    def delete(self, name: str) -> int:
        with self.lock:
            if not self.added:
                return 204
            face = self.added.pop(self.rng.randrange(len(self.added)))
        return self.client.delete(f"/v1/domains/{DOMAIN}/faces/{face}").status_code

    def drain(self) -> list[tuple[str, int, float]]:
        with self.lock:
            out, self.window = self.window, []
        return out


def sample(t0: float, proc_pid: int, home: Path, soak: Soak, done: int) -> dict:
    window = soak.drain()
    workers = worker_pids(proc_pid)
    lat = np.array([s for _, _, s in window]) * 1000 if window else None
    return {
        "t_s": round(time.monotonic() - t0, 1), "requests_done": done,
        "api_rss_mb": round(rss_mb(proc_pid), 1), "api_fds": fds(proc_pid),
        "workers_rss_mb": [round(rss_mb(w), 1) for w in workers],
        "workers_fds": [fds(w) for w in workers], "db_sessions": db_sessions(home),
        "window": {"requests": len(window),
                   "errors": sum(1 for k, s, _ in window if s not in (200, 201, 204)
                                 and not (k == "delete" and s == 404)),
                   "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat is not None else None,
                   "p95_ms": round(float(np.percentile(lat, 95)), 1) if lat is not None else None},
    }


def growth(samples: list[dict], key: str, skip: int) -> float:
    """Mean of the last 3 samples minus the mean of the first 3 after ``skip`` (warm-up)."""
    values = [s[key] if not isinstance(s[key], list) else sum(s[key]) for s in samples[skip:]]
    if len(values) < 4:
        return float("nan")
    return round(float(np.mean(values[-3:]) - np.mean(values[:3])), 1)


def plot(samples: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(8, 8.5), sharex=True)
    axes[0].plot(t, [s["api_rss_mb"] for s in samples], label="API process", lw=2)
    n = max(len(s["workers_rss_mb"]) for s in samples)
    for i in range(n):
        axes[0].plot(t, [s["workers_rss_mb"][i] if i < len(s["workers_rss_mb"]) else np.nan
                         for s in samples], label=f"model worker {i + 1}")
    axes[0].set_ylabel("RSS (MB)")
    axes[0].set_ylim(bottom=0)
    axes[0].legend(loc="lower right", fontsize=8)
    axes[1].plot(t, [s["api_fds"] for s in samples], label="API open fds")
    axes[1].plot(t, [sum(s["workers_fds"]) for s in samples], label="workers' open fds")
    axes[1].plot(t, [s["db_sessions"] for s in samples], label="database sessions")
    axes[1].set_ylim(bottom=0)
    axes[1].legend(loc="lower right", fontsize=8)
    for q in ("p50", "p95"):
        axes[2].plot(t, [s["window"][f"{q}_ms"] or np.nan for s in samples], label=q)
    axes[2].set_ylabel("latency (ms)")
    axes[2].set_xlabel("minutes")
    axes[2].set_ylim(bottom=0)
    axes[2].legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--minutes", type=float, default=20.0, help="spread the requests over this")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="stop sending once this long has passed, even if requests are left")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--people", type=int, default=200)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--sample", type=float, default=30.0, help="seconds between samples")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--out", type=Path, default=Path("bench/results/soak.json"))
    ap.add_argument("--plot", default="docs/soak.png", help="'' for none")
    args = ap.parse_args(argv)

    lfw = faces_dir() / "lfw"
    found = sorted(d for d in lfw.iterdir() if len(list(d.glob("*.jpg"))) >= 4)
    chosen = random.Random(args.seed).sample(found, min(args.people, len(found)))
    people = {d.name: sorted(d.glob("*.jpg")) for d in chosen}

    home = Path(tempfile.mkdtemp(prefix="facesearch-soak-"))
    key = "fsa_bench_" + secrets.token_urlsafe(16)
    proc, base = start_server(home, args.workers, key)
    samples: list[dict] = []
    try:
        client = httpx.Client(base_url=base, timeout=120,
                              headers={"Authorization": f"Bearer {key}"},
                              limits=httpx.Limits(max_connections=args.concurrency * 2))
        client.post("/v1/domains", json={"name": DOMAIN}).raise_for_status()
        with ThreadPoolExecutor(args.concurrency) as ex:
            list(ex.map(lambda n: client.post(
                f"/v1/domains/{DOMAIN}/enroll", data={"name": n},
                files={"photo": (people[n][0].name, people[n][0].read_bytes(), "image/jpeg")},
                params={"face": "largest"}), people))
        soak = Soak(client, people, args.seed)
        interval = args.minutes * 60 / args.requests
        t0 = time.monotonic()
        done = 0
        stop = threading.Event()

        def sampler() -> None:
            while not stop.wait(args.sample):
                samples.append(sample(t0, proc.pid, home, soak, done))
                s = samples[-1]
                print(f"{s['t_s'] / 60:5.1f} min  {done:6d} requests  API {s['api_rss_mb']:.0f} MB"
                      f"  workers {s['workers_rss_mb']} MB  fds {s['api_fds']}"
                      f"  db {s['db_sessions']}  p50 {s['window']['p50_ms']} ms"
                      f"  errors {s['window']['errors']}", flush=True)

        samples.append(sample(t0, proc.pid, home, soak, 0))
        threading.Thread(target=sampler, daemon=True).start()

        cutoff = t0 + (args.max_minutes or float("inf")) * 60

        def paced(i: int) -> None:
            nonlocal done
            if time.monotonic() > cutoff:
                return
            delay = t0 + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            soak.one(i)
            done += 1

        with ThreadPoolExecutor(args.concurrency) as ex:
            list(ex.map(paced, range(args.requests)))
        stop.set()
        samples.append(sample(t0, proc.pid, home, soak, done))
        wall = time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(home, ignore_errors=True)

    skip = min(4, len(samples) // 4)  # the first two minutes: caches and pools filling
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_model(),
        "cores": os.cpu_count(), "requests": done, "wall_s": round(wall, 1),
        "concurrency": args.concurrency, "workers": args.workers, "people": args.people,
        "statuses": {f"{k} {s}": n for (k, s), n in sorted(soak.statuses.items())},
        "growth_after_warmup": {"api_rss_mb": growth(samples, "api_rss_mb", skip),
                                "workers_rss_mb": growth(samples, "workers_rss_mb", skip),
                                "api_fds": growth(samples, "api_fds", skip),
                                "db_sessions": growth(samples, "db_sessions", skip)},
        "samples": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=1))
    if args.plot:
        plot(samples, Path(args.plot), f"soak: {done} requests in {wall / 60:.0f} min, "
             f"concurrency {args.concurrency}, {args.workers} workers ({summary['date']})")


if __name__ == "__main__":
    main()
