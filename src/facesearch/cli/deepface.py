"""DeepFace's PKL files: ``import-pkl`` (a DeepFace gallery into a domain) and ``export-pkl``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import FacesearchError
from . import Context, cli, emit

if TYPE_CHECKING:
    from ..deepface_pkl import PklContents, PklFace
    from ..store import Gallery


# -- DeepFace PKL files --------------------------------------------------------------------------

_DEEPFACE_MODELS = ("VGG-Face, Facenet, Facenet512, OpenFace, DeepFace, DeepID, ArcFace, Dlib, SFace, "
                    "GhostFaceNet")


@cli.command("import-deepface")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--domain", "-d", required=True,
              help="Domain to import into (created if new, with the file's model).")
@click.option("--model", "-m", "model_option", metavar="NAME",
              help=f"The DeepFace model that made FILE ({_DEEPFACE_MODELS}); default: the one FILE's "
                   "name says. Both given must agree.")
@click.option("--photos", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Where the gallery's photos are now (<photos>/<person>/<photo>), if not at the "
                   "paths the file names: some are embedded by facesearch to set the threshold.")
@click.option("--calibrate/--no-calibrate", default=True, show_default=True,
              help="Measure how far facesearch's embeddings of the gallery's own photos are from "
                   "DeepFace's, and give the recognize threshold for this gallery.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def import_deepface(obj: Context, file: Path, domain: str, model_option: str | None,
                    photos: Path | None, calibrate: bool, as_json: bool) -> None:
    """Import the embeddings of a DeepFace datastore (the file DeepFace.find keeps in its db_path).

    Reads every format DeepFace has written, told by the file's bytes, not its name: npz, feather
    and parquet (DeepFace 0.0.102 on; feather and parquet need facesearch[arrow]) and the three
    generations of PKL (representations_<model>.pkl, ds_<model>_..._v2.pkl,
    ds_model_<model>_detector_...pkl); the person is each photo's folder (db_path/<person>/<photo>).
    Every row is checked before anything is stored, then all is stored in one transaction. Running
    it again adds nothing. DeepFace's Dlib model is facesearch's own dlib-resnet-v1 (recognize with
    it at once); other models become deepface:<Name>. A new domain gets the file's model, and so
    does an existing one without any face yet.
    """
    import time
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from .. import deepface_pkl, names
    from ..store import database_url, prepare
    from ..store.gallery import HNSW_MAX_DIMS
    from ..store.pkl import uses_pkl

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

        imported, domain_model = gallery.run(_store_pkl_faces(gallery.gallery, domain, model,
                                                              contents.faces, progress))

    dim = contents.dim or 0
    report = {
        "file": str(file), "domain": domain, "generation": contents.generation, "rows": contents.rows,
        "imported": imported, "already_there": len(contents.faces) - imported,
        "no_face_rows": contents.no_face, "several_faces": contents.several_faces,
        "other_faces_skipped": contents.other_faces, "people": len(contents.people),
        "format": contents.format, "model": model, "deepface_model": deepface_model,
        "dimensions": dim, **_name_options(file),
        "domain_model": domain_model,
        "index": "none" if pkl or dim > HNSW_MAX_DIMS else "hnsw",
        "seconds": {"read": round(read - started, 2), "store": round(time.perf_counter() - read, 2)},
    }
    if calibrate and domain_model == model:
        cal = _calibrate(obj, contents.faces, model, photos)
        if "skipped" not in cal:  # the domain recognizes at it from now on
            with obj.gallery() as gallery:
                gallery.set_domain_threshold(domain, cal["threshold"])
        report["calibration"] = cal
    if as_json:
        emit(report)
        return
    click.echo(f"domain {domain}: {contents.rows} rows of {file.name} (DeepFace {deepface_model}, "
               f"{_describe(contents)}): {imported} faces imported, "
               f"{report['already_there']} already there, {contents.no_face} rows without a face "
               f"skipped; {len(contents.people)} people; model {model} ({dim}-d)")
    if contents.several_faces:
        click.echo(f"  {contents.several_faces} photo(s) had several faces: the largest of each was "
                   f"imported, {contents.other_faces} other face(s) skipped", err=True)
    if domain_model != model:
        click.echo(f"  domain {domain} recognizes with its model {domain_model}, not {model}: the "
                   f"imported faces are kept but not searched. Import into a new domain (or one "
                   f"without faces) to recognize with them", err=True)
    cal = report.get("calibration")
    if isinstance(cal, dict):
        click.echo("  " + _calibration_text(cal, domain), err=True)
    if dim > HNSW_MAX_DIMS and not pkl:
        click.echo(f"  no vector index: pgvector's HNSW indexes at most {HNSW_MAX_DIMS} dimensions, so "
                   f"searches of this {dim}-d model compare every face (exact, slower on big domains)",
                   err=True)


cli.add_command(import_deepface, "import-pkl")  # its name before DeepFace left PKL

CALIBRATION_PHOTOS = 200  # gallery photos re-embedded by facesearch, spread over the file


def _calibrate(obj: Context, faces: list[PklFace], model: str, photos: Path | None) -> dict:
    """facesearch's embeddings of some of the gallery's own photos against DeepFace's: the
    offset between the two pipelines and the threshold it calls for (deepface_calibrate)."""
    import numpy as np

    from ..deepface_calibrate import MIN_PHOTOS, calibrate

    def where(identity: str) -> Path:
        parts = identity.replace("\\", "/").split("/")
        return photos / parts[-2] / parts[-1] if photos is not None else Path(identity)

    found = [(f, where(f.identity)) for f in faces]
    found = [(f, p) for f, p in found if p.is_file()]
    threshold = obj.settings.recognize_threshold(model)
    if len(found) < MIN_PHOTOS:
        return {"photos": len(found), "threshold": threshold, "skipped":
                f"only {len(found)} of the gallery's photos are where the file says; give --photos "
                "DIR (DIR/<person>/<photo>) to calibrate"}
    sample = found[:: max(1, len(found) // CALIBRATION_PHOTOS)][:CALIBRATION_PHOTOS]
    theirs, ours = [], []
    with obj.pool(len(sample), model) as pool:
        futures = [(f, obj.analyze(pool, p, model=model, largest=True)) for f, p in sample]
        for f, future in futures:
            try:
                analysis = pool.result(future)
            except FacesearchError:
                continue
            if analysis.faces:
                theirs.append(f.embedding)
                ours.append(analysis.faces[0].embedding)
    gallery = np.stack([f.embedding for f in faces])
    labels = np.array([f.person for f in faces])
    cal = calibrate(theirs, ours, gallery, labels, threshold)
    if cal is None:
        return {"photos": len(ours), "threshold": threshold,
                "skipped": f"facesearch found a face in only {len(ours)} of {len(sample)} photos"}
    return {"photos": cal.photos, "offset_median": cal.offset_median, "offset_p90": cal.offset_p90,
            "model_threshold": threshold, "threshold": cal.threshold, "capped": cal.capped}


def _calibration_text(cal: dict, domain: str) -> str:
    if "skipped" in cal:
        return (f"threshold not calibrated ({cal['skipped']}): expect facesearch to name fewer "
                "faces than DeepFace did; re-enrolling from the photos avoids that")
    return (f"DeepFace's embeddings of {cal['photos']} of these photos are {cal['offset_median']} "
            f"(median; 90 % within {cal['offset_p90']}) from facesearch's: the gallery recognizes at "
            f"threshold {cal['threshold']} instead of {cal['model_threshold']}"
            + (" (held there to keep strangers out)" if cal["capped"] else "")
            + f" (set on domain {domain}; change it with facesearch domains update {domain} "
            "--threshold)"
            + ". Re-enrolling from the photos (facesearch set-model / enroll) matches better: "
            "see the README")


def _describe(contents: PklContents) -> str:
    return (f"PKL generation {contents.generation}" if contents.format == "pkl"
            else f"{contents.format} datastore")


def _name_options(file: Path) -> dict[str, object]:
    """The find() options the file's name records (detector, alignment, ...), as DeepFace made it."""
    from .. import deepface_files

    name = deepface_files.parse_filename(file.name)
    if name is None:
        return {"detector": None}
    return {"detector": name.detector, "aligned": name.aligned, "normalization": name.normalization,
            "expand": name.expand}


