"""``facesearch`` command line: the main group and what every command shares. The commands live in
one module per part of the job users see: :mod:`.photos` (enroll, recognize, verify, detect),
:mod:`.people` (people, faces), :mod:`.domains` (domains, their models), :mod:`.deepface` (import-pkl,
export-pkl), :mod:`.service` (serve, doctor).

This package is re-imported by the spawned model workers (the ``facesearch`` script is the parent's
``__main__``), so none of its modules imports the store (libpq) or the model runtime at top level:
each command imports what it needs.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .. import __version__
from ..config import Settings, private_home
from ..errors import FacesearchError

if TYPE_CHECKING:
    from ..inference import ModelPool
    from ..models.base import Analysis
    from ..store import BlockingGallery

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic",
                  ".heif", ".avif"}


class Context:
    """What every command needs: settings, and lazily the model pool and the gallery."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        private_home(settings.home)  # before anything is written there (keys, database, PKL files)

    @contextmanager
    def pool(self, photos: int, model: str | None = None, *, warm: bool = False) -> Iterator[ModelPool]:
        """Model workers for a job of ``photos`` photos (no more workers than photos), whose
        default model is ``model`` (default: the settings'). ``warm``: spawn them now, in the
        background, so they load it while the caller opens the database (a task naming another
        model loads that one on first use)."""
        from ..inference import ModelPool, ModelSpec

        s = self.settings
        spec = ModelSpec(model=model or s.model, detector=s.detector, runtime=s.runtime,
                         cache_dir=str(s.cache_dir))
        with ModelPool(spec, workers=max(1, min(s.workers, photos))) as pool:
            if warm:
                threading.Thread(target=_start, args=(pool,), daemon=True).start()
            yield pool

    @contextmanager
    def gallery(self) -> Iterator[BlockingGallery]:
        from ..store import open_gallery

        with open_gallery(self.settings) as gallery:
            yield gallery

    def analyze(self, pool: ModelPool, path: Path, *, model: str | None = None, embed: bool = True,
                largest: bool = False) -> Future[Analysis]:
        s = self.settings
        return pool.submit(path.read_bytes(), max_pixels=s.max_pixels, max_faces=s.max_faces,
                           embed=embed, min_face=s.min_face, largest=largest, model=model)


def _start(pool: ModelPool) -> None:
    """Spawn the workers and let them load (in a thread of its own). A failure to load is
    reported by the first task, with the reason."""
    with suppress(FacesearchError):
        pool.start()


def emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def collect_folder(root: Path) -> list[tuple[str, Path]]:
    """DeepFace's db_path layout: ``root/<person>/<photo>`` (nested folders: the photo's parent).
    Files directly in root (e.g. DeepFace's .pkl caches) and hidden files are ignored."""
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if (len(rel.parts) < 2 or any(p.startswith(".") for p in rel.parts)
                or not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES):
            continue
        found.append((path.parent.name, path))
    return found


class FacesearchGroup(click.Group):
    """Turns our errors into a clear message on stderr and exit code 1 (click keeps 2 for usage)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FacesearchError as exc:
            click.secho(f"error: {exc.message}", err=True, fg="red")
            ctx.exit(getattr(exc, "exit_code", 1))  # e.g. the embedded server's start-up faults
        except OSError as exc:
            click.secho(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
                        err=True, fg="red")
            ctx.exit(1)
        except Exception as exc:
            if not type(exc).__module__.startswith("psycopg"):
                raise
            # psycopg is not imported here (see the module docstring), hence the module test.
            click.secho(f"error: database: {str(exc).strip()}", err=True, fg="red")
            ctx.exit(1)


@click.group(cls=FacesearchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="facesearch")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path),
              help="Data directory (env FACESEARCH_HOME; default: the user data directory).")
@click.option("--database-url", metavar="URL",
              help="External PostgreSQL with pgvector (env FACESEARCH_DATABASE_URL); "
                   "unset: facesearch's embedded PostgreSQL in the data directory.")
@click.option("--read-database-urls", metavar="URLS",
              help="Streaming replicas of the database that serve searches and other reads, "
                   "comma-separated (env FACESEARCH_READ_DATABASE_URLS); unset: all on the primary.")
@click.option("--workers", type=click.IntRange(1, 64),
              help="Model worker processes (env FACESEARCH_WORKERS; default: CPU count).")
@click.option("--detector", type=click.Choice(["hog", "cnn"]),
              help="dlib's face detector, for dlib-resnet-v1 and DeepFace's models (env "
                   "FACESEARCH_DETECTOR; default hog).")
@click.option("--runtime", type=click.Choice(["dlib", "onnx"]),
              help="Where dlib's embedding network runs (env FACESEARCH_RUNTIME).")
@click.option("--min-face", type=click.IntRange(20, 10_000), metavar="PX",
              help="Smallest face looked for, in pixels (env FACESEARCH_MIN_FACE; default 40; "
                   "80 is ~3x faster on small photos).")
@click.option("--store", type=click.Choice(["pgvector", "deepface", "pkl"]),
              help="Where galleries live (env FACESEARCH_STORE; default pgvector): PostgreSQL, or "
                   "deepface (alias pkl): DeepFace's own datastore files in the data directory, "
                   "no database.")
@click.pass_context
def cli(ctx: click.Context, **options: Any) -> None:
    """Face recognition against per-domain galleries on PostgreSQL + pgvector. Each domain has a
    model (FACESEARCH_MODEL for new ones): see ``facesearch domains --help``."""
    ctx.obj = Context(Settings.from_env(**options))


def main() -> None:
    cli(prog_name="facesearch")


# The commands register themselves on ``cli``.
from . import backup, clusters, deepface, domains, people, photos, service, shards  # noqa: E402

__all__ = ["Context", "backup", "cli", "clusters", "collect_folder", "deepface", "domains", "emit", "main",
           "people", "photos", "service", "shards"]
