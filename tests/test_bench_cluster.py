"""The clustering, audit and unknown-faces benchmarks still run (tiny inputs, as ``python -m``);
they check the chain, not the figures."""

from __future__ import annotations

import json
from pathlib import Path

from .test_bench_smoke import bench


def test_cluster_and_audit_benches(faces_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cluster.json"
    bench(faces_root, tmp_path, "bench.bench_cluster", "--first", "120", "--sizes", "100,1000",
          "--cuts", "0.55", "--out", str(out))
    report = json.loads(out.read_text())
    runs = report["sizes"][0]["runs"]
    assert {"average cut 0.55", "single cut 0.45", "dbscan eps 0.5 min 3"} <= set(runs)
    assert all(0 <= r["pair_precision"] <= 1 and 0 <= r["bcubed_f"] <= 1 for r in runs.values())
    out = tmp_path / "audit.json"
    bench(faces_root, tmp_path, "bench.bench_audit", "--first", "400", "--people", "20",
          "--out", str(out))
    report = json.loads(out.read_text())
    assert report["people"] == 20 and report["mislabeled"]["in_whole_list"] <= report["mislabeled"]["planted"]


def test_unknown_bench(faces_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "unknown.json"
    bench(faces_root, tmp_path, "bench.bench_unknown", "--first", "120", "--sizes", "60",
          "--home", str(tmp_path / "home"), "--out", str(out))
    entry = json.loads(out.read_text())["sizes"][0]
    assert entry["unassigned_faces"] == 60 and entry["clusters"] >= 1
