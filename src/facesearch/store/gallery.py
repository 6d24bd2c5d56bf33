"""The gallery: domains, people, their face embeddings and API keys in PostgreSQL + pgvector.

All SQL lives here, written once and async: the HTTP service runs it on pooled connections, the
CLI, tests and benchmarks through :class:`facesearch.store.BlockingGallery`. Identifiers that end
up in DDL or in index-matching predicates (partition names, model ids, dimensions) are integers we
generated, never user text.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from .. import names
from ..errors import Conflict, InvalidName, NotFound
from ..models import model_dim
from . import bulk

# Each domain's HNSW graph (pgvector's defaults) and the candidates a search walks, set for each
# connection (store.connect / store.configure). 100 keeps person-level recall@1 >= 0.99 on 25,000
# clustered faces (bench/bench_scale.py). A denser graph (m 24, ef_construction 200) reached 0.999
# at ef_search 40 with ~30 % fewer page reads, but built 3-4x slower: a 25,000 x 512-d DeepFace
# import went from 19 s to 71 s, so it is not used.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
EF_SEARCH = 100
# Nearest faces fetched before keeping the best face per person: several faces of one person
# must not crowd other people out of the top k.
FACES_PER_MATCH = 4
# Composed search queries kept per model (one per domain and k; see Gallery.search_sql).
SEARCH_QUERIES_KEPT = 10_000
# Faces added at once from which add_faces refreshes the partition's planner statistics.
ANALYZE_BATCH = 1000
# API keys: the secret is shown once; the database keeps its SHA-256 and this many first characters
# ("fsk_" + 8 random ones), enough to tell keys apart in a listing and useless to an attacker.
KEY_PREFIX = "fsk_"
KEY_SHOWN = 12
# key_domain() records a key's use at most this often, so authenticating is a read nearly always.
KEY_TOUCH_SECONDS = 60
# pgvector's HNSW indexes at most this many dimensions; faces of bigger models (DeepFace's 4096-d
# VGG-Face) are stored without one and searched exactly.
HNSW_MAX_DIMS = 2000
# Parallel workers asked for an index build: as many as the server's max_parallel_maintenance_workers
# allows (2 by default). A 25,000-face 512-d build on 2 cores: ~1.7x faster than serial.
PARALLEL_BUILD_WORKERS = 64


# Table locks in one order, so that writers on several replicas never deadlock: a transaction that
# writes faces takes WRITE_LOCK first (the tables its statements would lock one by one, in the order
# they do), and one that creates or drops a faces partition, which locks every table faces refers
# to, takes DDL_LOCK first; that one waits for the writers in flight, and new writers wait for it
# before they hold anything. (Without it a new domain's partition deadlocked with the domain's own
# INSERT made by another replica.)
WRITE_LOCK = "LOCK TABLE domains, people IN ROW EXCLUSIVE MODE"
DDL_LOCK = "LOCK TABLE domains, people, models IN SHARE ROW EXCLUSIVE MODE"


@dataclass(frozen=True)
class Domain:
    id: int
    name: str
    model: str  # what its enrollments embed with and its searches compare under
    keep_unknown: bool = False  # keeps the faces recognize matched to nobody (store/unknown.py)
    threshold: float | None = None  # its own recognize threshold; None: the model's
    shard: str | None = None  # the server its faces are on (store/shards.py); None: this one
    # The primary's WAL position after its last write through the API (read-your-writes on read
    # replicas, store/replicas.py); None: none recorded.
    written_lsn: str | None = None


@dataclass(frozen=True)
class DomainInfo:
    name: str
    people: int
    faces: int
    created_at: datetime
    model: str
    keep_unknown: bool = False
    threshold: float | None = None  # the domain's own (set_domain_threshold); None: the model's
    shard: str | None = None


@dataclass(frozen=True)
class Person:
    id: int
    name: str
    faces: int
    metadata: dict
    created_at: datetime
    thumbnail_face_id: int | None = None  # one of their faces that has a thumbnail


@dataclass(frozen=True)
class NewFace:
    """A face to store: whose, from which photo, where, its embedding and (optionally) a small
    JPEG crop of it."""

    person_id: int
    embedding: np.ndarray
    box: tuple[int, int, int, int]
    score: float | None  # the detector's; None for imported faces
    photo_sha256: bytes
    thumbnail: bytes | None = None
    # Where the photo came from: imported faces keep DeepFace's identity path and its hash of the
    # photo; faces enrolled from a people folder their path relative to it (no hash).
    source: str | None = None
    source_hash: str | None = None


@dataclass(frozen=True)
class ExportedFace:
    """A face with its embedding and origin, as export-pkl writes it."""

    id: int
    person: str
    embedding: np.ndarray
    box: tuple[int, int, int, int]
    photo_sha256: str  # hex
    source: str | None
    source_hash: str | None


@dataclass(frozen=True)
class FaceRow:
    id: int
    person_id: int
    person: str
    model: str
    box: tuple[int, int, int, int]
    score: float | None
    photo_sha256: str
    created_at: datetime
    has_thumbnail: bool = False


@dataclass(frozen=True)
class Match:
    person_id: int
    person: str
    face_id: int
    distance: float


@dataclass(frozen=True)
class ApiKey:
    """A key as listed: never its secret nor its hash."""

    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None


@dataclass
class GalleryCache:
    """What a Gallery learns once per database: share one across the Galleries of a connection pool
    (all on the same database) so a per-request Gallery costs nothing."""

    models: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (id, dim)
    # model -> (domain id, k) -> that domain's composed top-k query
    search_queries: dict[str, dict[tuple[int, int], bytes]] = field(default_factory=dict)
    # (domain id, index name) of sharded domains' HNSW indexes seen on their shard
    shard_indexes: set[tuple[int, str]] = field(default_factory=set)


def _candidates(k: int) -> int:
    """Nearest faces a top-k search fetches (several faces of one person are one match)."""
    return max(int(k) * FACES_PER_MATCH, 20)


def query_vectors(embeddings: Iterable[np.ndarray], dim: int, model: str) -> list[np.ndarray]:
    """Search queries as float32 vectors, each checked to have the model's dimension."""
    queries = [np.asarray(e, dtype=np.float32) for e in embeddings]
    if any(q.shape != (dim,) for q in queries):
        raise ValueError(f"query must have {dim} dimensions for model {model!r}")
    return queries


