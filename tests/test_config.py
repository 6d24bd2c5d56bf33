"""Settings from the environment: the shipped defaults, and clear errors for bad values."""

from __future__ import annotations

import pytest

from facesearch.config import DEFAULT_THRESHOLD, DEFAULT_VERIFY_THRESHOLD, Settings


def test_recognize_and_verify_have_their_own_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACESEARCH_THRESHOLD", raising=False)
    monkeypatch.delenv("FACESEARCH_VERIFY_THRESHOLD", raising=False)
    s = Settings.from_env()
    # A search meets a whole gallery, so its threshold is the stricter one.
    assert s.threshold == DEFAULT_THRESHOLD < s.verify_threshold == DEFAULT_VERIFY_THRESHOLD
    monkeypatch.setenv("FACESEARCH_THRESHOLD", "0.06")
    monkeypatch.setenv("FACESEARCH_VERIFY_THRESHOLD", "0.08")
    assert (Settings.from_env().threshold, Settings.from_env().verify_threshold) == (0.06, 0.08)


def test_min_face(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACESEARCH_MIN_FACE", raising=False)
    assert Settings.from_env().min_face == 40
    assert Settings.from_env(min_face=80).min_face == 80
    monkeypatch.setenv("FACESEARCH_MIN_FACE", "10")
    with pytest.raises(SystemExit, match="FACESEARCH_MIN_FACE must be at least 20"):
        Settings.from_env()
    monkeypatch.setenv("FACESEARCH_MIN_FACE", "big")
    with pytest.raises(SystemExit, match="FACESEARCH_MIN_FACE must be a number"):
        Settings.from_env()
