"""Photos in: ``enroll``, ``recognize``, ``verify``, ``detect``. A domain's photos are embedded and
searched with the domain's model."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import FacesearchError, NoFace
from . import Context, cli, collect_folder, emit

if TYPE_CHECKING:
    from ..inference import ModelPool
    from ..models.base import Analysis, Face
    from ..store import BlockingGallery, Domain


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

    def print_details(self) -> None:
        """The photos refused or worth a look, ten of each kind at most, on stderr."""
        for label, lines in (("no face", self.no_face), ("several faces", self.several_faces),
                             ("unreadable", self.unreadable)):
            for line in lines[:10]:
                click.echo(f"  {label}: {line}", err=True)
            if len(lines) > 10:
                click.echo(f"  {label}: ... and {len(lines) - 10} more", err=True)


def people_photos(paths: tuple[Path, ...], person: str | None) -> list[tuple[str, Path]]:
    """``(person, photo)`` to enroll: photos of one ``person``, or one folder in the
    ``people/<person>/<photo>`` layout (DeepFace's db_path); every name checked."""
    from .. import names

    if person is not None:
        person = names.person_name(person)
        bad = [str(p) for p in paths if not p.is_file()]
        if bad:
            raise click.UsageError(f"with --person, give photo files, not folders: {bad[0]}")
        return [(person, p) for p in paths]
    if len(paths) != 1 or not paths[0].is_dir():
        raise click.UsageError("give one folder (one sub-folder per person), "
                               "or photos with --person NAME")
    items = collect_folder(paths[0])
    if not items:
        raise FacesearchError(f"no photos found in {paths[0]}: expected "
                              f"{paths[0]}/<person>/<photo>.jpg")
    for name, _ in items:
        names.person_name(name)
    return items


def enroll_items(obj: Context, pool: ModelPool, gallery: BlockingGallery, dom: Domain, model: str,
                 items: list[tuple[str, Path]], report: EnrollReport, desc: str,
                 root: Path | None = None) -> None:
    """Embed each photo's largest face with ``model`` and store it for the person named, with a
    progress bar. People are found by name (created if new); a photo already enrolled for that
    person under ``model`` (same SHA-256) is skipped before it reaches the model. Photos under
    ``root`` (a people folder, DeepFace's db_path) keep their path relative to it, so that an
    export into that db_path names them as DeepFace does."""
    from tqdm import tqdm

    from ..store import NewFace

    people = {p.name: p.id for p in gallery.list_people(dom, limit=10**9)}
    done = gallery.enrolled_hashes(dom, model)
    pending: list[tuple[str, Face, bytes, Path]] = []
    # Photos go to the workers in small batches: one network call embeds a whole batch.
    batch_size = max(1, min(8, len(items) // (pool.workers * 4)))
    batch: list[tuple[str, Path, bytes, bytes]] = []
    in_flight: deque[tuple[Future, list[tuple[str, Path, bytes]]]] = deque()

    def flush() -> None:
        people.update(gallery.ensure_people(dom, {name for name, *_ in pending}))
        ids = gallery.add_faces(dom, model, [
            NewFace(people[name], f.embedding, (f.box.x, f.box.y, f.box.w, f.box.h), f.score, sha,
                    f.thumbnail, source=None if root is None else path.relative_to(root).as_posix())
            for name, f, sha, path in pending])
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
            pending.append((name, result.faces[0], sha, path))  # the largest face
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
                                   min_face=obj.settings.min_face, largest=True, model=model)
        in_flight.append((future, [(n, p, h) for n, p, h, _ in batch]))
        batch.clear()
        if len(in_flight) > pool.workers * 2:
            collect()

    with tqdm(total=len(items), desc=desc, unit="photo", file=sys.stderr, disable=None) as bar:
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


@cli.command()
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("--domain", "-d", required=True,
              help="Domain to enroll into (created if new, with FACESEARCH_MODEL's model).")
@click.option("--person", "-p", help="Enroll the given photos as this person. Without it, PATHS "
              "is one folder with a sub-folder of photos per person.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def enroll(obj: Context, paths: tuple[Path, ...], domain: str, person: str | None,
           as_json: bool) -> None:
    """Enroll photos of people into a domain, with the domain's model. Re-running enrolls nothing
    twice."""
    from .. import names
    from ..models import check_model_files

    names.domain_name(domain)
    items = people_photos(paths, person)
    report = EnrollReport(photos=len(items))
    # Workers first, on the default model (a new domain's): they load it while the database starts.
    with obj.pool(len(items), warm=True) as pool, obj.gallery() as gallery:
        dom = gallery.create_domain(domain, model=obj.settings.model, exist_ok=True)
        check_model_files(dom.model)
        enroll_items(obj, pool, gallery, dom, dom.model, items, report, f"enrolling into {domain}",
                     root=None if person is not None else paths[0])

    if as_json:
        emit({**report.as_dict(), "domain": domain, "model": dom.model})
    else:
        click.echo(f"domain {domain} (model {dom.model}): {report.photos} photos, {report.enrolled} "
                   f"faces enrolled, {report.already_enrolled} already enrolled, {len(report.no_face)} "
                   f"without a face, {len(report.several_faces)} with several faces (largest "
                   f"enrolled), {len(report.unreadable)} unreadable; {len(report.people)} people")
        report.print_details()
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
              help="Cosine distance under which a face matches (default: calibrated for the "
                   "domain's model).")
@click.option("--max-faces", type=click.IntRange(1, 1000), help="Faces processed, largest first.")
@click.option("--json", "as_json", is_flag=True,
              help="JSON Lines: one object per photo, one line each (a photo that failed: "
                   "{photo, error}).")
@click.pass_obj
def recognize(obj: Context, photos: tuple[Path, ...], domain: str, top_k: int,
              threshold: float | None, max_faces: int | None, as_json: bool) -> None:
    """Recognize every face in each PHOTO against a domain's gallery, with the domain's model."""
    from ..models import check_model_files

    s = obj.settings
    failed = 0
    # Workers first, on the default model (most domains'): they load it while the database starts.
    with obj.pool(len(photos), warm=True) as pool, obj.gallery() as gallery:
        dom = gallery.get_domain(domain)
        check_model_files(dom.model)
        threshold = s.threshold_of(dom) if threshold is None else threshold
        window = pool.workers * 4
        futures: dict[Path, Future[Analysis]] = {}
        started: dict[Path, float] = {}  # when each photo was read and sent

        def submit(photo: Path) -> None:
            started[photo] = time.perf_counter()
            futures[photo] = pool.submit(photo.read_bytes(), max_pixels=s.max_pixels,
                                         max_faces=max_faces or s.max_faces, min_face=s.min_face,
                                         model=dom.model)

        for photo in photos[:window]:
            submit(photo)
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
            searched = time.perf_counter()
            results = gallery.search(dom, dom.model, [f.embedding for f in analysis.faces],
                                     k=top_k, threshold=threshold)
            done = time.perf_counter()
            _print_recognition(photo, analysis, results, domain, dom.model, threshold, top_k,
                               as_json, search_ms=(done - searched) * 1e3,
                               total_ms=(done - started.pop(photo)) * 1e3)
    if failed:
        raise FacesearchError(f"{failed} of {len(photos)} photos could not be processed")


def _print_recognition(photo: Path, analysis: Analysis, results: list, domain: str, model: str,
                       threshold: float, top_k: int, as_json: bool, search_ms: float,
                       total_ms: float) -> None:
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
                "timings_ms": {**{k: round(v, 1) for k, v in analysis.timings_ms.items()},
                               "search": round(search_ms, 1), "total": round(total_ms, 1)}}
        click.echo(json.dumps(data, ensure_ascii=False))  # JSON Lines: one line per photo
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
@click.option("--threshold", "-t", type=click.FloatRange(0, 2),
              help="Cosine distance under which the faces are one person (default: calibrated "
                   "for the model).")
