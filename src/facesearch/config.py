"""Configuration from the environment; every setting has a matching CLI option."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import platformdirs

# Cosine distances between L2-normalized dlib ResNet embeddings (docs/BENCHMARKS.md); the seed's
# 0.30 was for ArcFace and means nothing for this model. Two thresholds, because a search compares
# a face with a whole gallery and false accepts add up with its size:
# - recognize (1:N): the largest under which at most 1 % of strangers match someone in LFW's
#   open-set gallery of 1,675 people (bench/bench_openset.py);
# - verify (1:1): the largest under which at most 1 in 1,000 different-person LFW pairs fall
#   (bench/calibrate_threshold.py, folds 1-5).
DEFAULT_THRESHOLD = 0.047
DEFAULT_VERIFY_THRESHOLD = 0.074

DEFAULT_MODEL = "dlib-resnet-v1"


def _env_number(name: str, default: float, kind: type = int) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return kind(value)
    except ValueError:
        raise SystemExit(f"error: {name} must be a number, not {value!r}") from None


def _env_flag(name: str, default: bool) -> bool:
    value = (os.environ.get(name) or "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"error: {name} must be 1 or 0 (true/false, yes/no, on/off), not {value!r}")


@dataclass(frozen=True)
class Settings:
    """Everything facesearch needs to know to run. Build with :meth:`from_env`."""

    home: Path
    database_url: str | None = None
    model: str = DEFAULT_MODEL
    detector: str = "hog"  # "hog" (fast, CPU) or "cnn" (dlib's MMOD CNN: slower, finds more)
    # Where the embedding network runs: "onnx" (dlib's weights converted, same embeddings, ~13x
    # faster than the dlib-bin wheel) or "dlib" itself.
    runtime: str = "onnx"
    threshold: float = DEFAULT_THRESHOLD  # recognize: a face against a gallery
    verify_threshold: float = DEFAULT_VERIFY_THRESHOLD  # verify: one face against one face
    max_pixels: int = 40_000_000
    max_faces: int = 50
    # The smallest face (px) looked for. Faces under 80 px cost a 2x upsampled search (~4x the
    # detection time); 80 makes small photos ~3x faster end to end but misses small faces.
    min_face: int = 40
    max_upload: int = 15 * 1024 * 1024  # bytes per HTTP request body
    # Store a small JPEG crop of each enrolled face (for the web page's lists): a few KB a face.
    thumbnails: bool = True
    # The service's admin key; unset: one is generated at first start (see service.auth).
    admin_key: str | None = field(default=None, repr=False)
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    # Where galleries live: "pgvector" (PostgreSQL) or "pkl" (DeepFace PKL files under home/pkl, no
    # database at all; see store/pkl.py).
    store: str = "pgvector"

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Read ``FACESEARCH_*`` variables; keyword overrides (from CLI options) win when not None."""
        home = os.environ.get("FACESEARCH_HOME") or platformdirs.user_data_dir("facesearch")
        settings = cls(
            home=Path(home),
            database_url=os.environ.get("FACESEARCH_DATABASE_URL") or None,
            model=os.environ.get("FACESEARCH_MODEL") or DEFAULT_MODEL,
            detector=os.environ.get("FACESEARCH_DETECTOR") or "hog",
            runtime=os.environ.get("FACESEARCH_RUNTIME") or "onnx",
            threshold=_env_number("FACESEARCH_THRESHOLD", DEFAULT_THRESHOLD, float),
            verify_threshold=_env_number("FACESEARCH_VERIFY_THRESHOLD", DEFAULT_VERIFY_THRESHOLD, float),
            max_pixels=int(_env_number("FACESEARCH_MAX_PIXELS", 40_000_000)),
            max_faces=int(_env_number("FACESEARCH_MAX_FACES", 50)),
            min_face=int(_env_number("FACESEARCH_MIN_FACE", 40)),
            max_upload=int(_env_number("FACESEARCH_MAX_UPLOAD_MB", 15, float) * 1024 * 1024),
            thumbnails=_env_flag("FACESEARCH_THUMBNAILS", True),
            admin_key=os.environ.get("FACESEARCH_ADMIN_KEY") or None,
            workers=int(_env_number("FACESEARCH_WORKERS", os.cpu_count() or 1)),
            store=(os.environ.get("FACESEARCH_STORE") or "pgvector").strip().lower(),
        )
        if settings.min_face < 20:
            raise SystemExit("error: FACESEARCH_MIN_FACE must be at least 20 (pixels)")
        given = {k: v for k, v in overrides.items() if v is not None}
        if "home" in given:
            given["home"] = Path(str(given["home"]))
        return replace(settings, **given)  # type: ignore[arg-type]

    @property
    def pgdata(self) -> Path:
        """Where the embedded PostgreSQL keeps its files."""
        return self.home / "pgdata"

    @property
    def cache_dir(self) -> Path:
        """Derived files that can be rebuilt (e.g. converted models)."""
        return self.home / "cache"
