"""Smoke tests of the accuracy benchmarks (bench/calibrate_threshold.py, bench/bench_openset.py):
each script's whole code path (``main(argv)``) on a few LFW photos, with the session's model workers
and embedded PostgreSQL, checking the structure of what it reports and that its figures agree with
its own raw output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facesearch.config import DEFAULT_THRESHOLD, DEFAULT_VERIFY_THRESHOLD

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def faces_env(faces_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The scripts find LFW the way the tests do."""
    monkeypatch.setenv("FACESEARCH_FACES", str(faces_root))
    return faces_root


def test_lfw_verification_report(faces_env: Path, tmp_path: Path, pool) -> None:
    from bench import calibrate_threshold

    out, cache = tmp_path / "pairs.json", tmp_path / "faces.npz"
    argv = ["--pairs-per-fold", "1", "--out", str(out), "--cache", str(cache),
            "--plot", str(tmp_path / "lfw.png")]
    result = calibrate_threshold.main(argv, pool=pool)

    assert result["pairs"] == 20  # 1 same + 1 different pair in each of the 10 folds
    assert len(result["ten_fold"]) == len(result["ten_fold_thresholds"]) == 10
    assert all(0.0 <= a <= 1.0 for a in result["ten_fold"])
    assert result["ten_fold_mean"] == pytest.approx(np.mean(result["ten_fold"]))
    assert result["photos_without_face_count"] == len(result["photos_without_face"])
    assert all((faces_env / p).is_file() for p in result["photos_without_face"])

    # The shipped threshold's accuracy, recomputed from the distances the script saved.
    saved = np.load(out.with_suffix(".npz"))
    dist, same, fold = saved["dist"], saved["same"], saved["fold"]
    assert len(dist) == 20 and same.sum() == 10 and sorted(set(fold)) == list(range(1, 11))
    shipped = result["shipped_threshold"]
    assert shipped["threshold"] == DEFAULT_VERIFY_THRESHOLD
    assert shipped["accuracy_all_pairs"] == pytest.approx(np.mean((dist < DEFAULT_VERIFY_THRESHOLD) == same))
    assert shipped["false_accepts"] + shipped["false_rejects"] == round(
        (1 - shipped["accuracy_all_pairs"]) * 20)
    assert len(shipped["per_fold"]) == 10
    assert shipped["per_fold_mean"] == pytest.approx(np.mean(shipped["per_fold"]))
    assert shipped["accuracy_all_pairs"] >= 0.75  # the model does tell these people apart
    assert (tmp_path / "lfw.png").read_bytes()[:8] == PNG

    # Again from the cache: nothing embedded, the same answer.
    again = calibrate_threshold.main(argv, pool=pool)
    assert again["seconds"] == 0.0
    assert again["ten_fold"] == result["ten_fold"] and again["shipped_threshold"] == shipped


def test_openset_report(faces_env: Path, tmp_path: Path, home: Path, db_url: str, gallery, pool) -> None:
    from bench import bench_openset

    people = 16
    folders = sorted(p for p in (faces_env / "lfw").iterdir() if p.is_dir())[:people]
    photos = {f.name: sorted(f.glob("*.jpg")) for f in folders}
    several = {name for name, p in photos.items() if len(p) >= 2}
    assert several and len(several) < people  # both kinds of people are in the sample

    domain = "bench-openset-smoke"
    result = bench_openset.main([
        "--people", str(people), "--home", str(home), "--domain", domain,
        "--cache", str(tmp_path / "faces.npz"), "--out", str(tmp_path / "openset.json"),
        "--plot", str(tmp_path / "openset.png")], pool=pool)

    total = sum(len(p) for p in photos.values())
    assert result["people"] == people and result["photos"] == total
    not_enrolled = set(result["not_enrolled_no_face_in_first_photo"])
    assert result["gallery_candidates"] == len(several)
    assert result["enrolled_people"] == result["enrolled_faces"] == len(several - not_enrolled)
    # Every photo but the enrolled ones is a probe; known ones belong to enrolled people.
    assert result["known_probes"] + result["unknown_probes"] == total - result["enrolled_people"]
    assert result["known_probes"] == sum(len(photos[n]) - 1 for n in several - not_enrolled)
    assert result["searched_probes"] == (result["known_probes"] + result["unknown_probes"]
                                         - result["known_probes_without_face"]
                                         - result["unknown_probes_without_face"])
    assert result["hnsw_vs_exact"]["same_nearest_person"] == 1.0  # a few faces: HNSW is exact

    sweep = result["sweep"]
    assert len(sweep["threshold"]) == len(sweep["dir"]) == len(sweep["far"]) == len(sweep["wrong_person"])
    for curve in ("dir", "far", "wrong_person"):  # more accepted as the threshold grows
        assert np.all(np.diff(sweep[curve]) >= 0) and 0.0 <= min(sweep[curve]) <= max(sweep[curve]) <= 1.0
    assert sweep["dir"][0] == sweep["far"][0] == 0.0
    assert result["at_default"]["threshold"] == DEFAULT_THRESHOLD
    assert result["at_default"]["dir"] >= 0.5
    far = dict(zip(sweep["threshold"], sweep["far"], strict=True))
    for point in result["operating_points"].values():
        assert far[point["threshold"]] == point["far"]
    assert result["recommended_threshold"] in far
    assert (tmp_path / "openset.png").read_bytes()[:8] == PNG
    assert domain not in {d.name for d in gallery.list_domains()}  # the run cleaned up after itself