@click.option("--domain", "-d", help="Compare with this domain's model.")
@click.option("--model", "-m", "model_option", metavar="MODEL",
              help="Compare with this model (default: FACESEARCH_MODEL).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def verify(obj: Context, photo_a: Path, photo_b: Path, threshold: float | None, domain: str | None,
           model_option: str | None, as_json: bool) -> None:
    """Are the (largest) faces in two photos the same person?"""
    from ..config import usable_model

    if domain is not None and model_option is not None:
        raise click.UsageError("give --domain or --model, not both")
    if domain is not None:
        with obj.gallery() as gallery:
            model = gallery.get_domain(domain).model
    else:
        model = obj.settings.model if model_option is None else model_option
    usable_model(model)
    threshold = obj.settings.verify_threshold_for(model) if threshold is None else threshold
    with obj.pool(2, model) as pool:
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
              "model": model,
              "faces": [{"photo": str(p), "faces_found": an.faces_found, **an.faces[0].as_dict()}
                        for p, an in zip((photo_a, photo_b), analyses, strict=True)]})
    else:
        verdict = "same person" if same else "different people"
        click.echo(f"{verdict} (distance {distance:.3f}, threshold {threshold}, model {model})")


@cli.command()
@click.argument("photo", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def detect(obj: Context, photo: Path, as_json: bool) -> None:
    """Find the faces in PHOTO: boxes, scores and 5 landmarks (FACESEARCH_MODEL's detector)."""
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
