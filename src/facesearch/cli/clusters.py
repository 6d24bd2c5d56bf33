"""Unknown faces and the audit: ``clusters list|name|discard``, ``cluster DIR``, ``audit``, and
``domains update --keep-unknown``. PostgreSQL only (in PKL mode they exit with a clear error)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import FacesearchError
from . import IMAGE_SUFFIXES, Context, cli, emit
from .domains import domains

if TYPE_CHECKING:
    from ..store import BlockingGallery


def _cluster_dict(c: Any) -> dict:
    return {"id": c.id, "size": len(c.faces), "cohesion": c.cohesion,
            "face_ids": [f.id for f in c.faces]}


@domains.command("update")
@click.argument("name")
@click.option("--keep-unknown/--no-keep-unknown", default=None, help=(
    "Keep the faces recognize matches to nobody, to cluster and name later (biometric data of "
    "people never enrolled; off by default)."))
@click.option("--threshold", type=click.FloatRange(0, 2), help=(
    "The domain's own recognize threshold (cosine distance), e.g. what import-deepface measured "
    "for a gallery DeepFace embedded."))
@click.option("--model-threshold", is_flag=True, help="Back to the threshold of the domain's model.")
@click.pass_obj
def domains_update(obj: Context, name: str, keep_unknown: bool | None, threshold: float | None,
                   model_threshold: bool) -> None:
    """Change a domain's settings."""
    from ..store import unknown

    if keep_unknown is None and threshold is None and not model_threshold:
        raise click.UsageError("nothing to change: give --[no-]keep-unknown, --threshold or "
                               "--model-threshold")
    if threshold is not None and model_threshold:
        raise click.UsageError("give --threshold or --model-threshold, not both")
    with obj.gallery() as gallery:
        if keep_unknown is not None:
            _run(gallery, unknown.set_keep_unknown, name, keep_unknown)
            click.echo(f"domain {name}: keep_unknown {'on' if keep_unknown else 'off'}")
        if threshold is not None or model_threshold:
            dom = gallery.set_domain_threshold(name, threshold)
            click.echo(f"domain {name}: recognize threshold {obj.settings.threshold_of(dom)}"
                       + (" (its model's)" if dom.threshold is None else ""))


@cli.group()
def clusters() -> None:
    """Unknown faces grouped into candidate people (domains with keep_unknown): list them, name
    one (its faces become a person's), discard one."""