def _partition(domain_id: int) -> sql.Identifier:
    return sql.Identifier(f"faces_d{int(domain_id)}")


def _index_name(domain: Domain, model_id: int) -> str:
    return f"faces_d{int(domain.id)}_m{int(model_id)}_hnsw"


# A local partition's keys (migration 0011: per partition, so shards can be foreign partitions).
_LOCAL_KEYS = sql.SQL(
    "CONSTRAINT {pkey} PRIMARY KEY (domain_id, id),"
    " CONSTRAINT {photo} UNIQUE (domain_id, person_id, model_id, photo_sha256),"
    " CONSTRAINT {dom} FOREIGN KEY (domain_id) REFERENCES domains (id) ON DELETE CASCADE,"
    " CONSTRAINT {person} FOREIGN KEY (domain_id, person_id) REFERENCES people (domain_id, id)"
    " ON DELETE CASCADE, CONSTRAINT {model} FOREIGN KEY (model_id) REFERENCES models (id)")


def _local_keys(domain_id: int) -> sql.Composed:
    part = f"faces_d{int(domain_id)}"
    return _LOCAL_KEYS.format(**{k: sql.Identifier(f"{part}_{k}") for k in
                                 ("pkey", "photo", "dom", "person", "model")})


def _person_key(person: int | str) -> tuple[str, int | str]:
    """The people column a reference means (an int is an id, a str a name) and its value."""
    if isinstance(person, int) and not isinstance(person, bool):
        return "id", person
    if isinstance(person, str):
        return "name", names.person_name(person)
    raise TypeError(f"a person is an id (int) or a name (str), not {type(person).__name__}")


def _no_person(domain: Domain, column: str, value: int | str) -> NotFound:
    what = f"named {value!r}" if column == "name" else f"with id {value}"
    return NotFound(f"no person {what} in domain {domain.name!r}")


def _literal_like(text: str | None) -> str | None:
    """``text`` for a LIKE pattern that matches it literally: ``%``, ``_`` and the escape
    character ``\\`` (PostgreSQL's default ESCAPE) escaped."""
    if text is None:
        return None
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _key_name(name: str) -> str:
    if isinstance(name, str):
        name = name.strip()
        if 0 < len(name) <= 100 and name.isprintable():
            return name
    raise InvalidName("an API key's name is 1-100 printable characters")


# Columns of a Person, over ``people p``; the face count and the face with a thumbnail read only
# the domain's partition (by its person_id index; a NULL test never reads the TOASTed JPEG).
_PERSON = ("p.id, p.name, (SELECT count(*) FROM faces f WHERE f.domain_id = %(domain)s"
           " AND f.person_id = p.id), p.metadata, p.created_at,"
           " (SELECT min(f.id) FROM faces f WHERE f.domain_id = %(domain)s AND f.person_id = p.id"
           " AND f.thumbnail IS NOT NULL)")
_PEOPLE_WHERE = ("p.domain_id = %(domain)s"
                 " AND (%(search)s::text IS NULL OR p.name ILIKE '%%' || %(search)s || '%%')")
_DOMAIN_INFO = ("SELECT d.name, (SELECT count(*) FROM people p WHERE p.domain_id = d.id),"
                " (SELECT count(*) FROM faces f WHERE f.domain_id = d.id), d.created_at, d.model,"
                " d.keep_unknown, d.recognize_threshold, d.shard FROM domains d")
_KEY = "id, name, prefix, created_at, last_used_at"


