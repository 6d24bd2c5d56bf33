"""Enrollment throughput of the ``facesearch enroll`` command on LFW, first run and re-run.

Builds DeepFace's folder layout from links to LFW (the first N people with >= 2 photos), enrolls
it into a fresh data directory, then enrolls it again (everything already enrolled).
Run: ``python -m bench.bench_enroll [--people 300] [--workers 2] [--runtime onnx|dlib]
[--models sface-2021dec,dlib-resnet-v1] [--baseline-src OLD/src --rounds 2]``. The domain is
created on each model in turn (FACESEARCH_MODEL). With ``--baseline-src``, each round also runs
the command with that source tree first on ``PYTHONPATH`` (e.g. a ``git worktree`` of an earlier commit), so
before and after are measured alternately in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .lfw import cpu_model, faces_dir


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--people", type=int, default=300)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--runtime", default="onnx", choices=["onnx", "dlib"])
    ap.add_argument("--baseline-src", type=Path, help="an earlier checkout's src/, run alternately")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--models", default="sface-2021dec,dlib-resnet-v1")
    args = ap.parse_args(argv)
    lfw = faces_dir() / "lfw"
    work = Path(tempfile.mkdtemp(prefix="facesearch-enroll-"))
    root = work / "people"
    photos = 0
    people = [d for d in sorted(lfw.iterdir()) if len(list(d.glob("*.jpg"))) >= 2][: args.people]
    for person in people:
        (root / person.name).mkdir(parents=True)
        for p in sorted(person.glob("*.jpg")):
            (root / person.name / p.name).symlink_to(p)
            photos += 1
    exe = Path(sys.executable).parent / "facesearch"
    print(f"command: python -m bench.bench_enroll --people {args.people} --workers {args.workers} "
          f"--runtime {args.runtime} --models {args.models}"
          + (f" --baseline-src {args.baseline_src} --rounds {args.rounds}" if args.baseline_src else ""))
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}")
    codes = [("baseline", str(args.baseline_src.resolve()))] if args.baseline_src else []
    codes.append(("this checkout", ""))
    runs = [(r, code, src, model) for r in range(1, args.rounds + 1) for model in args.models.split(",")
            for code, src in codes]
    for round_, code, src, model in runs:
        home = Path(tempfile.mkdtemp(prefix="home-", dir=work))
        env = {**os.environ, "FACESEARCH_HOME": str(home), "FACESEARCH_WORKERS": str(args.workers),
               "FACESEARCH_RUNTIME": args.runtime, "FACESEARCH_MODEL": model}
        if src:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        for label in ("first run", "re-run"):
            t = time.perf_counter()
            out = subprocess.run([str(exe), "enroll", str(root), "--domain", "bench", "--json"],
                                 env=env, capture_output=True, text=True, check=True).stdout
            seconds = time.perf_counter() - t
            s = json.loads(out)
            print(f"round {round_}, {model}, {code}, {label}: {photos} photos of {len(people)} people in "
                  f"{seconds:.1f} s ({photos / seconds:.1f} photos/s, "
                  f"{s['enrolled'] / seconds:.1f} faces/s, whole command incl. start-up); "
                  f"enrolled {s['enrolled']}, already {s['already_enrolled']}, "
                  f"no face {s['no_face']}")


if __name__ == "__main__":
    main()
