"""Shared fixtures: LFW photos, one embedded PostgreSQL and one model pool per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from facesearch.config import Settings
from facesearch.models import DLIB_MODEL

# Every facesearch the tests run (CLI, server) recognizes under each domain's model's own
# thresholds: nothing set here may override them for all models at once.
for _name in ("FACESEARCH_MODEL", "FACESEARCH_THRESHOLD", "FACESEARCH_VERIFY_THRESHOLD"):
    os.environ.pop(_name, None)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def faces_root() -> Path:
    """``$FACESEARCH_FACES`` or ``../shared/faces``: LFW, read at run time, never copied here."""
    root = Path(os.environ.get("FACESEARCH_FACES", REPO.parent / "shared" / "faces"))
    if not (root / "lfw").is_dir():
        pytest.skip(f"LFW photos not found at {root}: set FACESEARCH_FACES to the folder holding lfw/")
    return root


@pytest.fixture(scope="session")
def lfw(faces_root: Path) -> Path:
    return faces_root / "lfw"


def photos_of(lfw: Path, person: str) -> list[Path]:
    return sorted((lfw / person).glob("*.jpg"))


@pytest.fixture(scope="session")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="session")
def settings(home: Path) -> Settings:
    return Settings(home=home, workers=2)


@pytest.fixture(scope="session")
def db_url(settings: Settings) -> str:
    """The embedded server, started once; this process's handle keeps it up for the session
    (CLI subprocesses attach to it) and pgserver stops it when pytest exits."""
    from facesearch.store import database_url

    return database_url(settings)


# The gallery stores: ``@pytest.mark.parametrize("gallery", STORES, indirect=True)`` runs a test
# against both (the same interface; see facesearch.store.pkl).
STORES = ["pgvector", "pkl"]


@pytest.fixture(scope="session")
def pkl_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory for PKL mode (FACESEARCH_STORE=pkl), apart from ``home`` so that tests
    can tell no PostgreSQL was started in it."""
    return tmp_path_factory.mktemp("pkl-home")


@pytest.fixture
def gallery(request: pytest.FixtureRequest) -> Iterator:
    """The async Gallery behind blocking calls (:class:`facesearch.store.BlockingGallery`); with
    the indirect parameter "pkl", :class:`facesearch.store.pkl.BlockingPklGallery` in ``pkl_home``."""
    if getattr(request, "param", "pgvector") == "pkl":
        from facesearch.store.pkl import BlockingPklGallery

        with BlockingPklGallery(request.getfixturevalue("pkl_home") / "pkl") as g:
            yield g
        return
    from facesearch.store import BlockingGallery

    with BlockingGallery(request.getfixturevalue("db_url")) as g:
        yield g


@pytest.fixture
def db(db_url: str) -> Iterator:
    """A plain sync connection (pgvector registered) for checking the database in SQL."""
    from facesearch.store import connect

    conn = connect(db_url)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture(scope="session")
def pool(settings: Settings) -> Iterator:
    """Model workers on dlib-resnet-v1 (a task may name another model)."""
    from facesearch.inference import ModelPool, ModelSpec

    spec = ModelSpec(model=DLIB_MODEL, cache_dir=str(settings.cache_dir))
    with ModelPool(spec, workers=settings.workers) as p:
        yield p


def run_facesearch(home: Path, *args: str | Path, env: dict[str, str] | None = None,
                   timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The real ``facesearch`` command in a subprocess, on data directory ``home`` and its embedded
    server (a FACESEARCH_DATABASE_URL of the environment is dropped)."""
    exe = shutil.which("facesearch", path=str(Path(sys.executable).parent)) or "facesearch"
    env = {**os.environ, "FACESEARCH_HOME": str(home), **(env or {})}
    env.pop("FACESEARCH_DATABASE_URL", None)
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def cli(home: Path, db_url: str):
    """Run the real ``facesearch`` command in a subprocess against the session's data directory."""

    def run(*args: str | Path, check: bool | None = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = run_facesearch(home, *args, env={"FACESEARCH_WORKERS": "2", **(env or {})},
                              timeout=600)
        if check and proc.returncode != 0:
            raise AssertionError(f"facesearch {args} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    return run