class Gallery:
    """Operations on one open async connection (autocommit; multi-statement work uses
    transactions). Cheap to create: one per request on a pooled connection, sharing a cache."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], cache: GalleryCache | None = None) -> None:
        self.conn = conn
        self.cache = GalleryCache() if cache is None else cache

    async def _one(self, query: str, params: Any = None) -> Any:
        cur = await self.conn.execute(query, params)
        return await cur.fetchone()

    async def _all(self, query: str, params: Any = None) -> list[Any]:
        cur = await self.conn.execute(query, params)
        return await cur.fetchall()

    # -- models ----------------------------------------------------------------------------------

    async def model(self, name: str) -> tuple[int, int]:
        """``(model_id, dim)`` of a model, registering it on first use."""
        models = self.cache.models
        if name not in models:
            dim = model_dim(name)
            row = await self._one("SELECT id, dim FROM models WHERE name = %s", (name,))
            if row is None:
                row = await self._one(
                    "INSERT INTO models (name, dim) VALUES (%s, %s) ON CONFLICT (name) DO UPDATE"
                    " SET name = EXCLUDED.name RETURNING id, dim", (name, dim))
            if row[1] != dim:
                raise Conflict(f"model {name!r} is stored with dimension {row[1]}, not {dim}")
            if self.conn.info.transaction_status != TransactionStatus.IDLE:
                return row[0], row[1]  # a row inserted here is gone if the transaction rolls back
            models[name] = (row[0], row[1])
        return models[name]

    # -- domains ---------------------------------------------------------------------------------

    async def get_domain(self, name: str) -> Domain:
        row = await self._one("SELECT id, name, model, keep_unknown, recognize_threshold, shard,"
                              " written_lsn::text FROM domains WHERE name = %s",
                              (names.domain_name(name),))
        if row is None:
            raise NotFound(f"unknown domain {name!r}: create it first (or enroll into it)")
        return Domain(*row)

    async def create_domain(self, name: str, *, model: str, exist_ok: bool = False,
                            shard: str | None = None) -> Domain:
        """Create a domain of ``model`` and its faces partition: here, or with ``shard`` a table
        on that shard attached as a foreign partition (store/shards.py). With ``exist_ok``, an
        existing domain is returned as it is (with its own model and shard, whatever they say)."""
        name = names.domain_name(name)
        model_dim(model)
        if exist_ok and await self._one("SELECT 1 FROM domains WHERE name = %s", (name,)):
            return await self.get_domain(name)
        if shard is not None:
            from . import shards

            shard = shards.shard_name(shard)
            if not await self._one("SELECT 1 FROM shards WHERE name = %s", (shard,)):
                raise NotFound(f"unknown shard {shard!r}: add it first (facesearch shards add)")
        async with self.conn.transaction():
            await self.conn.execute(DDL_LOCK)
            row = await self._one(
                "INSERT INTO domains (name, model, shard) VALUES (%s, %s, %s)"
                " ON CONFLICT (name) DO NOTHING RETURNING id", (name, model, shard))
            if row is None:
                if not exist_ok:
                    raise Conflict(f"domain {name!r} already exists")
                return await self.get_domain(name)
            if shard is None:
                await self.conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF faces ({})"
                                                " FOR VALUES IN ({})").format(
                    _partition(row[0]), _local_keys(row[0]), sql.Literal(row[0])))
            else:
                await shards.create_table(self, row[0], shard)
        return Domain(row[0], name, model, shard=shard)

    async def set_domain_model(self, name: str, model: str) -> Domain:
        """Switch a domain to another model: from now on it enrolls and searches with ``model``.
        Its faces of other models stay (unsearched) until :meth:`delete_model_faces`."""
        model_dim(model)
        row = await self._one("UPDATE domains SET model = %s, recognize_threshold = CASE WHEN"
                              " model = %s THEN recognize_threshold END WHERE name = %s"
                              " RETURNING id, name, model, keep_unknown, recognize_threshold, shard",
                              (model, model, names.domain_name(name)))
        if row is None:
            raise NotFound(f"unknown domain {name!r}")
        return Domain(*row)

    async def set_domain_threshold(self, name: str, threshold: float | None) -> Domain:
        """Give a domain its own recognize threshold (None: back to its model's)."""
        row = await self._one("UPDATE domains SET recognize_threshold = %s WHERE name = %s"
                              " RETURNING id, name, model, keep_unknown, recognize_threshold, shard",
                              (threshold, names.domain_name(name)))
        if row is None:
            raise NotFound(f"unknown domain {name!r}")
        return Domain(*row)

    async def domain_models(self) -> list[str]:
        """The models of the domains, each once (what the model workers should preload)."""
        return [r[0] for r in await self._all("SELECT DISTINCT model FROM domains ORDER BY 1")]

    async def list_domains(self) -> list[DomainInfo]:
        return [DomainInfo(*r) for r in await self._all(_DOMAIN_INFO + " ORDER BY d.name")]

    async def domain_info(self, name: str) -> DomainInfo:
        row = await self._one(_DOMAIN_INFO + " WHERE d.name = %s", (names.domain_name(name),))
        if row is None:
            raise NotFound(f"unknown domain {name!r}")
        return DomainInfo(*row)

    async def delete_domain(self, name: str) -> DomainInfo:
        """Delete a domain with all its people, faces and API keys. Dropping the partition removes
        the embeddings from disk at once (no dead tuples waiting for VACUUM)."""
        domain = await self.get_domain(name)
        if domain.shard is not None:
            from . import shards

            # The shard's table first: if the shard cannot be reached, nothing is deleted.
            info = await self.domain_info(domain.name)
            await shards.drop_table(self, domain)
        async with self.conn.transaction():
            await self.conn.execute(DDL_LOCK)  # enrollments in flight end first (see DDL_LOCK)
            if not await self._one("SELECT 1 FROM domains WHERE id = %s FOR UPDATE", (domain.id,)):
                raise NotFound(f"unknown domain {name!r}")
            if domain.shard is None:
                info = await self.domain_info(domain.name)
            await self.conn.execute(sql.SQL("DROP {} IF EXISTS {}").format(
                sql.SQL("TABLE" if domain.shard is None else "FOREIGN TABLE"), _partition(domain.id)))
            # People and keys go by ON DELETE CASCADE.
            await self.conn.execute("DELETE FROM domains WHERE id = %s", (domain.id,))
        return info

    async def lock_domain(self, domain: Domain) -> None:
        """First in a transaction that writes faces (an enrollment): the table locks in their
        order (WRITE_LOCK) and the domain's row until it ends, so that a concurrent
        :meth:`delete_domain` or :meth:`create_domain` (another replica's, say) waits for this
        one or this one for it; then NotFound if the domain is gone."""
        await self.conn.execute(WRITE_LOCK)
        if not await self._one("SELECT 1 FROM domains WHERE id = %s FOR NO KEY UPDATE",
                               (domain.id,)):
            raise NotFound(f"domain {domain.name!r} was deleted meanwhile")

    # -- people ----------------------------------------------------------------------------------

    async def person_id(self, domain: Domain, person: int | str, *, create: bool = False) -> int:
        """The id of a person of this domain, by id or name (NotFound if not in *this* domain);
        with ``create``, a name is created if missing."""
        column, value = _person_key(person)
        row = await self._one(f"SELECT id FROM people WHERE domain_id = %s AND {column} = %s",
                              (domain.id, value))
        if row is None and create and column == "name":
            # Looked up first: an insert that conflicts would still use up one of the domain's ids.
            row = await self._one(
                "INSERT INTO people (domain_id, name) VALUES (%s, %s)"
                " ON CONFLICT (domain_id, name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
                (domain.id, value))
        if row is None:
            raise _no_person(domain, column, value)
        return row[0]

    async def ensure_people(self, domain: Domain, people: Iterable[str]) -> dict[str, int]:
        """Ids of these people, creating the missing ones in one statement (their ids reserved
        from the domain's counter at once, not one counter update per person)."""
        wanted = sorted({names.person_name(p) for p in people})
        found = dict(await self._all(
            "SELECT name, id FROM people WHERE domain_id = %s AND name = ANY(%s::text[])",
            (domain.id, wanted)))
        missing = [n for n in wanted if n not in found]
        if missing:
            rows = await self._all(
                "WITH r AS (UPDATE domains SET next_person_id = next_person_id + %(n)s"
                "   WHERE id = %(domain)s RETURNING next_person_id - %(n)s AS first)"
                " INSERT INTO people (domain_id, id, name)"
                " SELECT %(domain)s, r.first + t.i - 1, t.name"
                " FROM r, unnest(%(names)s::text[]) WITH ORDINALITY AS t(name, i)"
                " ON CONFLICT (domain_id, name) DO UPDATE SET name = EXCLUDED.name RETURNING name, id",
                {"domain": domain.id, "n": len(missing), "names": missing})
            found.update(rows)
        return found

    async def create_person(self, domain: Domain, name: str, metadata: dict | None = None) -> Person:
        name = names.person_name(name)
        row = await self._one(
            "INSERT INTO people AS p (domain_id, name, metadata) VALUES (%(domain)s, %(name)s, %(meta)s)"
            f" ON CONFLICT (domain_id, name) DO NOTHING RETURNING {_PERSON}",
            {"domain": domain.id, "name": name, "meta": Jsonb(metadata or {})})
        if row is None:
            raise Conflict(f"domain {domain.name!r} already has a person named {name!r}")
        return Person(*row)

    async def get_person(self, domain: Domain, person: int | str) -> Person:
        """A person of this domain by id or name; another domain's person is NotFound."""
        column, value = _person_key(person)
        row = await self._one(f"SELECT {_PERSON} FROM people p"
                              f" WHERE p.domain_id = %(domain)s AND p.{column} = %(person)s",
                              {"domain": domain.id, "person": value})
        if row is None:
            raise _no_person(domain, column, value)
        return Person(*row)

    async def list_people(self, domain: Domain, *, search: str | None = None, limit: int = 1000,
                          offset: int = 0) -> list[Person]:
        """People by name; ``search`` keeps names containing it (case-insensitive)."""
        rows = await self._all(
            f"SELECT {_PERSON} FROM people p WHERE {_PEOPLE_WHERE}"
            " ORDER BY p.name LIMIT %(limit)s OFFSET %(offset)s",
            {"domain": domain.id, "search": _literal_like(search), "limit": limit, "offset": offset})
        return [Person(*r) for r in rows]

    async def count_people(self, domain: Domain, search: str | None = None) -> int:
        """How many people :meth:`list_people` would list without a limit."""
        row = await self._one(f"SELECT count(*) FROM people p WHERE {_PEOPLE_WHERE}",
                              {"domain": domain.id, "search": _literal_like(search)})
        return row[0]

    async def _update_person(self, domain: Domain, person: int | str, assignment: str,
                             params: dict[str, Any]) -> Person:
        """One UPDATE of a person of this domain, returning it updated."""
        column, value = _person_key(person)
        row = await self._one(
            f"UPDATE people p SET {assignment} WHERE p.domain_id = %(domain)s AND p.{column} = %(person)s"
            f" RETURNING {_PERSON}", {**params, "domain": domain.id, "person": value})
        if row is None:
            raise _no_person(domain, column, value)
        return Person(*row)

    async def rename_person(self, domain: Domain, person: int | str, new: str) -> Person:
        new = names.person_name(new)
        try:
            return await self._update_person(domain, person, "name = %(new)s", {"new": new})
        except psycopg.errors.UniqueViolation:
            raise Conflict(f"domain {domain.name!r} already has a person named {new!r}") from None

    async def set_metadata(self, domain: Domain, person: int | str, metadata: dict) -> Person:
        """Replace a person's metadata (a JSON object)."""
        return await self._update_person(domain, person, "metadata = %(meta)s", {"meta": Jsonb(metadata)})

    async def delete_person(self, domain: Domain, person: int | str) -> int:
        """Delete a person and their faces; returns how many faces were deleted."""
        async with self.conn.transaction():
            # Their row locked first (FOR UPDATE): an enrollment to them (another replica's) either
            # committed before, and its faces are deleted here, or waits and then finds them gone
            # (add_faces: NotFound); never a face left without its person, nor a deadlock.
            await self.conn.execute(WRITE_LOCK)
            column, value = _person_key(person)
            row = await self._one(f"SELECT id FROM people WHERE domain_id = %s AND {column} = %s"
                                  " FOR UPDATE", (domain.id, value))
            if row is None:
                raise _no_person(domain, column, value)
            pid = row[0]
            cur = await self.conn.execute("DELETE FROM faces WHERE domain_id = %s AND person_id = %s",
                                          (domain.id, pid))
            faces = cur.rowcount
            await self.conn.execute("DELETE FROM people WHERE domain_id = %s AND id = %s",
                                    (domain.id, pid))
        return faces

    async def purge(self, domain: Domain) -> None:
        """VACUUM the domain's partition so deleted embeddings leave the table and its index
        files now rather than whenever autovacuum comes by (on its shard for a sharded domain).
        Needs autocommit."""
        if domain.shard is not None:
            from . import shards

            await shards.run_ddl(self, domain, sql.SQL("VACUUM {}").format(_partition(domain.id)))
            return
        await self.conn.execute(sql.SQL("VACUUM {}").format(_partition(domain.id)))

    # -- faces -----------------------------------------------------------------------------------

    async def enrolled_hashes(self, domain: Domain, model: str) -> set[tuple[int, bytes]]:
        """``(person_id, photo_sha256)`` already enrolled with this model: lets a re-run skip
        photos before they reach the model."""
        model_id, _ = await self.model(model)
        rows = await self._all(
            "SELECT person_id, photo_sha256 FROM faces WHERE domain_id = %s AND model_id = %s",
            (domain.id, model_id))
        return {(r[0], bytes(r[1])) for r in rows}

    async def add_faces(self, domain: Domain, model: str, faces: Sequence[NewFace], *,
                        progress: Callable[[int], object] | None = None) -> list[int | None]:
        """Store faces with COPY (one transaction). Returns each face's new id, in order; None for
        a face already stored (same person, model and photo), or given twice in ``faces``.
        ``progress(n)`` is told every few hundred faces sent."""
        if not faces:
            return []
        model_id, dim = await self.model(model)
        for f in faces:
            if f.embedding.shape != (dim,) or not np.all(np.isfinite(f.embedding)):
                raise ValueError(f"embedding must be {dim} finite numbers for model {model!r}")
        # Reserved before the transaction, so the domain's row is locked for this one statement,
        # not while the faces are written (ids a failed write leaves unused are simply skipped).
        reserved = await self._one(
            "UPDATE domains SET next_face_id = next_face_id + %(n)s WHERE id = %(domain)s"
            " RETURNING next_face_id - %(n)s", {"n": len(faces), "domain": domain.id})
        if reserved is None:  # deleted since the caller read it (by another replica, say)
            raise NotFound(f"domain {domain.name!r} was deleted meanwhile")
        first = reserved[0]
        if (domain.shard is not None and dim <= HNSW_MAX_DIMS
                and self.conn.info.transaction_status != TransactionStatus.IDLE
                and not await self._index_exists(domain, model_id)):
            # In the caller's transaction, rows written to the shard commit only after a build
            # there, which would wait for them: build the index (empty) first, the rows grow it.
            await self._build_index(domain, model_id, dim)
        async with self.conn.transaction():
            # Whoever may build the domain's index takes its lock before writing rows: the build
            # waits for other writers' row locks, so a writer holding rows while it waits for the
            # lock would deadlock with it. Once the index exists, writers need no lock.
            build = dim <= HNSW_MAX_DIMS and not await self._index_exists(domain, model_id)
            if build and domain.shard is None:  # a shard's index is built after the commit
                await self.conn.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                                        (0x66616365, domain.id))
            rows = bulk.face_rows(domain.id, model_id, faces, first, dim)
            try:
                ids = None
                if build and domain.shard is None and not await self._has_faces(domain, model_id):
                    # A first load: nothing stored to conflict with (writers take the lock while
                    # there is no index), so straight into faces; staged only if a row conflicts
                    # after all. (A shard's rows go through the staging table: its lock is there.)
                    ids = await bulk.copy_first_load(self.conn, rows, bulk.first_of_each(faces),
                                                     progress)
                if ids is None:
                    ids = await self._stage_faces(domain, rows, progress)
            except psycopg.errors.ForeignKeyViolation:
                # The person was deleted after the caller found them (by another replica, say):
                # the enrollment is refused as a whole, no face is left behind. (A shard has no
                # foreign key to people: there, searches skip a face whose person is gone.)
                raise NotFound(f"the person was deleted from domain {domain.name!r} while the "
                               "photos were being enrolled") from None
            except (psycopg.errors.UndefinedTable, psycopg.errors.CheckViolation):
                raise NotFound(f"domain {domain.name!r} was deleted meanwhile") from None
            # After the rows, so a first bulk enrollment builds the graph in one pass (much faster
            # than growing it row by row); later batches are added to the existing index.
            if build and domain.shard is None and not await self._index_exists(domain, model_id):
                await self._build_index(domain, model_id, dim)
        if build and domain.shard is not None:
            # Once the rows are committed there: a build on the shard waits for the open write
            # of this transaction's remote session, which would wait for the build.
            await self._build_index(domain, model_id, dim)
        if build or len(faces) >= ANALYZE_BATCH:
            # Fresh statistics now, not at autovacuum's next pass: until then the planner takes
            # the partition for nearly empty and reads it whole instead of using the index.
            await self.conn.execute(sql.SQL("ANALYZE {}").format(_partition(domain.id)))
        return ids

    async def _stage_faces(self, domain: Domain, rows: Sequence[tuple[Any, ...]],
                           progress: Callable[[int], object] | None) -> list[int | None]:
        """Insert COPY rows (bulk.face_rows) through a staging table, skipping those already
        stored or given twice: returns each row's id, None for those skipped."""
        # Each staged row has the id it will keep, so ``ord`` maps the inserted ones back to the
        # input. The ids are the domain's (its counter).
        await self.conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS new_faces (ord integer NOT NULL,"
            " LIKE faces INCLUDING DEFAULTS INCLUDING STORAGE) ON COMMIT DELETE ROWS")
        # Binary: as text, a 512-d vector is ~5 KB of formatted floats, most of a bulk import.
        columns = sql.SQL(", ").join(map(sql.Identifier, bulk.FACE_COLUMNS))
        await bulk.copy_rows(self.conn, sql.SQL("COPY new_faces (ord, {}) FROM STDIN (FORMAT BINARY)")
                             .format(columns), ["integer", *bulk.FACE_TYPES],
                             [(i, *r) for i, r in enumerate(rows)], progress)
        # Into the partition: its keys are its own (0011). A shard's foreign partition takes
        # ON CONFLICT DO NOTHING only without a target (its key is checked on the shard).
        added = await self._all(sql.SQL(
            "WITH added AS (INSERT INTO {partition} ({columns}) SELECT {columns} FROM new_faces"
            " ORDER BY ord ON CONFLICT {target} DO NOTHING RETURNING id)"
            " SELECT added.id FROM new_faces n LEFT JOIN added ON added.id = n.id ORDER BY n.ord")
            .format(partition=_partition(domain.id), columns=columns, target=sql.SQL(
                "" if domain.shard else "(domain_id, person_id, model_id, photo_sha256)")))
        return [r[0] for r in added]

    async def _has_faces(self, domain: Domain, model_id: int) -> bool:
        """Whether the domain has any face of this model."""
        return (await self._one("SELECT EXISTS (SELECT 1 FROM faces WHERE domain_id = %s"
                                " AND model_id = %s)", (domain.id, model_id)))[0]

    async def _index_exists(self, domain: Domain, model_id: int) -> bool:
        index = f"faces_d{int(domain.id)}_m{int(model_id)}_hnsw"
        if domain.shard is not None:
            from . import shards

            return await shards.index_exists(self, domain, index)
        return (await self._one("SELECT to_regclass(%s) IS NOT NULL", (index,)))[0]

    async def _build_index(self, domain: Domain, model_id: int, dim: int) -> None:
        """The HNSW index of one (domain, model): a partial expression index on the partition.
        None above HNSW_MAX_DIMS: those models are searched exactly. Caller holds the lock
        (on the shard of a sharded domain, shards.build_index takes it there)."""
        if domain.shard is not None:
            from . import shards

            await shards.build_index(self, domain, model_id, dim)
            return
        index = f"faces_d{int(domain.id)}_m{int(model_id)}_hnsw"
        # A build is much faster when the whole graph fits in memory (pgvector warns otherwise).
        await self.conn.execute("SET LOCAL maintenance_work_mem = '512MB'")
        # PostgreSQL sizes a parallel build by the heap, which TOAST keeps tiny once vectors are
        # over ~500 dimensions (they are stored out of line), so a 25,000-face import would build
        # on one core: ask for the workers on the partition for this build only.
        partition = _partition(domain.id)
        await self.conn.execute(sql.SQL("ALTER TABLE {} SET (parallel_workers = {})").format(
            partition, sql.Literal(PARALLEL_BUILD_WORKERS)))
        await self.conn.execute(sql.SQL(
            "CREATE INDEX {} ON {} USING hnsw ((embedding::vector({})) vector_cosine_ops)"
            " WITH (m = {}, ef_construction = {}) WHERE model_id = {}").format(
                sql.Identifier(index), partition, sql.Literal(dim), sql.Literal(HNSW_M),
                sql.Literal(HNSW_EF_CONSTRUCTION), sql.Literal(model_id)))
        await self.conn.execute(sql.SQL("ALTER TABLE {} RESET (parallel_workers)").format(partition))

    async def list_faces(self, domain: Domain, person: int | str | None = None) -> list[FaceRow]:
        pid = None if person is None else await self.person_id(domain, person)
        rows = await self._all(
            "SELECT f.id, f.person_id, p.name, m.name, f.box_x, f.box_y, f.box_w, f.box_h,"
            " f.det_score, encode(f.photo_sha256, 'hex'), f.created_at, f.thumbnail IS NOT NULL"
            " FROM faces f JOIN people p ON p.domain_id = f.domain_id AND p.id = f.person_id"
            " JOIN models m ON m.id = f.model_id"
            " WHERE f.domain_id = %(domain)s AND (%(person)s::bigint IS NULL OR f.person_id = %(person)s)"
            " ORDER BY f.id", {"domain": domain.id, "person": pid})
        return [FaceRow(r[0], r[1], r[2], r[3], (r[4], r[5], r[6], r[7]), r[8], r[9], r[10], r[11])
                for r in rows]

    async def face_thumbnail(self, domain: Domain, face_id: int) -> bytes:
        """The JPEG thumbnail of a face of this domain; NotFound if there is no such face or it
        has no thumbnail (thumbnails off, or enrolled before they existed)."""
        row = await self._one("SELECT thumbnail FROM faces WHERE domain_id = %s AND id = %s",
                              (domain.id, face_id))
        if row is None:
            raise NotFound(f"no face {face_id} in domain {domain.name!r}")
        if row[0] is None:
            raise NotFound(f"face {face_id} has no thumbnail (thumbnails were off when it was enrolled)")
        return bytes(row[0])

    async def face_models(self, domain: Domain) -> dict[str, int]:
        """How many faces of this domain each model has."""
        rows = await self._all(
            "SELECT m.name, count(*) FROM faces f JOIN models m ON m.id = f.model_id"
            " WHERE f.domain_id = %s GROUP BY m.name ORDER BY m.name", (domain.id,))
        return dict(rows)

    async def delete_model_faces(self, domain: Domain, model: str) -> int:
        """Delete this domain's faces of one model (and that model's vector index on the
        domain's partition); returns how many. Run :meth:`purge` after it."""
        if model not in (await self.face_models(domain)):
            return 0
        model_id, _ = await self.model(model)
        async with self.conn.transaction():
            cur = await self.conn.execute("DELETE FROM faces WHERE domain_id = %s AND model_id = %s",
                                          (domain.id, model_id))
            if domain.shard is None:
                await self.conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(
                    sql.Identifier(_index_name(domain, model_id))))
        if domain.shard is not None:
            from . import shards

            await shards.drop_index(self, domain, _index_name(domain, model_id))
        return cur.rowcount

    async def export_faces(self, domain: Domain, model: str) -> list[ExportedFace]:
        """Every face of one model in this domain with its embedding, by person then id."""
        model_id, _ = await self.model(model)
        async with self.conn.cursor(binary=True) as cur:  # binary: vectors arrive as packed floats
            await cur.execute(
                "SELECT f.id, p.name, f.embedding, f.box_x, f.box_y, f.box_w, f.box_h,"
                " encode(f.photo_sha256, 'hex'), f.source, f.source_hash"
                " FROM faces f JOIN people p ON p.domain_id = f.domain_id AND p.id = f.person_id"
                " WHERE f.domain_id = %s AND f.model_id = %s ORDER BY p.name, f.id",
                (domain.id, model_id))
            rows = await cur.fetchall()
        return [ExportedFace(r[0], r[1], r[2].to_numpy(), (r[3], r[4], r[5], r[6]), r[7], r[8], r[9])
                for r in rows]

    async def delete_face(self, domain: Domain, face_id: int) -> None:
        cur = await self.conn.execute("DELETE FROM faces WHERE domain_id = %s AND id = %s",
                                      (domain.id, face_id))
        if not cur.rowcount:
            raise NotFound(f"no face {face_id} in domain {domain.name!r}")

    # -- search ----------------------------------------------------------------------------------

    async def search_sql(self, model: str, domain: Domain | None = None, k: int | None = None
                         ) -> sql.Composed:
        """The top-k query for one model. Dimension and model id are literals, so the partial HNSW
        index of the domain's partition matches under any plan (generic or custom).

        With ``domain`` and ``k``, as :meth:`search` runs it, the domain id and both limits are
        literals too: each domain has its own text, which psycopg prepares after a few runs, and
        PostgreSQL then reuses one plan, already pruned to the domain's partition, instead of
        planning every search (a fifth of a search's time at 25,000 faces); other domains'
        partitions cost it nothing, however many there are. Without them, ``%(domain)s``,
        ``%(n)s`` (candidates) and ``%(k)s`` are parameters (EXPLAIN, doctor).

        A sharded domain's query reads its foreign partition by name: through the parent,
        postgres_fdw sends the ORDER BY to the shard but not the LIMIT."""
        model_id, dim = await self.model(model)
        if (domain is None) != (k is None):
            raise TypeError("give both domain and k, or neither")
        if domain is None or k is None:
            where, n, limit = sql.SQL("%(domain)s"), sql.SQL("%(n)s"), sql.SQL("%(k)s")
        else:
            where, n, limit = (sql.Literal(int(domain.id)), sql.Literal(_candidates(k)),
                               sql.Literal(int(k)))
        table = (sql.Identifier("faces") if domain is None or domain.shard is None
                 else _partition(domain.id))
        return sql.SQL("""
            WITH nearest AS (
                SELECT f.id, f.person_id, (f.embedding::vector({dim}) <=> %(q)s) AS distance
                FROM {table} f
                WHERE f.domain_id = {domain} AND f.model_id = {model}
                ORDER BY f.embedding::vector({dim}) <=> %(q)s
                LIMIT {n}
            ), best AS (
                SELECT DISTINCT ON (n.person_id) n.person_id, n.id, n.distance
                FROM nearest n WHERE n.distance < %(threshold)s
                ORDER BY n.person_id, n.distance
            )
            -- A subquery, not a join: k primary-key lookups, never a scan of every tenant's people.
            SELECT b.person_id,
                   (SELECT p.name FROM people p WHERE p.domain_id = {domain} AND p.id = b.person_id),
                   b.id, b.distance
            FROM best b
            ORDER BY b.distance
            LIMIT {k}""").format(dim=sql.Literal(dim), model=sql.Literal(model_id), domain=where, n=n,
                                 k=limit, table=table)

    async def search(self, domain: Domain, model: str, embeddings: Iterable[np.ndarray], *, k: int,
                     threshold: float) -> list[list[Match]]:
        """For each query embedding: up to ``k`` people, best face each, distance < threshold.
        The hot path: one round trip for all the embeddings (pipelined) once the model is cached."""
        _, dim = await self.model(model)
        queries = query_vectors(embeddings, dim, model)
        if not queries:
            return []
        texts = self.cache.search_queries.setdefault(model, {})
        query = texts.get((domain.id, k))
        if query is None:
            if len(texts) >= SEARCH_QUERIES_KEPT:
                texts.clear()
            query = (await self.search_sql(model, domain, k)).as_bytes(self.conn)
            texts[(domain.id, k)] = query
        params = [{"q": q, "threshold": threshold} for q in queries]
        n = _candidates(k)
        if n <= EF_SEARCH or domain.shard is not None:  # a shard's sessions scan iteratively
            return await self._search(query, params)
        async with self.conn.transaction():  # the session's ef_search would cap the candidates
            await self.conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(n)))
            return await self._search(query, params)

    async def _search(self, query: bytes, params: list[dict[str, Any]]) -> list[list[Match]]:
        # A face without its person (name NULL) can only be a sharded domain's, left by an
        # enrollment racing its person's deletion (no foreign key across servers): not a match.
        async with self.conn.cursor() as cur:
            if len(params) == 1:
                await cur.execute(query, params[0])
                return [[Match(*r) for r in await cur.fetchall() if r[1] is not None]]
            await cur.executemany(query, params, returning=True)
            results = []
            while True:
                results.append([Match(*r) for r in await cur.fetchall() if r[1] is not None])
                if not cur.nextset():
                    return results

    # -- API keys --------------------------------------------------------------------------------

    async def create_key(self, domain: Domain, name: str) -> tuple[ApiKey, str]:
        """A new key for this domain: the listing's record and the secret, which is shown once
        and stored only as its SHA-256."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        row = await self._one(
            f"INSERT INTO api_keys (domain_id, name, key_sha256, prefix) VALUES (%s, %s, %s, %s)"
            f" RETURNING {_KEY}",
            (domain.id, _key_name(name), hashlib.sha256(secret.encode()).digest(), secret[:KEY_SHOWN]))
        return ApiKey(*row), secret

    async def list_keys(self, domain: Domain) -> list[ApiKey]:
        rows = await self._all(f"SELECT {_KEY} FROM api_keys WHERE domain_id = %s ORDER BY id",
                               (domain.id,))
        return [ApiKey(*r) for r in rows]

    async def revoke_key(self, domain: Domain, key_id: int) -> None:
        """Delete one of this domain's keys (another domain's key id is NotFound)."""
        cur = await self.conn.execute("DELETE FROM api_keys WHERE domain_id = %s AND id = %s",
                                      (domain.id, key_id))
        if not cur.rowcount:
            raise NotFound(f"no API key {key_id} in domain {domain.name!r}")

    async def key_domain(self, secret: str) -> str | None:
        """The name of the domain a key belongs to, None for an unknown or revoked key. Looked up
        by the secret's SHA-256 (one round trip); records its use, at most once a minute."""
        if not isinstance(secret, str) or not secret.startswith(KEY_PREFIX) or len(secret) > 200:
            return None
        row = await self._one(
            "WITH k AS (SELECT id, domain_id, last_used_at FROM api_keys WHERE key_sha256 = %(h)s),"
            " touched AS (UPDATE api_keys a SET last_used_at = now() FROM k WHERE a.id = k.id"
            "   AND (k.last_used_at IS NULL OR k.last_used_at < now() - make_interval(secs => %(s)s)))"
            " SELECT d.name FROM k JOIN domains d ON d.id = k.domain_id",
            {"h": hashlib.sha256(secret.encode()).digest(), "s": KEY_TOUCH_SECONDS})
        return None if row is None else row[0]
