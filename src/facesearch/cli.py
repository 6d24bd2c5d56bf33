"""``facesearch`` command line.

This module is re-imported by the spawned model workers (as the parent's ``__main__``), so it
imports neither the store (libpq) nor the model runtime at top level: each command imports what
it needs.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import __version__
from .config import Settings
from .errors import FacesearchError, NoFace

if TYPE_CHECKING:
    from .deepface_pkl import PklFace
    from .inference import ModelPool
    from .models.base import Analysis, Face
    from .store import BlockingGallery, Gallery

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


# -- shared plumbing -----------------------------------------------------------------------------

class Context:
    """What every command needs: settings, and lazily the model pool and the gallery."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @contextmanager
    def pool(self, photos: int) -> Iterator[ModelPool]:
        """Model workers for a job of ``photos`` photos (no more workers than photos)."""
        from .inference import ModelPool, ModelSpec

        s = self.settings
        spec = ModelSpec(model=s.model, detector=s.detector, runtime=s.runtime,
                         cache_dir=str(s.cache_dir))
        with ModelPool(spec, workers=max(1, min(s.workers, photos))) as pool:
            yield pool

    @contextmanager
    def gallery(self) -> Iterator[BlockingGallery]:
        from .store import open_gallery

        with open_gallery(self.settings) as gallery:
            yield gallery

    def analyze(self, pool: ModelPool, path: Path, *, embed: bool = True,
                largest: bool = False) -> Future[Analysis]:
        s = self.settings
        return pool.submit(path.read_bytes(), max_pixels=s.max_pixels, max_faces=s.max_faces,
                           embed=embed, min_face=s.min_face, largest=largest)


def emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


