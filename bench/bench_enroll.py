"""Enrollment throughput of the ``facesearch enroll`` command on LFW, first run and re-run.

Builds DeepFace's folder layout from links to LFW (the first N people with >= 2 photos), enrolls
it into a fresh data directory, then enrolls it again (everything already enrolled).
Run: ``python -m bench.bench_enroll [--people 300] [--workers 2] [--runtime onnx|dlib]``.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--people", type=int, default=300)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--runtime", default="onnx", choices=["onnx", "dlib"])
    args = ap.parse_args()
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
    env = {**os.environ, "FACESEARCH_HOME": str(work / "home"), "FACESEARCH_WORKERS": str(args.workers),
           "FACESEARCH_RUNTIME": args.runtime}
    print(f"command: python -m bench.bench_enroll --people {args.people} --workers {args.workers} "
          f"--runtime {args.runtime}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}")
    for label in ("first run", "re-run"):
        t = time.perf_counter()
        out = subprocess.run([str(exe), "enroll", str(root), "--domain", "bench", "--json"],
                             env=env, capture_output=True, text=True, check=True).stdout
        seconds = time.perf_counter() - t
        s = json.loads(out)
        print(f"{label}: {photos} photos of {len(people)} people in {seconds:.1f} s "
              f"({photos / seconds:.1f} photos/s, whole command incl. start-up); enrolled "
              f"{s['enrolled']}, already {s['already_enrolled']}, no face {s['no_face']}")


if __name__ == "__main__":
    main()