async def _store_pkl_faces(g: Gallery, domain: str, model: str, faces: list[PklFace],
                           progress: Callable[[int], object]) -> tuple[int, str]:
    """Create the domain (of ``model``) and people, store the faces: one transaction. Returns how
    many were new, and the domain's model (an existing domain without faces takes ``model``)."""
    from ..store import NewFace

    async with g.conn.transaction():
        dom = await g.create_domain(domain, model=model, exist_ok=True)
        if dom.model != model and not await g.face_models(dom):
            dom = await g.set_domain_model(domain, model)
        people = await g.ensure_people(dom, {f.person for f in faces})
        done = await g.enrolled_hashes(dom, model)
        new = [f for f in faces if (people[f.person], f.photo_key) not in done]
        progress(len(faces) - len(new))
        ids = await g.add_faces(dom, model, [
            NewFace(person_id=people[f.person], embedding=f.embedding, box=f.box, score=None,
                    photo_sha256=f.photo_key, source=f.identity, source_hash=f.source_hash)
            for f in new], progress=progress)
    return sum(i is not None for i in ids), dom.model


# As deepface_files has them (not imported here: the CLI starts without NumPy).
_FORMATS = ("npz", "feather", "parquet", "pkl")
_CURRENT_DEEPFACE = "0.0.103"