class FacesearchGroup(click.Group):
    """Turns our errors into a clear message on stderr and exit code 1 (click keeps 2 for usage)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FacesearchError as exc:
            click.secho(f"error: {exc.message}", err=True, fg="red")
            ctx.exit(1)
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
@click.option("--workers", type=click.IntRange(1, 64),
              help="Model worker processes (env FACESEARCH_WORKERS; default: CPU count).")
@click.option("--detector", type=click.Choice(["hog", "cnn"]),
              help="Face detector (env FACESEARCH_DETECTOR; default hog).")
@click.option("--runtime", type=click.Choice(["dlib", "onnx"]),
              help="Where the embedding network runs (env FACESEARCH_RUNTIME).")
@click.option("--min-face", type=click.IntRange(20, 10_000), metavar="PX",
              help="Smallest face looked for, in pixels (env FACESEARCH_MIN_FACE; default 40; "
                   "80 is ~3x faster on small photos).")
@click.option("--store", type=click.Choice(["pgvector", "pkl"]),
              help="Where galleries live (env FACESEARCH_STORE; default pgvector): PostgreSQL, or "
                   "pkl: DeepFace PKL files in the data directory, no database.")
@click.pass_context
def cli(ctx: click.Context, **options: Any) -> None:
    """Face recognition against per-domain galleries on PostgreSQL + pgvector."""
    ctx.obj = Context(Settings.from_env(**options))


def main() -> None:
    cli(prog_name="facesearch")


# -- enroll --------------------------------------------------------------------------------------

@dataclass
class EnrollReport:
    photos: int = 0
    enrolled: int = 0
    already_enrolled: int = 0
    no_face: list[str] = field(default_factory=list)
    several_faces: list[str] = field(default_factory=list)  # the largest face was enrolled
    unreadable: list[str] = field(default_factory=list)
    people: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {"photos": self.photos, "enrolled": self.enrolled,
                "already_enrolled": self.already_enrolled, "no_face": len(self.no_face),
                "several_faces": len(self.several_faces), "unreadable": len(self.unreadable),
                "people": len(self.people),
                "details": {"no_face": self.no_face, "several_faces": self.several_faces,
                            "unreadable": self.unreadable}}


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


@cli.command()
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("--domain", "-d", required=True, help="Domain to enroll into (created if new).")
@click.option("--person", "-p", help="Enroll the given photos as this person. Without it, PATHS "
              "is one folder with a sub-folder of photos per person.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def enroll(obj: Context, paths: tuple[Path, ...], domain: str, person: str | None,
           as_json: bool) -> None:
    """Enroll photos of people into a domain. Re-running enrolls nothing twice."""
    from tqdm import tqdm

    from . import names
    from .store import NewFace

    names.domain_name(domain)
    if person is not None:
        person = names.person_name(person)
        bad = [str(p) for p in paths if not p.is_file()]
        if bad:
            raise click.UsageError(f"with --person, give photo files, not folders: {bad[0]}")
        items = [(person, p) for p in paths]
    else:
        if len(paths) != 1 or not paths[0].is_dir():
            raise click.UsageError("give one folder (one sub-folder per person), "
                                   "or photos with --person NAME")
        items = collect_folder(paths[0])
        if not items:
            raise FacesearchError(f"no photos found in {paths[0]}: expected "
                                  f"{paths[0]}/<person>/<photo>.jpg")
        for name, _ in items:
            names.person_name(name)

    report = EnrollReport(photos=len(items))
    model = obj.settings.model
    # Workers first: they load the model while the database starts.
    with obj.pool(len(items)) as pool, obj.gallery() as gallery:
        dom = gallery.create_domain(domain, exist_ok=True)
        people = {p.name: p.id for p in gallery.list_people(dom, limit=10**9)}
        done = gallery.enrolled_hashes(dom, model)
        pending: list[tuple[str, Face, bytes]] = []
        # Photos go to the workers in small batches: one network call embeds a whole batch.
        batch_size = max(1, min(8, len(items) // (pool.workers * 4)))
        batch: list[tuple[str, Path, bytes, bytes]] = []
        in_flight: deque[tuple[Future, list[tuple[str, Path, bytes]]]] = deque()

        def flush() -> None:
            people.update(gallery.ensure_people(dom, {name for name, _, _ in pending}))
            ids = gallery.add_faces(dom, model, [
                NewFace(people[name], f.embedding, (f.box.x, f.box.y, f.box.w, f.box.h), f.score, sha,
                        f.thumbnail)
                for name, f, sha in pending])
            added = sum(i is not None for i in ids)
            report.enrolled += added
            # Rows skipped by the store were enrolled meanwhile (a concurrent run, or the same
            # photo twice in this one).
            report.already_enrolled += len(pending) - added
            pending.clear()

        def take(name: str, path: Path, sha: bytes, result: Analysis | FacesearchError) -> None:
            if isinstance(result, FacesearchError):
                report.unreadable.append(f"{path}: {result.message}")
            elif not result.faces:
                report.no_face.append(str(path))
            else:
                if result.faces_found > 1:
                    report.several_faces.append(f"{path} ({result.faces_found} faces)")
                report.people.add(name)
                pending.append((name, result.faces[0], sha))  # the largest face
                if len(pending) >= 256:
                    flush()

        def collect() -> None:
            future, members = in_flight.popleft()
            try:
                results = pool.result(future)
            except FacesearchError as exc:  # the worker died: the batch is lost, not the run
                results = [exc] * len(members)
            for member, result in zip(members, results, strict=True):
                take(*member, result)
            bar.update(len(members))

        def send() -> None:
            # Only the largest face is enrolled, so only it is embedded, and small faces are looked
            # for only in photos without a large one (faces_found counts the faces looked for).
            future = pool.submit_batch([data for *_, data in batch],
                                       max_pixels=obj.settings.max_pixels, max_faces=1,
                                       thumbnails=obj.settings.thumbnails,
                                       min_face=obj.settings.min_face, largest=True)
            in_flight.append((future, [(n, p, h) for n, p, h, _ in batch]))
            batch.clear()
            if len(in_flight) > pool.workers * 2:
                collect()

        with tqdm(total=len(items), desc=f"enrolling into {domain}", unit="photo",
                  file=sys.stderr, disable=None) as bar:
            for name, path in items:
                data = path.read_bytes()
                sha = hashlib.sha256(data).digest()
                if name in people and (people[name], sha) in done:
                    report.already_enrolled += 1
                    report.people.add(name)
                    bar.update()
                    continue
                batch.append((name, path, sha, data))
                if len(batch) >= batch_size:
                    send()
            if batch:
                send()
            while in_flight:
                collect()
        flush()

    if as_json:
        emit(report.as_dict())
    else:
        click.echo(f"domain {domain}: {report.photos} photos, {report.enrolled} faces enrolled, "
                   f"{report.already_enrolled} already enrolled, {len(report.no_face)} without a "
                   f"face, {len(report.several_faces)} with several faces (largest enrolled), "
                   f"{len(report.unreadable)} unreadable; {len(report.people)} people")
        for label, items_ in (("no face", report.no_face), ("several faces", report.several_faces),
                              ("unreadable", report.unreadable)):
            for line in items_[:10]:
                click.echo(f"  {label}: {line}", err=True)
            if len(items_) > 10:
                click.echo(f"  {label}: ... and {len(items_) - 10} more", err=True)
    if report.enrolled + report.already_enrolled == 0:
        raise FacesearchError("nothing was enrolled: " + (
            "no face was found" if report.no_face else "no photo could be read"))


# -- recognize / verify / detect -----------------------------------------------------------------

@cli.command()
@click.argument("photos", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--domain", "-d", required=True)
@click.option("--top-k", "-k", type=click.IntRange(1, 100), default=5, show_default=True,
              help="Matches per face.")
@click.option("--threshold", "-t", type=click.FloatRange(0, 2),
              help="Cosine distance under which a face matches (default: calibrated).")
@click.option("--max-faces", type=click.IntRange(1, 1000), help="Faces processed, largest first.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object (one per line when several photos are given).")
@click.pass_obj
def recognize(obj: Context, photos: tuple[Path, ...], domain: str, top_k: int,
              threshold: float | None, max_faces: int | None, as_json: bool) -> None:
    """Recognize every face in each PHOTO against a domain's gallery."""
    s = obj.settings
    threshold = s.threshold if threshold is None else threshold
    failed = 0
    with obj.pool(len(photos)) as pool:
        window = pool.workers * 4
        futures: dict[Path, Future[Analysis]] = {}

        def submit(photo: Path) -> None:
            futures[photo] = pool.submit(photo.read_bytes(), max_pixels=s.max_pixels,
                                         max_faces=max_faces or s.max_faces, min_face=s.min_face)

        for photo in photos[:window]:
            submit(photo)
        with obj.gallery() as gallery:  # opens while the model works
            dom = gallery.get_domain(domain)
            for i, photo in enumerate(photos):
                if i + window < len(photos):
                    submit(photos[i + window])
                try:
                    analysis = pool.result(futures.pop(photo))
                except FacesearchError as exc:
                    if len(photos) == 1:
                        raise
                    failed += 1
                    click.secho(f"error: {photo}: {exc.message}", err=True, fg="red")
                    if as_json:
                        click.echo(json.dumps({"photo": str(photo), "error": {
                            "code": exc.code, "message": exc.message}}))
                    continue
                results = gallery.search(dom, s.model, [f.embedding for f in analysis.faces],
                                         k=top_k, threshold=threshold)
                _print_recognition(photo, analysis, results, domain, s.model, threshold, top_k,
                                   as_json, one_line=len(photos) > 1)
    if failed:
        raise FacesearchError(f"{failed} of {len(photos)} photos could not be processed")


