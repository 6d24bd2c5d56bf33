"""Domains and their models: ``domains list|create|delete|set-model``."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import FacesearchError
from . import Context, cli, emit


@cli.group()
def domains() -> None:
    """List, create and delete domains (separate galleries, e.g. one per tenant), and move one to
    another model.

    Each domain has a model, chosen when it is created (default FACESEARCH_MODEL): its photos are
    embedded and searched with it. Photos are not kept, so moving a domain to another model means
    enrolling its photos again (set-model).
    """


@domains.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def domains_list(obj: Context, as_json: bool) -> None:
    """Each domain with its model and counts."""
    with obj.gallery() as gallery:
        rows = gallery.list_domains()
    if as_json:
        emit([{"name": d.name, "model": d.model, "people": d.people, "faces": d.faces,
               "created_at": d.created_at.isoformat(), "keep_unknown": d.keep_unknown,
               "threshold": obj.settings.threshold_of(d), "own_threshold": d.threshold is not None,
               "shard": d.shard}
              for d in rows])
        return
    for d in rows:
        own = "" if d.threshold is None else f"\tthreshold {d.threshold}"
        own += "" if d.shard is None else f"\tshard {d.shard}"
        click.echo(f"{d.name}\t{d.model}\t{d.people} people\t{d.faces} faces{own}")


@domains.command("create")
@click.argument("name")
@click.option("--model", "-m", metavar="MODEL",
              help="The model its photos are embedded and searched with (default: FACESEARCH_MODEL, "
                   "sface-2021dec unless set).")
@click.option("--keep-unknown", is_flag=True, help="Keep the faces recognize matches to nobody, to "
              "cluster and name later (biometric data of people never enrolled).")
@click.option("--shard", metavar="SHARD", help="Keep its faces on this shard (facesearch shards "
              "add); default: on the primary.")
@click.pass_obj
def domains_create(obj: Context, name: str, model: str | None, keep_unknown: bool,
                   shard: str | None) -> None:
    """Create a domain of a model (on a shard with --shard)."""
    from ..config import usable_model
    from ..store import unknown

    model = usable_model(obj.settings.model if model is None else model)
    with obj.gallery() as gallery:
        if keep_unknown:
            unknown.require_postgres(gallery.gallery)
        if shard is None:
            gallery.create_domain(name, model=model)
        else:  # PKL mode has no shards
            from ..store import shards

            shards.require_postgres(gallery.gallery)
            gallery.create_domain(name, model=model, shard=shard)
        if keep_unknown:
            gallery.run(unknown.set_keep_unknown(gallery.gallery, name, True))
    where = f", on shard {shard}" if shard else ""
    click.echo(f"created domain {name} (model {model}{', keeps unknown faces' if keep_unknown else ''}"
               f"{where})")


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


SHOWN = 20  # people named in the human summary (--json lists them all)


@domains.command("set-model")
@click.argument("domain")
@click.argument("model")
@click.argument("people_dir", metavar="PEOPLE_DIR",
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--yes", is_flag=True, help="Switch without asking even if some people of the domain "
              "get no face under MODEL (their faces of the old model are deleted all the same).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def domains_set_model(obj: Context, domain: str, model: str, people_dir: Path, yes: bool,
                      as_json: bool) -> None:
    """Move DOMAIN to MODEL by enrolling its photos again from PEOPLE_DIR.

    Photos are not kept, so moving a domain to another model means enrolling its photos again.
    PEOPLE_DIR holds one folder of photos per person, as enroll takes them
    (PEOPLE_DIR/<person>/<photo>): each photo is enrolled under MODEL for the person its folder
    names. People are matched by name and keep their ids and metadata; a new name is a new person.
    Until the switch the domain keeps answering with its current model. Then it switches to MODEL,
    and its faces of any other model are deleted.

    Interrupted, run it again: photos already enrolled under MODEL are skipped. The summary names
    the people left without a face under MODEL, to enroll them.
    """
    from .. import names
    from ..config import usable_model
    from .photos import EnrollReport, enroll_items, people_photos

    names.domain_name(domain)
    usable_model(model)
    items = people_photos((people_dir,), None)
    report = EnrollReport(photos=len(items))
    with obj.gallery() as gallery:
        dom = gallery.get_domain(domain)
        previous = dom.model
        with obj.pool(len(items), model) as pool:
            enroll_items(obj, pool, gallery, dom, model, items, report,
                         f"enrolling {domain} under {model}", root=people_dir)
        if report.enrolled + report.already_enrolled == 0:
            raise FacesearchError(f"no photo of {people_dir} could be enrolled under {model} ("
                                  f"{len(report.no_face)} without a face, {len(report.unreadable)} "
                                  f"unreadable): domain {domain} was left on {previous}")
        people = gallery.list_people(dom, limit=10**9)
        with_faces = {f.person_id for f in gallery.list_faces(dom) if f.model == model}
        faceless = [p.name for p in people if p.id not in with_faces]
        others = {m: n for m, n in gallery.face_models(dom).items() if m != model}
        if faceless and others and not yes:
            listed = ", ".join(faceless[:SHOWN]) + (" ..." if len(faceless) > SHOWN else "")
            click.echo(f"{len(faceless)} of {len(people)} people of {domain} have no photo enrolled "
                       f"under {model}: {listed}", err=True)
            if not click.confirm(f"Switch {domain} to {model} anyway, deleting its faces of "
                                 f"{', '.join(others)}?", err=True):
                raise click.Abort()
        dom = gallery.set_domain_model(domain, model)
        deleted = {m: gallery.delete_model_faces(dom, m) for m in others}
        if deleted:
            gallery.purge(dom)

    refused = len(report.no_face) + len(report.unreadable)
    if as_json:
        emit({"domain": domain, "model": model, "previous_model": previous, **report.as_dict(),
              "refused": refused, "deleted": deleted, "people_without_faces": faceless})
        return
    gone = ", ".join(f"{n} of {m}" for m, n in deleted.items()) or "none"
    click.echo(f"domain {domain} is on {model} (was {previous}): {report.photos} photos, "
               f"{report.enrolled} faces enrolled, {report.already_enrolled} already enrolled, "
               f"{refused} refused ({len(report.no_face)} without a face, {len(report.unreadable)} "
               f"unreadable); old faces deleted: {gone}; {len(faceless)} people without a face "
               f"under {model}")
    report.print_details()
    for name in faceless[:SHOWN]:
        click.echo(f"  no face under {model}: {name}", err=True)
    if len(faceless) > SHOWN:
        click.echo(f"  no face under {model}: ... and {len(faceless) - SHOWN} more (--json lists "
                   "them all)", err=True)
