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
    from ..deepface_pkl import PklFace
    from ..store import Gallery


# -- DeepFace PKL files --------------------------------------------------------------------------

_DEEPFACE_MODELS = ("VGG-Face, Facenet, Facenet512, OpenFace, DeepFace, DeepID, ArcFace, Dlib, SFace, "
                    "GhostFaceNet")


@cli.command("import-pkl")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--domain", "-d", required=True,
              help="Domain to import into (created if new, with the file's model).")
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
        "model": model, "deepface_model": deepface_model, "dimensions": dim,
        "domain_model": domain_model,
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
    if domain_model != model:
        click.echo(f"  domain {domain} recognizes with its model {domain_model}, not {model}: the "
                   f"imported faces are kept but not searched. Import into a new domain (or one "
                   f"without faces) to recognize with them", err=True)
    if dim > HNSW_MAX_DIMS and not pkl:
        click.echo(f"  no vector index: pgvector's HNSW indexes at most {HNSW_MAX_DIMS} dimensions, so "
                   f"searches of this {dim}-d model compare every face (exact, slower on big domains)",
                   err=True)


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


@cli.command("export-pkl")
@click.option("--domain", "-d", required=True)
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The file to write (replaced atomically), e.g. in DeepFace's db_path: "
                   "ds_model_<m>_detector_<d>_aligned_normalization_base_expand_0.pkl.")
@click.option("--model", "-m", "model_option", metavar="NAME",
              help="Which model's faces (dlib-resnet-v1, deepface:ArcFace, or DeepFace's name); "
                   "default: the domain's model (or the only model it has faces of).")
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

    from .. import deepface_pkl
    from ..models import MODEL_DIMS

    if not out.parent.is_dir():
        raise FacesearchError(f"cannot write {out}: no folder {out.parent}")
    root = str(out.parent if db_path is None else db_path)
    with obj.gallery() as gallery:
        dom = gallery.get_domain(domain)
        counts = gallery.face_models(dom)
        if model_option is not None:
            model = (model_option if model_option in MODEL_DIMS
                     else deepface_pkl.facesearch_model(deepface_pkl.deepface_model(model_option)))
        elif counts.get(dom.model):
            model = dom.model
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
    try:  # the file name DeepFace reads, if DeepFace has the model (sface-2021dec is ours)
        deepface_name: str | None = deepface_pkl.deepface_model(model)
        expected: str | None = deepface_pkl.export_filename(model)
    except deepface_pkl.InvalidPkl:
        deepface_name = expected = None
    if as_json:
        emit({"file": str(out), "domain": domain, "model": model, "deepface_model": deepface_name,
              "faces": len(rows), "people": people_, "deepface_file_name": expected})
        return
    click.echo(f"wrote {len(rows)} faces of {people_} people (model {model}) from {domain} to {out}")
    if expected is None:
        click.echo(f"  DeepFace has no model {model}: it will not read these rows as its own",
                   err=True)
    elif not out.name.startswith(expected.split("_detector_")[0] + "_detector_"):
        click.echo(f"  DeepFace.find reads it in its db_path as {expected} (with its default "
                   "detector opencv; put yours in the name)", err=True)
