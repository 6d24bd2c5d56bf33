"""Configuration from the environment; every setting has a matching CLI option."""

from __future__ import annotations

import os
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import platformdirs

from .errors import InvalidModel, ModelError
from .models import DEFAULT_MODEL, DLIB_MODEL, MODEL_DIMS, check_model_files, default_thresholds

# Match thresholds are cosine distances calibrated per model (facesearch.models.default_thresholds,
# docs/BENCHMARKS.md): a domain's model decides them unless FACESEARCH_THRESHOLD /
# FACESEARCH_VERIFY_THRESHOLD set one for every model. Two, because a search compares a face with a
# whole gallery and false accepts add up with its size: recognize (1:N) is the stricter.
# dlib-resnet-v1's pair, kept under the names of the release before domains had a model (bench/
# and its tests use them); everything else asks default_thresholds(model).
DEFAULT_THRESHOLD, DEFAULT_VERIFY_THRESHOLD = default_thresholds(DLIB_MODEL)


def usable_model(name: str) -> str:
    """``name`` if it is a model facesearch knows and can load here (DeepFace's need their
    runtime and weights file); else :class:`InvalidModel` (422) saying why and which models
    there are. Cheap: imports no model runtime."""
    known = ", ".join(sorted(MODEL_DIMS))
    if not isinstance(name, str) or name not in MODEL_DIMS:
        raise InvalidModel(f"unknown model {name!r}; the models are {known}")
    try:
        check_model_files(name)
    except ModelError as exc:
        raise InvalidModel(f"model {name} cannot load here: {exc.message} (the models are "
                           f"{known})") from None
    return name


def url_list(text: str | None) -> tuple[str, ...]:
    """Comma-separated URLs (FACESEARCH_READ_DATABASE_URLS), blanks dropped."""
    return tuple(u.strip() for u in (text or "").split(",") if u.strip())


# The shortest admin key accepted: it reaches every domain, so it must not be guessable.
MIN_ADMIN_KEY = 32


def _env_number(name: str, default: float, kind: type = int) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return kind(value)
    except ValueError:
        raise SystemExit(f"error: {name} must be a number, not {value!r}") from None


def _env_optional(name: str) -> float | None:
    """A number, or None when the variable is unset or empty."""
    value = os.environ.get(name)
    return None if value is None or value == "" else _env_number(name, 0.0, float)