@cli.command("export-deepface")
@click.option("--domain", "-d", required=True)
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="DeepFace's db_path (the file is named there as DeepFace looks for it), or the "
                   "file to write (replaced atomically).")
@click.option("--format", "-f", "fmt", type=click.Choice(_FORMATS),
              help="npz, feather, parquet (DeepFace 0.0.102 on) or pkl (up to 0.0.101); default: "
                   "what --deepface-version reads by default.")
@click.option("--deepface-version",
              help="The DeepFace that will read the file: it decides the format, the file name and "
                   f"the rows' layout. Default: {_CURRENT_DEEPFACE} (export-pkl: 0.0.101, the last "
                   "that reads PKL).")
@click.option("--model", "-m", "model_option", metavar="NAME",
              help="Which model's faces (dlib-resnet-v1, deepface:ArcFace, or DeepFace's name); "
                   "default: the domain's model (or the only model it has faces of).")
@click.option("--detector", default="opencv", show_default=True,
              help="The detector_backend DeepFace.find will be called with (part of the name).")
@click.option("--db-path", type=click.Path(file_okay=False, path_type=Path),
              help="db_path exactly as DeepFace.find will be given it (identities are joined to "
                   "it); default: --out if a folder, else its folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def export_deepface(obj: Context, domain: str, out: Path, fmt: str | None,
                    deepface_version: str | None,
                    model_option: str | None, detector: str, db_path: Path | None,
                    as_json: bool) -> None:
    """Write a domain's faces as a DeepFace datastore that DeepFace.find reads.

    \b
    DeepFace 0.0.102 on: ds_model_<m>_detector_<d>_aligned_normalization_base_expand_0.npz
    (or .feather / .parquet); 0.0.90-0.0.101 the same name in .pkl; older versions older names.

    Imported faces keep DeepFace's identity path and hash. Faces enrolled from a people folder
    are named by their path under --db-path; where that file is the same photo, it gets DeepFace's
    own hash of it, so DeepFace.find (refresh_database=True, its default) uses the row as it is.
    Other faces get an invented path: DeepFace would drop them unless called with
    refresh_database=False. Embeddings are L2-normalized: compare them by cosine distance.
    """
    from .. import deepface_files, deepface_pkl

    deepface_version = deepface_version or deepface_files.CURRENT_DEEPFACE
    formats = deepface_files.formats_read_by(deepface_version)
    fmt = fmt or formats[0]
    if fmt not in formats:
        raise click.UsageError(f"DeepFace {deepface_version} reads {' or '.join(formats)}, not {fmt}")
    with obj.gallery() as gallery:
        dom = gallery.get_domain(domain)
        model = _export_model(gallery.face_models(dom), dom.model, domain, model_option)
        faces_ = gallery.export_faces(dom, model)
    try:  # the name DeepFace reads, if DeepFace has the model (sface-2021dec is ours)
        deepface_name: str | None = deepface_pkl.deepface_model(model)
    except deepface_pkl.InvalidPkl:
        deepface_name = None
    if out.is_dir():
        if deepface_name is None:
            raise FacesearchError(f"DeepFace has no model {model}: give --out a file name")
        name = deepface_files.DatastoreName(deepface_name, detector, format=fmt)
        out = out / name.filename(deepface_version)
    elif not out.parent.is_dir():
        raise FacesearchError(f"cannot write {out}: no folder {out.parent}")
    root = db_path if db_path is not None else out.parent
    rows, reused = _export_rows(faces_, str(root), deepface_files.generation_read_by(deepface_version))
    deepface_pkl.write_bytes_atomically(out, deepface_files.serialize(rows, fmt))
    people_ = len({f.person for f in faces_})
    expected = (None if deepface_name is None else deepface_files.DatastoreName(
        deepface_name, detector, format=fmt).filename(deepface_version))
    if as_json:
        emit({"file": str(out), "domain": domain, "model": model, "deepface_model": deepface_name,
              "format": fmt, "deepface_version": deepface_version, "faces": len(rows),
              "people": people_, "deepface_file_name": expected, "reusable_rows": reused,
              "needs_refresh_database_false": reused < len(rows)})
        return
    click.echo(f"wrote {len(rows)} faces of {people_} people (model {model}, {fmt}) from {domain} "
               f"to {out}")
    if expected is None:
        click.echo(f"  DeepFace has no model {model}: it will not read these rows as its own",
                   err=True)
    elif out.name != expected:
        click.echo(f"  DeepFace {deepface_version}.find reads it in its db_path only as {expected}",
                   err=True)
    if reused < len(rows):
        click.echo(f"  {len(rows) - reused} of {len(rows)} faces have no photo of theirs under "
                   f"{root}: call DeepFace.find(..., refresh_database=False), or DeepFace drops "
                   "those rows and embeds the folder's photos again", err=True)


