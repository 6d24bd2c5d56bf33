"""End to end over HTTP: recognize real LFW photos through ``facesearch serve`` at several
concurrencies; latency, throughput, where the time goes, and the processes' memory.

Run: ``python -m bench.bench_http [--people 200] [--requests 200] [--concurrency 1,2,4,8]
[--min-face 40,80] [--models sface-2021dec,dlib-resnet-v1]``. For each model and ``--min-face``
value (FACESEARCH_MIN_FACE), a server runs in a subprocess on a fresh data directory (its own
embedded PostgreSQL), with as many model workers as cores, its domain on that model; the client is
this process (httpx, one thread per concurrent request). Besides the LFW portraits, 20 group photos
made from LFW (7 faces of 60-120 px on 1000 x 700) are recognized one at a time.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from .lfw import cpu_model, faces_dir
from .synthetic import group_photo


def start_server(home: Path, workers: int, key: str,
                 min_face: int = 40) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("facesearch", path=str(Path(sys.executable).parent)) or "facesearch"
    env = {**os.environ, "FACESEARCH_HOME": str(home), "FACESEARCH_ADMIN_KEY": key,
           "FACESEARCH_MIN_FACE": str(min_face)}
    env.pop("FACESEARCH_DATABASE_URL", None)
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen([exe, "serve", "--port", str(port), "--workers", str(workers),
                             "--log-level", "warning"], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited: see {home / 'server.log'}")
        try:
            if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    sys.exit("server not ready after 180 s")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker_pids(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--people", type=int, default=200, help="people enrolled (one photo each)")
    ap.add_argument("--requests", type=int, default=200, help="recognize requests per concurrency")
    ap.add_argument("--concurrency", default="1,2,4,8")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--min-face", default="40", help="FACESEARCH_MIN_FACE values, one server each")
    ap.add_argument("--models", default="sface-2021dec,dlib-resnet-v1", help="one server each")
    args = ap.parse_args(argv)
    print(f"command: python -m bench.bench_http --people {args.people} --requests "
          f"{args.requests} --concurrency {args.concurrency} --workers {args.workers} "
          f"--min-face {args.min_face} --models {args.models}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; "
          f"{args.workers} model workers\n")
    print("| model | min_face | concurrency | requests/s | p50 ms | p95 ms | server: decode | detect "
          "| embed | search | total (medians, ms) | right person first |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    notes = [run(args, model, int(m)) for model in args.models.split(",")
             for m in args.min_face.split(",")]
    print()
    for note in notes:
        print(note)


def run(args: argparse.Namespace, model: str, min_face: int) -> str:
    """One server with this FACESEARCH_MIN_FACE, its domain on ``model``: enroll, then the
    concurrency rows; returns the enrollment, group-photo and memory figures."""
    lfw = faces_dir() / "lfw"
    people = sorted(d for d in lfw.iterdir() if len(list(d.glob("*.jpg"))) >= 2)
    people = people[:: max(1, len(people) // args.people)][: args.people]
    gallery = [sorted(p.glob("*.jpg"))[0] for p in people]
    probes = [sorted(p.glob("*.jpg"))[1] for p in people]

    key = "fsa_bench_" + secrets.token_urlsafe(16)
    home = Path(tempfile.mkdtemp(prefix="facesearch-bench-http-"))
    proc, base = start_server(home, args.workers, key, min_face)
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
            client.post("/v1/domains", json={"name": "bench", "model": model}).raise_for_status()
            t = time.perf_counter()
            with ThreadPoolExecutor(args.workers * 2) as ex:
                enrolled = list(ex.map(lambda p: client.post(
                    "/v1/domains/bench/enroll", data={"name": p.parent.name},
                    files={"photo": (p.name, p.read_bytes(), "image/jpeg")},
                    params={"face": "largest"}), gallery))
            enroll_s = time.perf_counter() - t
            faces = sum(r.json().get("enrolled", 0) for r in enrolled if r.status_code == 201)
            rtt = []  # the HTTP floor: an empty request, one at a time
            for _ in range(100):
                t0 = time.perf_counter()
                client.get("/healthz").raise_for_status()
                rtt.append((time.perf_counter() - t0) * 1e3)

        note = (f"{model}, min_face {min_face}: {faces} faces enrolled from {len(gallery)} LFW photos in "
                f"{enroll_s:.1f} s over HTTP ({faces / enroll_s:.1f} faces/s, "
                f"{args.workers * 2} concurrent requests); GET /healthz {np.median(rtt):.1f} ms p50")
        photos = [(p, p.read_bytes()) for p in probes]
        for conc in (int(c) for c in args.concurrency.split(",")):
            with httpx.Client(base_url=base, headers=headers, timeout=120,
                              limits=httpx.Limits(max_connections=conc)) as client:
                def recognize(item: tuple[Path, bytes], client: httpx.Client = client) -> tuple:
                    path, data = item
                    t0 = time.perf_counter()
                    r = client.post("/v1/domains/bench/recognize",
                                    files={"photo": (path.name, data, "image/jpeg")})
                    ms = (time.perf_counter() - t0) * 1e3
                    body = r.json()
                    first = body["faces"][0]["matches"] if body.get("faces") else []
                    right = bool(first) and first[0]["name"] == path.parent.name
                    return ms, body.get("timings_ms", {}), right

                jobs = [photos[i % len(photos)] for i in range(args.requests)]
                list(map(recognize, jobs[: min(10, len(jobs))]))  # warm up
                t = time.perf_counter()
                with ThreadPoolExecutor(conc) as ex:
                    results = list(ex.map(recognize, jobs))
                wall = time.perf_counter() - t
            ms = np.array([r[0] for r in results])
            split = {k: np.median([r[1].get(k, np.nan) for r in results])
                     for k in ("decode", "detect", "embed", "search", "total")}
            right = np.mean([r[2] for r in results])
            print(f"| {model} | {min_face} | {conc} | {len(results) / wall:.1f} | "
                  f"{np.percentile(ms, 50):.1f} | {np.percentile(ms, 95):.1f} | "
                  f"{split['decode']:.1f} | {split['detect']:.1f} | "
                  f"{split['embed']:.1f} | {split['search']:.2f} | {split['total']:.1f} | "
                  f"{100 * right:.1f} % |")
        groups = [group_photo(lfw, [60, 70, 80, 90, 100, 110, 120], 7000 + i)[0] for i in range(20)]
        group_ms = []
        with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
            for data in groups:
                t0 = time.perf_counter()
                client.post("/v1/domains/bench/recognize",
                            files={"photo": ("group.jpg", data, "image/jpeg")}).raise_for_status()
                group_ms.append((time.perf_counter() - t0) * 1e3)
        note += f"; a 7-face 1000 x 700 group photo: {np.median(group_ms[2:]):.0f} ms p50"
        workers = worker_pids(proc.pid)
        return (note + f"; resident memory: API process {rss_mb(proc.pid):.0f} MB, model workers "
                + ", ".join(f"{rss_mb(w):.0f} MB" for w in workers))
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
