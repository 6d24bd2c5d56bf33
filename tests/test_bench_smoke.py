"""The benchmark scripts still run: each on tiny inputs, as a user would start it (``python -m``).

They check that the chain works and prints its table, not the figures (tests never assert timings).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def bench(faces_root: Path, tmp_path: Path, *args: str) -> str:
    env = {**os.environ, "FACESEARCH_FACES": str(faces_root), "TMPDIR": str(tmp_path)}
    env.pop("FACESEARCH_DATABASE_URL", None)
    env.pop("FACESEARCH_HOME", None)
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def table_rows(out: str) -> list[list[str]]:
    """The Markdown table body rows (headers, the line above each rule, left out)."""
    lines = out.splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for i, line in enumerate(lines)
            if line.startswith("|") and not line.startswith("|--") and not line.startswith("|:")
            and "---" not in line and not (i + 1 < len(lines) and "---" in lines[i + 1])]


def test_models(faces_root: Path, tmp_path: Path) -> None:
    import json

    out = tmp_path / "models.json"
    bench(faces_root, tmp_path, "bench.bench_models", "--people", "25", "--models",
          "sface-2021dec,dlib-resnet-v1", "--out", str(out))
    report = json.loads(out.read_text())
    assert set(report["models"]) == {"sface-2021dec", "dlib-resnet-v1"}
    for entry in report["models"].values():
        assert 0 < entry["photos_with_a_face"] <= report["photos"]
        assert 0 <= entry["photos_1"]["far<=0.01"]["dir"] <= 1


def test_groups(faces_root: Path, tmp_path: Path) -> None:
    rows = table_rows(bench(faces_root, tmp_path, "bench.bench_groups", "--photos", "2",
                            "--models", "sface-2021dec"))
    # The models' table, then the smallest faces YuNet finds (sizes 20 to 40 px).
    assert rows[0][0] == "sface-2021dec" and "/" in rows[0][1]
    assert [r[0] for r in rows[1:]] == ["20", "24", "28", "32", "40"], rows


def test_detect(faces_root: Path, tmp_path: Path) -> None:
    rows = table_rows(bench(faces_root, tmp_path, "bench.bench_detect", "--photos", "4"))
    assert len(rows) == 7 and any("largest face only" in r[0] for r in rows)
    for row in rows:
        assert float(row[1]) > 0 and re.fullmatch(r"[0-4] / 4 \(.*%\)", row[2]), row


def test_embed(faces_root: Path, tmp_path: Path) -> None:
    rows = table_rows(bench(faces_root, tmp_path, "bench.bench_embed", "--faces", "2", "--rounds", "1"))
    assert {r[0].split()[0] for r in rows} >= {"dlib", "onnxruntime"}


def test_enroll(faces_root: Path, tmp_path: Path) -> None:
    out = bench(faces_root, tmp_path, "bench.bench_enroll", "--people", "2", "--models", "sface-2021dec")
    first = re.search(r"first run: (\d+) photos .* enrolled (\d+), already 0", out)
    again = re.search(r"re-run: (\d+) photos .* enrolled 0, already (\d+)", out)
    assert first and again, out
    assert int(first[2]) == int(again[2]) > 0


def test_http(faces_root: Path, tmp_path: Path) -> None:
    out = bench(faces_root, tmp_path, "bench.bench_http", "--people", "3", "--requests", "4",
                "--concurrency", "1", "--min-face", "80", "--models", "sface-2021dec")
    (row,) = table_rows(out)
    assert row[:3] == ["sface-2021dec", "80", "1"] and float(row[3]) > 0, row
    assert re.search(r"7-face 1000 x 700 group photo: \d+ ms p50", out), out
    assert re.search(r"3 faces enrolled from 3 LFW photos", out), out
    assert re.search(r"GET /healthz [\d.]+ ms p50", out), out


def test_import(faces_root: Path, tmp_path: Path) -> None:
    out = bench(faces_root, tmp_path, "bench.bench_import", "--faces", "300", "--dim", "128")
    assert "fresh data directory" in out and "imported 300, already there 0" in out, out
    assert "imported 0, already there 300" in out, out


def test_import_against_a_baseline(faces_root: Path, tmp_path: Path) -> None:
    """--baseline-src: the other checkout's import beside this tree's, each with its recall check
    (this tree's src stands in for the baseline)."""
    out = bench(faces_root, tmp_path, "bench.bench_import", "--faces", "300", "--dim", "128",
                "--baseline-src", str(REPO / "src"))
    for label in ("this tree", "baseline"):
        found = re.search(rf"round 1, {label}, fresh data directory: .*imported 300\).*recall@1 "
                          r"([\d.]+), recall@10 ([\d.]+)", out)
        assert found and float(found[1]) > 0.5, out  # an index that answers, not a figure
    assert "imported 0, already there 300" in out and "median of the rounds' ratios" in out, out


def test_runner_quick_and_unknown_names(faces_root: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    bench(faces_root, tmp_path, "bench", "--quick", "--only", "detect", "--out", str(report))
    text = report.read_text()
    assert "## detect" in text and "python -m bench.bench_detect --photos" in text
    assert len(table_rows(text)) == 7
    with pytest.raises(AssertionError, match="unknown benchmark"):
        bench(faces_root, tmp_path, "bench", "--only", "nope")


def test_scale(faces_root: Path, tmp_path: Path) -> None:
    out = bench(faces_root, tmp_path, "bench.bench_scale", "--sizes", "1k", "--queries", "20",
                "--pandas-queries", "1", "--home", str(tmp_path / "home"))
    rows = table_rows(out)
    searches = " ".join(r[1] for r in rows)
    for kind in ("facesearch pgvector", "PKL mode", "seed's query", "pandas loop"):
        assert kind in searches, (kind, out)
    assert all(r[4] == "1.000" for r in rows if r[4] not in ("", "—")), out  # 1,000 faces: exact


def test_small_faces(faces_root: Path, tmp_path: Path) -> None:
    rows = table_rows(bench(faces_root, tmp_path, "bench.bench_small_faces", "--pairs", "8",
                           "--sizes", "110,40"))
    assert [r[0] for r in rows] == ["110 px", "40 px"]
    assert all(int(r[2]) <= 8 and r[3].endswith("%") for r in rows)