def _print_recognition(photo: Path, analysis: Analysis, results: list, domain: str, model: str,
                       threshold: float, top_k: int, as_json: bool, one_line: bool) -> None:
    faces = []
    for face, matches in zip(analysis.faces, results, strict=True):
        faces.append({**face.as_dict(), "matches": [
            {"person": m.person, "person_id": m.person_id, "face_id": m.face_id,
             "distance": round(m.distance, 5), "similarity": round(1 - m.distance, 5)}
            for m in matches]})
    if as_json:
        data = {"photo": str(photo), "faces": faces, "faces_found": analysis.faces_found,
                "model": model, "domain": domain, "threshold": threshold, "top_k": top_k,
                "image": {"width": analysis.width, "height": analysis.height},
                "timings_ms": {k: round(v, 1) for k, v in analysis.timings_ms.items()}}
        click.echo(json.dumps(data, ensure_ascii=False) if one_line else
                   json.dumps(data, indent=2, ensure_ascii=False))
        return
    click.echo(f"{photo}: {analysis.faces_found} face(s); domain {domain}, model {model}, "
               f"threshold {threshold}")
    for i, f in enumerate(faces, 1):
        b = f["box"]
        best = (f"{f['matches'][0]['person']} (distance {f['matches'][0]['distance']:.3f})"
                if f["matches"] else "unknown")
        click.echo(f"  face {i} at x={b['x']} y={b['y']} w={b['w']} h={b['h']}: {best}")
        for m in f["matches"][1:]:
            click.echo(f"      also {m['person']} (distance {m['distance']:.3f})")


