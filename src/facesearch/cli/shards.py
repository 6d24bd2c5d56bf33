"""Shards: PostgreSQL servers holding whole domains (``shards add|list``, store/shards.py)."""

from __future__ import annotations

import click

from . import Context, cli, emit


@cli.group()
def shards() -> None:
    """Attach PostgreSQL servers that hold whole domains (postgres_fdw), and list them.

    A domain created with ``domains create NAME --shard SHARD`` keeps its faces and their vector
    index on that shard; searches of it run there. People, keys and domains stay on the primary
    (FACESEARCH_DATABASE_URL), which needs postgres_fdw: not the embedded server. See
    docs/DEPLOY.md, "Shards".
    """


@shards.command("add")
@click.argument("name")
@click.argument("url")
@click.pass_obj
def shards_add(obj: Context, name: str, url: str) -> None:
    """Attach the server at URL as shard NAME (checks it answers and has pgvector)."""
    from ..store import shards as store_shards

    with obj.gallery() as gallery:
        shard = gallery.run(store_shards.add_shard(store_shards.require_postgres(gallery.gallery), name, url))
    click.echo(f"added shard {shard.name} ({shard.url}): create domains on it with "
               f"'facesearch domains create NAME --shard {shard.name}'")


@shards.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def shards_list(obj: Context, as_json: bool) -> None:
    """Each shard: whether it answers, its domains and their faces."""
    from ..store import shards as store_shards

    with obj.gallery() as gallery:
        rows = gallery.run(store_shards.list_shards(store_shards.require_postgres(gallery.gallery)))
    if as_json:
        emit([{"name": s.name, "url": s.url, "reachable": s.reachable, "domains": s.domains,
               "faces": s.faces, "error": s.error, "created_at": s.created_at.isoformat()}
              for s in rows])
        return
    if not rows:
        click.echo("no shards: every domain is on the primary")
    for s in rows:
        state = f"{s.faces} faces" if s.reachable else f"UNREACHABLE: {s.error}"
        click.echo(f"{s.name}\t{s.url}\t{s.domains} domains\t{state}")
