"""Settings from the environment: the shipped defaults, and clear errors for bad values."""

from __future__ import annotations

import pytest

from facesearch.config import Settings, usable_model
from facesearch.errors import InvalidModel
from facesearch.models import DEFAULT_MODEL, DLIB_MODEL, MODEL_DIMS, SFACE_MODEL, default_thresholds


def test_thresholds_are_the_models_own_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FACESEARCH_MODEL", "FACESEARCH_THRESHOLD", "FACESEARCH_VERIFY_THRESHOLD"):
        monkeypatch.delenv(name, raising=False)
    s = Settings.from_env()
    assert s.model == DEFAULT_MODEL and s.threshold is None and s.verify_threshold is None
    for model in (DLIB_MODEL, SFACE_MODEL, "deepface:ArcFace"):
        recognize, verify = default_thresholds(model)
        # A search meets a whole gallery, so its threshold is the stricter one.
        assert s.recognize_threshold(model) == recognize <= s.verify_threshold_for(model) == verify
    assert s.recognize_threshold(DLIB_MODEL) != s.recognize_threshold(SFACE_MODEL)
    monkeypatch.setenv("FACESEARCH_THRESHOLD", "0.06")
    monkeypatch.setenv("FACESEARCH_VERIFY_THRESHOLD", "0.08")
    monkeypatch.setenv("FACESEARCH_MODEL", DLIB_MODEL)
    s = Settings.from_env()
    assert s.model == DLIB_MODEL
    assert (s.recognize_threshold(SFACE_MODEL), s.verify_threshold_for(SFACE_MODEL)) == (0.06, 0.08)
    monkeypatch.setenv("FACESEARCH_THRESHOLD", "wide")
    with pytest.raises(SystemExit, match="FACESEARCH_THRESHOLD must be a number"):
        Settings.from_env()


def test_usable_model_names_the_models(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert usable_model(SFACE_MODEL) == SFACE_MODEL and usable_model(DLIB_MODEL) == DLIB_MODEL
    with pytest.raises(InvalidModel) as err:
        usable_model("arcface")
    assert err.value.status == 422 and all(m in err.value.message for m in MODEL_DIMS)
    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path))  # no DeepFace weights in it
    with pytest.raises(InvalidModel, match="cannot load here"):
        usable_model("deepface:ArcFace")


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