def _env_flag(name: str, default: bool) -> bool:
    value = (os.environ.get(name) or "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"error: {name} must be 1 or 0 (true/false, yes/no, on/off), not {value!r}")


def private_home(home: Path) -> None:
    """Keep what facesearch writes to its own user, whatever the umask: from now on this process
    (and what it starts: model workers, the embedded PostgreSQL) creates files and directories
    without group or other permissions, and the data directory, if new, is created 0700."""
    os.umask(os.umask(0o077) | 0o077)
    with suppress(OSError):  # unwritable: whatever writes there first says so, with the path
        home.mkdir(mode=0o700, parents=True, exist_ok=True)


@dataclass(frozen=True)
class Settings:
    """Everything facesearch needs to know to run. Build with :meth:`from_env`."""

    home: Path
    database_url: str | None = None
    # Streaming replicas of database_url that serve reads (FACESEARCH_READ_DATABASE_URLS, comma-
    # separated; store/replicas.py); empty: everything on the primary.
    read_database_urls: tuple[str, ...] = field(default=(), repr=False)
    # The model of new domains (an existing domain keeps its own), and of verify without one.
    model: str = DEFAULT_MODEL
    detector: str = "hog"  # "hog" (fast, CPU) or "cnn" (dlib's MMOD CNN: slower, finds more)
    # Where the embedding network runs: "onnx" (dlib's weights converted, same embeddings, ~13x
    # faster than the dlib-bin wheel) or "dlib" itself.
    runtime: str = "onnx"
    # None: the model's own default (see recognize_threshold / verify_threshold_for).
    threshold: float | None = None  # recognize: a face against a gallery
    verify_threshold: float | None = None  # verify: one face against one face
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
    # Where galleries live: "pgvector" (PostgreSQL) or "deepface" (alias "pkl": DeepFace's own
    # datastore files under home/pkl, no database at all; see store/pkl.py), new files in
    # deepface_format (npz: DeepFace 0.0.102 on; pkl for older DeepFace).
    store: str = "pgvector"
    deepface_format: str = "npz"
    # Retention of unknown faces (domains with keep_unknown): at most this many per domain, none
    # older than this many days; the oldest go first. 5,000 keeps a full re-cluster near 100 MB.
    unknown_max_faces: int = 5000
    unknown_max_days: float = 90.0
    # Abuse limits (service/guard.py, service/bounded.py, service/connections.py; README "Limits").
    max_json: int = 64 * 1024  # bytes per JSON request body (photos have max_upload)
    max_metadata: int = 16 * 1024  # bytes of a person's metadata, as JSON
    max_page: int = 2 * 1024 * 1024  # bytes of people's JSON in one list page (rows: ?limit)
    auth_failures: str = "20/minute"  # failed key attempts per client address (limits' notation)
    key_rate: str | None = None  # requests per key, e.g. "600/minute"; None: unlimited
    rate_storage: str = "memory://"  # where the counters live (limits' storage URI)
    header_timeout: float = 10.0  # seconds to send a request's headers
    body_timeout: float = 60.0  # seconds to send a request's body
    max_connections: int = 1000  # open connections; over it new requests get 503
    # The model pool's limits (see inference/pool.py and docs in the README's settings table).
    task_timeout: float = 60.0  # seconds a photo may take in a worker before it is killed; 0: none
    queue_limit: int = 64  # photos a domain may have waiting for a worker; 0: no limit
    worker_memory_mb: int = 0  # address-space cap of each model worker (RLIMIT_AS); 0: none
    max_photos: int = 32  # photos per request
    max_request_megapixels: float = 400.0  # all the photos of one request together

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Read ``FACESEARCH_*`` variables; keyword overrides (from CLI options) win when not None."""
        home = os.environ.get("FACESEARCH_HOME") or platformdirs.user_data_dir("facesearch")
        settings = cls(
            home=Path(home),
            database_url=os.environ.get("FACESEARCH_DATABASE_URL") or None,
            read_database_urls=url_list(os.environ.get("FACESEARCH_READ_DATABASE_URLS")),
            model=os.environ.get("FACESEARCH_MODEL") or DEFAULT_MODEL,
            detector=os.environ.get("FACESEARCH_DETECTOR") or "hog",
            runtime=os.environ.get("FACESEARCH_RUNTIME") or "onnx",
            threshold=_env_optional("FACESEARCH_THRESHOLD"),
            verify_threshold=_env_optional("FACESEARCH_VERIFY_THRESHOLD"),
            max_pixels=int(_env_number("FACESEARCH_MAX_PIXELS", 40_000_000)),
            max_faces=int(_env_number("FACESEARCH_MAX_FACES", 50)),
            min_face=int(_env_number("FACESEARCH_MIN_FACE", 40)),
            max_upload=int(_env_number("FACESEARCH_MAX_UPLOAD_MB", 15, float) * 1024 * 1024),
            thumbnails=_env_flag("FACESEARCH_THUMBNAILS", True),
            admin_key=os.environ.get("FACESEARCH_ADMIN_KEY") or None,
            workers=int(_env_number("FACESEARCH_WORKERS", os.cpu_count() or 1)),
            store=(os.environ.get("FACESEARCH_STORE") or "pgvector").strip().lower(),
            deepface_format=(os.environ.get("FACESEARCH_DEEPFACE_FORMAT") or "npz").strip().lower(),
            unknown_max_faces=int(_env_number("FACESEARCH_UNKNOWN_MAX_FACES", 5000)),
            unknown_max_days=float(_env_number("FACESEARCH_UNKNOWN_MAX_DAYS", 90.0, float)),
            max_json=int(_env_number("FACESEARCH_MAX_JSON_KB", 64, float) * 1024),
            max_metadata=int(_env_number("FACESEARCH_MAX_METADATA_KB", 16, float) * 1024),
            max_page=int(_env_number("FACESEARCH_MAX_PAGE_MB", 2, float) * 1024 * 1024),
            auth_failures=os.environ.get("FACESEARCH_AUTH_FAILURES") or "20/minute",
            key_rate=os.environ.get("FACESEARCH_KEY_RATE") or None,
            rate_storage=os.environ.get("FACESEARCH_RATE_STORAGE") or "memory://",
            header_timeout=_env_number("FACESEARCH_HEADER_TIMEOUT", 10.0, float),
            body_timeout=_env_number("FACESEARCH_BODY_TIMEOUT", 60.0, float),
            max_connections=int(_env_number("FACESEARCH_MAX_CONNECTIONS", 1000)),
            task_timeout=_env_number("FACESEARCH_TASK_TIMEOUT", 60.0, float),
            queue_limit=int(_env_number("FACESEARCH_QUEUE_LIMIT", 64)),
            worker_memory_mb=int(_env_number("FACESEARCH_WORKER_MEMORY_MB", 0)),
            max_photos=int(_env_number("FACESEARCH_MAX_PHOTOS", 32)),
            max_request_megapixels=_env_number("FACESEARCH_MAX_REQUEST_MEGAPIXELS", 400.0, float),
        )
        if settings.admin_key is not None and len(settings.admin_key) < MIN_ADMIN_KEY:
            raise SystemExit(
                f"error: FACESEARCH_ADMIN_KEY is {len(settings.admin_key)} characters; it must be at "
                f"least {MIN_ADMIN_KEY} (a short key can be guessed): use a random one, e.g. "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))', or unset it to have "
                "one generated")
        if min(settings.task_timeout, settings.queue_limit, settings.worker_memory_mb) < 0 \
                or settings.max_photos < 1 or settings.max_request_megapixels <= 0:
            raise SystemExit("error: FACESEARCH_TASK_TIMEOUT, _QUEUE_LIMIT and _WORKER_MEMORY_MB "
                             "must be 0 (off) or more; _MAX_PHOTOS and _MAX_REQUEST_MEGAPIXELS "
                             "more than 0")
        if settings.min_face < 20:
            raise SystemExit("error: FACESEARCH_MIN_FACE must be at least 20 (pixels)")
        given = {k: v for k, v in overrides.items() if v is not None}
        if isinstance(given.get("read_database_urls"), str):
            given["read_database_urls"] = url_list(str(given["read_database_urls"]))
        if "home" in given:
            given["home"] = Path(str(given["home"]))
        return replace(settings, **given)  # type: ignore[arg-type]

    def recognize_threshold(self, model: str) -> float:
        """The recognize (1:N) threshold for a domain of ``model``: FACESEARCH_THRESHOLD if set,
        else the model's calibrated default."""
        return default_thresholds(model)[0] if self.threshold is None else self.threshold

    def threshold_of(self, domain: Any) -> float:
        """A domain's recognize threshold: its own if set (import-deepface calibrates one for a
        gallery DeepFace embedded), else :meth:`recognize_threshold` of its model."""
        own = getattr(domain, "threshold", None)
        return self.recognize_threshold(domain.model) if own is None else float(own)

    def verify_threshold_for(self, model: str) -> float:
        """The verify (1:1) threshold for ``model``: FACESEARCH_VERIFY_THRESHOLD if set, else
        the model's calibrated default."""
        return default_thresholds(model)[1] if self.verify_threshold is None else self.verify_threshold

    @property
    def pgdata(self) -> Path:
        """Where the embedded PostgreSQL keeps its files."""
        return self.home / "pgdata"

    @property
    def cache_dir(self) -> Path:
        """Derived files that can be rebuilt (e.g. converted models)."""
        return self.home / "cache"
