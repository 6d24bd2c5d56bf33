"""The people of a domain and their single faces: ``people list|rename|delete``, ``faces
list|delete``."""

from __future__ import annotations

import click

from . import Context, cli, emit

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