@cli.command()
@click.argument("photo_a", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("photo_b", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--threshold", "-t", type=click.FloatRange(0, 2))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def verify(obj: Context, photo_a: Path, photo_b: Path, threshold: float | None,
           as_json: bool) -> None:
    """Are the (largest) faces in two photos the same person?"""
    threshold = obj.settings.verify_threshold if threshold is None else threshold
    with obj.pool(2) as pool:
        futures = [obj.analyze(pool, p, largest=True) for p in (photo_a, photo_b)]
        analyses = [pool.result(f) for f in futures]
    for path, analysis in zip((photo_a, photo_b), analyses, strict=True):
        if not analysis.faces:
            raise NoFace(f"no face found in {path}")
    a, b = (an.faces[0] for an in analyses)
    distance = float(1.0 - a.embedding @ b.embedding)
    same = distance < threshold
    if as_json:
        emit({"same_person": same, "distance": round(distance, 5), "threshold": threshold,
              "model": obj.settings.model,
              "faces": [{"photo": str(p), "faces_found": an.faces_found, **an.faces[0].as_dict()}
                        for p, an in zip((photo_a, photo_b), analyses, strict=True)]})
    else:
        verdict = "same person" if same else "different people"
        click.echo(f"{verdict} (distance {distance:.3f}, threshold {threshold})")


@cli.command()
@click.argument("photo", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def detect(obj: Context, photo: Path, as_json: bool) -> None:
    """Find the faces in PHOTO: boxes, scores and 5 landmarks."""
    with obj.pool(1) as pool:
        analysis = pool.result(obj.analyze(pool, photo, embed=False))
    if as_json:
        emit({"faces": [f.as_dict() for f in analysis.faces],
              "faces_found": analysis.faces_found,
              "image": {"width": analysis.width, "height": analysis.height}})
        return
    click.echo(f"{photo}: {analysis.faces_found} face(s)")
    for i, f in enumerate(analysis.faces, 1):
        b = f.box
        click.echo(f"  face {i} at x={b.x} y={b.y} w={b.w} h={b.h} (score {f.score:.2f})")


# -- people --------------------------------------------------------------------------------------

@cli.group()
def people() -> None:
    """List, rename and delete the people of a domain."""


@people.command("list")
@click.option("--domain", "-d", required=True)
@click.option("--search", "-s", help="Only names containing this text.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def people_list(obj: Context, domain: str, search: str | None, as_json: bool) -> None:
    with obj.gallery() as gallery:
        rows = gallery.list_people(gallery.get_domain(domain), search=search, limit=10**9)
    if as_json:
        emit([{"id": p.id, "name": p.name, "faces": p.faces, "metadata": p.metadata,
               "created_at": p.created_at.isoformat()} for p in rows])
        return
    for p in rows:
        click.echo(f"{p.name}\t{p.faces} face(s)")
    click.echo(f"{len(rows)} people", err=True)


@people.command("rename")
@click.option("--domain", "-d", required=True)
@click.argument("old")
@click.argument("new")
@click.pass_obj
def people_rename(obj: Context, domain: str, old: str, new: str) -> None:
    with obj.gallery() as gallery:
        gallery.rename_person(gallery.get_domain(domain), old, new)
    click.echo(f"renamed {old!r} to {new!r} in {domain}")


@people.command("delete")
@click.option("--domain", "-d", required=True)
@click.argument("names_", metavar="NAME...", nargs=-1, required=True)
@click.pass_obj
def people_delete(obj: Context, domain: str, names_: tuple[str, ...]) -> None:
    """Delete people and all their faces (the embeddings are removed from disk)."""
    with obj.gallery() as gallery:
        dom = gallery.get_domain(domain)
        for name in names_:
            gallery.person_id(dom, name)  # all exist, or delete none
        for name in names_:
            faces = gallery.delete_person(dom, name)
            click.echo(f"deleted {name!r} and {faces} face(s) from {domain}")
        gallery.purge(dom)


# -- faces ---------------------------------------------------------------------------------------

@cli.group()
def faces() -> None:
    """List and delete single enrolled faces."""


@faces.command("list")
@click.option("--domain", "-d", required=True)
@click.option("--person", "-p", help="Only this person's faces.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def faces_list(obj: Context, domain: str, person: str | None, as_json: bool) -> None:
    with obj.gallery() as gallery:
        rows = gallery.list_faces(gallery.get_domain(domain), person)
    if as_json:
        emit([{"id": f.id, "person": f.person, "model": f.model,
               "box": dict(zip("xywh", f.box, strict=True)), "score": f.score,
               "photo_sha256": f.photo_sha256, "created_at": f.created_at.isoformat()} for f in rows])
        return
    for f in rows:
        click.echo(f"{f.id}\t{f.person}\t{f.model}\tphoto {f.photo_sha256[:12]}")
    click.echo(f"{len(rows)} face(s)", err=True)


@faces.command("delete")
@click.option("--domain", "-d", required=True)
@click.argument("face_ids", metavar="ID...", nargs=-1, required=True, type=int)
@click.pass_obj
def faces_delete(obj: Context, domain: str, face_ids: tuple[int, ...]) -> None:
    """Delete faces by id (see ``faces list``); their embeddings are removed from disk."""
    with obj.gallery() as gallery:
        dom = gallery.get_domain(domain)
        for face_id in face_ids:
            gallery.delete_face(dom, face_id)
            click.echo(f"deleted face {face_id} from {domain}")
        gallery.purge(dom)


# -- domains -------------------------------------------------------------------------------------

@cli.group()
def domains() -> None:
    """List, create and delete domains (separate galleries, e.g. one per tenant)."""


@domains.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def domains_list(obj: Context, as_json: bool) -> None:
    with obj.gallery() as gallery:
        rows = gallery.list_domains()
    if as_json:
        emit([{"name": d.name, "people": d.people, "faces": d.faces,
               "created_at": d.created_at.isoformat()} for d in rows])
        return
    for d in rows:
        click.echo(f"{d.name}\t{d.people} people\t{d.faces} faces")


@domains.command("create")
@click.argument("name")
@click.pass_obj
def domains_create(obj: Context, name: str) -> None:
    with obj.gallery() as gallery:
        gallery.create_domain(name)
    click.echo(f"created domain {name}")


@domains.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def domains_delete(obj: Context, name: str, yes: bool) -> None:
    """Delete a domain with all its people and faces."""
    with obj.gallery() as gallery:
        gallery.get_domain(name)
        if not yes and not click.confirm(f"Delete domain {name!r} with all its people and faces?"):
            raise click.Abort()
        info = gallery.delete_domain(name)
    click.echo(f"deleted domain {name}: {info.people} people, {info.faces} faces")


# -- DeepFace PKL files --------------------------------------------------------------------------

_DEEPFACE_MODELS = ("VGG-Face, Facenet, Facenet512, OpenFace, DeepFace, DeepID, ArcFace, Dlib, SFace, "
                    "GhostFaceNet")


@cli.command("import-pkl")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--domain", "-d", required=True, help="Domain to import into (created if new).")
@click.option("--model", "-m", "model_option", metavar="NAME",
              help=f"The DeepFace model that made FILE ({_DEEPFACE_MODELS}); default: the one FILE's "
                   "name says. Both given must agree.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def import_pkl(obj: Context, file: Path, domain: str, model_option: str | None, as_json: bool) -> None:
    """Import the embeddings of a DeepFace PKL file (what DeepFace.find keeps in its db_path).

    Reads the three generations of DeepFace's files (representations_<model>.pkl, ds_<model>_...pkl,
    ds_model_<model>_detector_...pkl); the person is each photo's folder (db_path/<person>/<photo>).
    Every row is checked before anything is stored, then all is stored in one transaction. Running
    it again adds nothing. DeepFace's Dlib model is facesearch's own dlib-resnet-v1 (recognize with
    it at once); other models become deepface:<Name>.
    """
    import time
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from . import deepface_pkl, names
    from .store import database_url, prepare
    from .store.gallery import HNSW_MAX_DIMS
    from .store.pkl import uses_pkl

    names.domain_name(domain)
    deepface_model = deepface_pkl.resolve_model(file, model_option)
    model = deepface_pkl.facesearch_model(deepface_model)
    started = time.perf_counter()
    # The database starts (initdb the first time) in other processes while this one unpickles.
    with ThreadPoolExecutor(1) as executor:
        pkl = uses_pkl(obj.settings.store)  # PKL mode: no database to start
        warm = executor.submit(lambda: None if pkl else prepare(database_url(obj.settings)))
        contents = deepface_pkl.read_pkl(file)
        deepface_pkl.check_dimension(contents, deepface_model, file)
        if not contents.faces:
            raise deepface_pkl.InvalidPkl(f"{file.name}: nothing to import ({contents.rows} rows, none "
                                          "with a face); the domain was left as it was")
        read = time.perf_counter()
        warm.result()

    with obj.gallery() as gallery, tqdm(total=len(contents.faces), desc=f"importing into {domain}",
                                        unit="face", file=sys.stderr, disable=None) as bar:
        def progress(n: int) -> None:
            bar.update(n)
            if bar.n >= len(contents.faces):  # sent; the rows and the index are written next
                bar.set_postfix_str("storing, indexing")

        imported = gallery.run(_store_pkl_faces(gallery.gallery, domain, model, contents.faces,
                                                progress))

    dim = contents.dim or 0
    report = {
        "file": str(file), "domain": domain, "generation": contents.generation, "rows": contents.rows,
        "imported": imported, "already_there": len(contents.faces) - imported,
        "no_face_rows": contents.no_face, "several_faces": contents.several_faces,
        "other_faces_skipped": contents.other_faces, "people": len(contents.people),
        "model": model, "deepface_model": deepface_model, "dimensions": dim,
        "index": "none" if pkl or dim > HNSW_MAX_DIMS else "hnsw",
        "seconds": {"read": round(read - started, 2), "store": round(time.perf_counter() - read, 2)},
    }
    if as_json:
        emit(report)
        return
    click.echo(f"domain {domain}: {contents.rows} rows of {file.name} (DeepFace {deepface_model}, "
               f"generation {contents.generation}): {imported} faces imported, "
               f"{report['already_there']} already there, {contents.no_face} rows without a face "
               f"skipped; {len(contents.people)} people; model {model} ({dim}-d)")
    if contents.several_faces:
        click.echo(f"  {contents.several_faces} photo(s) had several faces: the largest of each was "
                   f"imported, {contents.other_faces} other face(s) skipped", err=True)
    if dim > HNSW_MAX_DIMS and not pkl:
        click.echo(f"  no vector index: pgvector's HNSW indexes at most {HNSW_MAX_DIMS} dimensions, so "
                   f"searches of this {dim}-d model compare every face (exact, slower on big domains)",
                   err=True)


async def _store_pkl_faces(g: Gallery, domain: str, model: str, faces: list[PklFace],
                           progress: Callable[[int], object]) -> int:
    """Create the domain and people, store the faces: one transaction. Returns how many were new."""
    from .store import NewFace

    async with g.conn.transaction():
        dom = await g.create_domain(domain, exist_ok=True)
        people = await g.ensure_people(dom, {f.person for f in faces})
        done = await g.enrolled_hashes(dom, model)
        new = [f for f in faces if (people[f.person], f.photo_key) not in done]
        progress(len(faces) - len(new))
        ids = await g.add_faces(dom, model, [
            NewFace(person_id=people[f.person], embedding=f.embedding, box=f.box, score=None,
                    photo_sha256=f.photo_key, source=f.identity, source_hash=f.source_hash)
            for f in new], progress=progress)
    return sum(i is not None for i in ids)


@cli.command("export-pkl")
@click.option("--domain", "-d", required=True)
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The file to write (replaced atomically), e.g. in DeepFace's db_path: "
                   "ds_model_<m>_detector_<d>_aligned_normalization_base_expand_0.pkl.")
@click.option("--model", "-m", "model_option", metavar="NAME",
              help="Which model's faces (dlib-resnet-v1, deepface:ArcFace, or DeepFace's name); "
                   "default: the domain's only model.")
@click.option("--db-path", type=click.Path(file_okay=False, path_type=Path),
              help="Folder the photos of faces enrolled by facesearch are named under "
                   "(<db-path>/<person>/facesearch-<face id>.jpg); default: the folder of --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def export_pkl(obj: Context, domain: str, out: Path, model_option: str | None, db_path: Path | None,
               as_json: bool) -> None:
    """Write a domain's faces as a DeepFace PKL file (the current generation, read by DeepFace.find).

    DeepFace.find looks in its db_path for a file named for its model (lowercased, without '-'),
    detector and options, e.g.

    \b
      ds_model_arcface_detector_opencv_aligned_normalization_base_expand_0.pkl

    Imported faces keep their original identity path and DeepFace hash; faces enrolled by
    facesearch get a path under --db-path and their photo's SHA-256. Embeddings are L2-normalized:
    compare them by cosine distance.
    """
    import os

    from . import deepface_pkl

    if not out.parent.is_dir():
        raise FacesearchError(f"cannot write {out}: no folder {out.parent}")
    root = str(out.parent if db_path is None else db_path)
    with obj.gallery() as gallery:
        dom = gallery.get_domain(domain)
        counts = gallery.face_models(dom)
        if model_option is not None:
            model = deepface_pkl.facesearch_model(deepface_pkl.deepface_model(model_option))
        elif len(counts) == 1:
            model = next(iter(counts))
        elif not counts:
            raise FacesearchError(f"domain {domain!r} has no faces to export")
        else:
            raise click.UsageError(f"domain {domain!r} has faces of several models "
                                   f"({', '.join(counts)}): choose one with --model")
        if not counts.get(model):
            raise FacesearchError(f"domain {domain!r} has no faces of model {model}")
        faces_ = gallery.export_faces(dom, model)
    rows = [deepface_pkl.deepface_row(
        f.source or os.path.join(root, deepface_pkl.path_part(f.person), f"facesearch-{f.id}.jpg"),
        f.source_hash or f.photo_sha256, f.embedding, f.box) for f in faces_]
    deepface_pkl.write_atomically(out, rows)
    people_ = len({f.person for f in faces_})
    expected = deepface_pkl.export_filename(model)
    if as_json:
        emit({"file": str(out), "domain": domain, "model": model,
              "deepface_model": deepface_pkl.deepface_model(model), "faces": len(rows),
              "people": people_, "deepface_file_name": expected})
        return
    click.echo(f"wrote {len(rows)} faces of {people_} people (model {model}) from {domain} to {out}")
    if not out.name.startswith(expected.split("_detector_")[0] + "_detector_"):
        click.echo(f"  DeepFace.find reads it in its db_path as {expected} (with its default "
                   "detector opencv; put yours in the name)", err=True)


# -- doctor --------------------------------------------------------------------------------------

@cli.command()
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list of {check, status, detail, hint}.")
@click.pass_obj
def doctor(obj: Context, as_json: bool) -> None:
    """Check the database, the model and the process layout: one ok / warn / fail line per check,
    with what to do next. Exit code 1 if any check fails."""
    from .doctor import format_line, run, summary

    checks = []
    for check in run(obj.settings):
        checks.append(check)
        if not as_json:
            click.echo(format_line(check))
    if as_json:
        emit([c.as_dict() for c in checks])
    else:
        click.echo(summary(checks))
    if any(c.status == "fail" for c in checks):
        raise click.exceptions.Exit(1)


# -- serve ---------------------------------------------------------------------------------------

@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", "model_workers", type=click.IntRange(1, 64),
              help="Model worker processes (default: CPU count).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.pass_obj
def serve(obj: Context, host: str, port: int, model_workers: int | None, log_level: str) -> None:
    """Run the HTTP API (docs at /docs). SIGTERM or Ctrl-C drains requests in flight, then stops."""
    import logging
    import signal
    from dataclasses import replace

    import uvicorn

    from .models import check_model_files
    from .service.app import create_app
    from .service.observability import configure_logging
    from .store import database_url, prepare
    from .store.pkl import uses_pkl

    settings = obj.settings if model_workers is None else replace(obj.settings, workers=model_workers)
    configure_logging(getattr(logging, log_level.upper()))
    # A model that cannot load without a download (e.g. DeepFace's weights file missing) would
    # leave a service answering 503 forever: refuse to start, saying which file goes where.
    check_model_files(settings.model)
    # Database first, so a wrong URL or a missing pgvector is a plain message and exit code 1, not
    # a failed application start-up. (No connection is kept: the app opens its pool at start-up.)
    if not uses_pkl(settings.store):  # PKL mode has no database
        url = database_url(settings)
        prepare(url)
        settings = replace(settings, database_url=url)
    # Uvicorn drains on SIGTERM/SIGINT, then re-raises the signal to the handler found before it
    # started. Make that handler a normal exit, so atexit hooks run: the last one stops the
    # embedded PostgreSQL.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_after_drain)
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False,
                log_level=log_level, timeout_graceful_shutdown=60, server_header=False)


def _exit_after_drain(signum: int, frame: object) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    main()