def _run(gallery: BlockingGallery, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """One of store.unknown's functions on a blocking gallery (in PKL mode they raise NotInPkl)."""
    return gallery.run(fn(gallery.gallery, *args, **kwargs))


@clusters.command("list")
@click.option("--domain", "-d", required=True)
@click.option("--min-faces", type=click.IntRange(1), default=2, show_default=True)
@click.option("--recluster", is_flag=True, help="Cluster every unassigned face again first.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def clusters_list(obj: Context, domain: str, min_faces: int, recluster: bool, as_json: bool) -> None:
    """The domain's clusters, largest first."""
    from ..store import unknown

    with obj.gallery() as gallery:
        dom = gallery.get_domain(domain)
        if recluster:
            _run(gallery, unknown.recluster, dom)
        found = _run(gallery, unknown.list_clusters, dom, min_faces=min_faces, limit=10**6)
        total = _run(gallery, unknown.count_unassigned, dom)
    if as_json:
        emit({"domain": domain, "unassigned_faces": total, "clusters": [_cluster_dict(c) for c in found]})
        return
    click.echo(f"{domain}: {total} unassigned faces, {len(found)} clusters of {min_faces}+ faces")
    for c in found:
        tight = "" if c.cohesion is None else f"\tcohesion {c.cohesion:.3f}"
        ids = ", ".join(str(f.id) for f in c.faces)
        click.echo(f"cluster {c.id}\t{len(c.faces)} faces{tight}\tfaces {ids}")


@clusters.command("name")
@click.argument("cluster_id", type=int)
@click.argument("person")
@click.option("--domain", "-d", required=True)
@click.option("--existing", is_flag=True, help="PERSON is the id or name of an existing person.")
@click.pass_obj
def clusters_name(obj: Context, cluster_id: int, person: str, domain: str, existing: bool) -> None:
    """Name cluster CLUSTER_ID: its faces become PERSON's enrolled faces (created if new)."""
    from ..store import unknown

    who: int | str = int(person) if existing and person.isdigit() else person
    with obj.gallery() as gallery:
        dom = gallery.get_domain(domain)
        pid, ids = _run(gallery, unknown.name_cluster, dom, cluster_id, who, create=not existing)
        p = gallery.get_person(dom, pid)
    click.echo(f"cluster {cluster_id} is {p.name} (person {pid}): {sum(i is not None for i in ids)} "
               f"faces enrolled, {p.faces} in all")


@clusters.command("discard")
@click.argument("cluster_id", type=int)
@click.option("--domain", "-d", required=True)
@click.pass_obj
def clusters_discard(obj: Context, cluster_id: int, domain: str) -> None:
    """Delete a cluster's faces (embeddings and thumbnails)."""
    from ..store import unknown

    with obj.gallery() as gallery:
        n = _run(gallery, unknown.discard_cluster, gallery.get_domain(domain), cluster_id)
    click.echo(f"discarded cluster {cluster_id}: {n} faces deleted")


@cli.command("cluster")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--domain", "-d", required=True, help="A domain with keep_unknown on.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def cluster_folder(obj: Context, folder: Path, domain: str, as_json: bool) -> None:
    """Cluster the faces of every photo under FOLDER in one go, for a first look: faces that match
    nobody of the domain become its unassigned faces, then all of them are clustered again.
    Prints each cluster with the photos its faces came from."""
    from tqdm import tqdm

    from ..store import unknown

    photos = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                    and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not photos:
        raise FacesearchError(f"no photos under {folder}")
    s = obj.settings
    source: dict[int, str] = {}  # unassigned face id -> photo
    matched = failed = 0
    with obj.pool(len(photos), warm=True) as pool, obj.gallery() as gallery:
        dom = gallery.get_domain(domain)
        if not dom.keep_unknown:
            raise FacesearchError(f"domain {domain} does not keep unknown faces: turn it on with "
                                  f"'facesearch domains update {domain} --keep-unknown' first")
        threshold = s.threshold_of(dom)
        window = pool.workers * 4
        futures = {}
        with tqdm(total=len(photos), desc=f"clustering {folder.name}", unit="photo", file=sys.stderr,
                  disable=None) as bar:
            for i, photo in enumerate(photos):
                futures[photo] = pool.submit(photo.read_bytes(), max_pixels=s.max_pixels,
                                             max_faces=s.max_faces, min_face=s.min_face,
                                             thumbnails=s.thumbnails, model=dom.model)
                if len(futures) < window and i < len(photos) - 1:
                    continue
                for path, future in futures.items():
                    try:
                        analysis = pool.result(future)
                    except FacesearchError as exc:
                        failed += 1
                        click.secho(f"error: {path}: {exc.message}", err=True, fg="red")
                        bar.update()
                        continue
                    results = gallery.search(dom, dom.model, [f.embedding for f in analysis.faces],
                                             k=1, threshold=threshold)
                    matched += sum(bool(r) for r in results)
                    sha = hashlib.sha256(path.read_bytes()).digest()
                    faces = [unknown.UnknownFace(f.embedding, (f.box.x, f.box.y, f.box.w, f.box.h),
                                                 f.score, sha, f.thumbnail)
                             for f, r in zip(analysis.faces, results, strict=True) if not r]
                    ids = _run(gallery, unknown.add_unknown, dom, faces,
                               max_faces=s.unknown_max_faces, max_days=s.unknown_max_days)
                    source |= dict.fromkeys(ids, str(path.relative_to(folder)))
                    bar.update()
                futures = {}
        _run(gallery, unknown.recluster, dom)
        found = _run(gallery, unknown.list_clusters, dom, min_faces=1, limit=10**6)
    groups = [{**_cluster_dict(c), "photos": [source.get(f.id) for f in c.faces]} for c in found]
    if as_json:
        emit({"domain": domain, "photos": len(photos), "failed": failed, "matched_faces": matched,
              "new_faces": len(source), "clusters": groups})
        return
    several = [g for g in groups if g["size"] > 1]
    click.echo(f"{len(photos)} photos: {len(source)} unknown faces kept, {matched} faces matched "
               f"known people, {failed} photos failed; {len(several)} clusters of 2+ faces, "
               f"{len(groups) - len(several)} lone faces")
    for g in several:
        shown = ", ".join(p or f"face {i}" for p, i in zip(g["photos"], g["face_ids"], strict=True))
        click.echo(f"cluster {g['id']}\t{g['size']} faces\t{shown}")
    click.echo(f"name one with: facesearch clusters name <cluster> <person> --domain {domain}")


@cli.command("audit")
@click.option("--domain", "-d", required=True)
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True,
              help="Findings of each kind.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def audit(obj: Context, domain: str, limit: int, as_json: bool) -> None:
    """What is likely wrong with a domain's gallery: faces far from the rest of their person's
    (mislabeled?), pairs of people closer than the recognize threshold (the same person, or
    look-alikes), people with a single face."""
    from ..audit import audit_report
    from ..store import unknown

    with obj.gallery() as gallery:
        dom = gallery.get_domain(domain)
        face_ids, person_ids, emb, people = _run(gallery, unknown.gallery_embeddings, dom)
    report = audit_report(face_ids, person_ids, emb, people, dom.model,
                          obj.settings.threshold_of(dom), limit)
    if as_json:
        emit(report)
        return
    click.echo(f"{domain}: {report['faces']} faces of {report['people']} people ({dom.model})")
    click.echo(f"likely mislabeled ({len(report['outliers'])}; far from their person's other faces, "
               f"over {report['outlier_cut']}):")
    for o in report["outliers"]:
        near = ("" if o["nearest_person"] is None
                else f"; nearer {o['nearest_person']['name']} ({o['nearest_distance']:.3f})")
        click.echo(f"  face {o['face_id']} of {o['person']['name']}: {o['distance']:.3f}{near}")
    click.echo(f"likely the same person ({len(report['duplicates'])}; faces under "
               f"{report['duplicate_threshold']}):")
    for d in report["duplicates"]:
        a, b = d["people"]
        click.echo(f"  {a['name']} (person {a['id']}) and {b['name']} (person {b['id']}): "
                   f"{d['distance']:.3f} on average, closest faces {d['face_ids'][0]} and "
                   f"{d['face_ids'][1]} at {d['nearest_distance']:.3f}")
    click.echo(f"people with a single face ({len(report['single_face'])}):")
    for p in report["single_face"]:
        click.echo(f"  {p['person']['name']} (person {p['person']['id']}), face {p['face_id']}")