@cli.command("export-pkl", params=export_deepface.params)
@click.pass_context
def export_pkl(ctx: click.Context, fmt: str | None, deepface_version: str | None,
               **options: object) -> None:
    """export-deepface under its name from before DeepFace left PKL: it still writes PKL (for
    DeepFace 0.0.101) unless --format or --deepface-version says otherwise."""
    if deepface_version is None and fmt in (None, "pkl"):
        deepface_version = "0.0.101"
    ctx.invoke(export_deepface, fmt=fmt, deepface_version=deepface_version, **options)


def _export_model(counts: dict[str, int], domain_model: str, domain: str,
                  option: str | None) -> str:
    from .. import deepface_pkl
    from ..models import MODEL_DIMS

    if option is not None:
        model = (option if option in MODEL_DIMS
                 else deepface_pkl.facesearch_model(deepface_pkl.deepface_model(option)))
    elif counts.get(domain_model):
        model = domain_model
    elif len(counts) == 1:
        model = next(iter(counts))
    elif not counts:
        raise FacesearchError(f"domain {domain!r} has no faces to export")
    else:
        raise click.UsageError(f"domain {domain!r} has faces of several models "
                               f"({', '.join(counts)}): choose one with --model")
    if not counts.get(model):
        raise FacesearchError(f"domain {domain!r} has no faces of model {model}")
    return model


def _export_rows(faces_: list, root: str, generation: int) -> tuple[list[dict], int]:
    """DeepFace's rows for ``faces_`` and how many DeepFace will keep on a refresh: imported
    faces and enrolled ones whose photo is at their path under ``root``, unchanged."""
    import os

    from .. import deepface_pkl

    rows, reused = [], 0
    for f in faces_:
        identity, photo_hash = f.source, f.source_hash
        if identity is not None and photo_hash is None:  # enrolled from a folder: relative path
            identity = os.path.join(root, *identity.split("/"))
            photo_hash = _deepface_hash(identity, f.photo_sha256)
        if identity is None:
            identity = os.path.join(root, deepface_pkl.path_part(f.person), f"facesearch-{f.id}.jpg")
        if photo_hash is not None:
            reused += 1
        rows.append(deepface_pkl.deepface_row(identity, photo_hash or f.photo_sha256, f.embedding,
                                              f.box))
    if generation < 3:  # lists, not dicts; generation 1 without the box
        rows = [[r["identity"], r["embedding"]] + ([] if generation == 1 else [
            r["target_x"], r["target_y"], r["target_w"], r["target_h"]]) for r in rows]
    return rows, reused


def _deepface_hash(path: str, photo_sha256: str) -> str | None:
    """DeepFace's hash of the photo at ``path`` (SHA-1 of "size-ctime-mtime", its
    ``image_utils.find_image_hash`` since 0.0.86) if it is the photo enrolled, else None."""
    import hashlib
    import os

    try:
        with open(path, "rb") as f:
            same = hashlib.sha256(f.read()).hexdigest() == photo_sha256
        st = os.stat(path)
    except OSError:
        return None
    if not same:
        return None
    return hashlib.sha1(f"{st.st_size}-{st.st_ctime}-{st.st_mtime}".encode()).hexdigest()
