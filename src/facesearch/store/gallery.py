"""The gallery: domains, people and their face embeddings in PostgreSQL + pgvector.

All SQL lives here. Identifiers that end up in DDL or in index-matching predicates (partition
names, model ids, dimensions) are integers we generated, never user text.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from .. import names
from ..errors import Conflict, NotFound
from ..models import model_dim

# HNSW candidates per scan, set for each connection (store.connect). 100 keeps recall@1 >= 0.99 on
# 25k-face domains (the EXPLAIN / recall test); pgvector's default is 40.
EF_SEARCH = 100
# Nearest faces fetched before keeping the best face per person: several faces of one person
# must not crowd other people out of the top k.
FACES_PER_MATCH = 4


@dataclass(frozen=True)
class Domain:
    id: int
    name: str


@dataclass(frozen=True)
class DomainInfo:
    name: str
    people: int
    faces: int
    created_at: datetime


@dataclass(frozen=True)
class Person:
    id: int
    name: str
    faces: int
    metadata: dict
    created_at: datetime


@dataclass(frozen=True)
class NewFace:
    """A face to store: whose, from which photo, where, and its embedding."""

    person_id: int
    embedding: np.ndarray
    box: tuple[int, int, int, int]
    score: float
    photo_sha256: bytes


@dataclass(frozen=True)
class FaceRow:
    id: int
    person: str
    model: str
    box: tuple[int, int, int, int]
    score: float | None
    photo_sha256: str
    created_at: datetime


@dataclass(frozen=True)
class Match:
    person_id: int
    person: str
    face_id: int
    distance: float


def _partition(domain_id: int) -> sql.Identifier:
    return sql.Identifier(f"faces_d{int(domain_id)}")


class Gallery:
    """Operations on one open connection (autocommit; multi-statement work uses transactions)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self._models: dict[str, tuple[int, int]] = {}
        self._search_queries: dict[str, bytes] = {}  # per model, composed once (hot path)

    # -- models ----------------------------------------------------------------------------------

    def model(self, name: str) -> tuple[int, int]:
        """``(model_id, dim)`` of a model, registering it on first use."""
        if name not in self._models:
            dim = model_dim(name)
            row = self.conn.execute("SELECT id, dim FROM models WHERE name = %s", (name,)).fetchone()
            if row is None:
                row = self.conn.execute(
                    "INSERT INTO models (name, dim) VALUES (%s, %s) ON CONFLICT (name) DO UPDATE"
                    " SET name = EXCLUDED.name RETURNING id, dim", (name, dim)).fetchone()
            if row[1] != dim:
                raise Conflict(f"model {name!r} is stored with dimension {row[1]}, not {dim}")
            self._models[name] = (row[0], row[1])
        return self._models[name]

    # -- domains ---------------------------------------------------------------------------------

    def get_domain(self, name: str) -> Domain:
        row = self.conn.execute("SELECT id, name FROM domains WHERE name = %s",
                                (names.domain_name(name),)).fetchone()
        if row is None:
            raise NotFound(f"unknown domain {name!r}: create it first (or enroll into it)")
        return Domain(*row)

    def create_domain(self, name: str, *, exist_ok: bool = False) -> Domain:
        """Create a domain and its faces partition."""
        name = names.domain_name(name)
        with self.conn.transaction():
            row = self.conn.execute(
                "INSERT INTO domains (name) VALUES (%s) ON CONFLICT (name) DO NOTHING"
                " RETURNING id", (name,)).fetchone()
            if row is None:
                if not exist_ok:
                    raise Conflict(f"domain {name!r} already exists")
                return self.get_domain(name)
            self.conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF faces FOR VALUES IN ({})")
                              .format(_partition(row[0]), sql.Literal(row[0])))
        return Domain(row[0], name)

    def list_domains(self) -> list[DomainInfo]:
        rows = self.conn.execute(
            "SELECT d.name, (SELECT count(*) FROM people p WHERE p.domain_id = d.id),"
            " (SELECT count(*) FROM faces f WHERE f.domain_id = d.id), d.created_at"
            " FROM domains d ORDER BY d.name").fetchall()
        return [DomainInfo(*r) for r in rows]

    def delete_domain(self, name: str) -> DomainInfo:
        """Delete a domain with all its people and faces. Dropping the partition removes the
        embeddings from disk at once (no dead tuples waiting for VACUUM)."""
        domain = self.get_domain(name)
        info = next(d for d in self.list_domains() if d.name == domain.name)
        with self.conn.transaction():
            self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(_partition(domain.id)))
            self.conn.execute("DELETE FROM domains WHERE id = %s", (domain.id,))
        return info

    # -- people ----------------------------------------------------------------------------------

    def person_id(self, domain: Domain, name: str, *, create: bool = False) -> int:
        name = names.person_name(name)
        if create:
            row = self.conn.execute(
                "INSERT INTO people (domain_id, name) VALUES (%s, %s)"
                " ON CONFLICT (domain_id, name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
                (domain.id, name)).fetchone()
        else:
            row = self.conn.execute("SELECT id FROM people WHERE domain_id = %s AND name = %s",
                                    (domain.id, name)).fetchone()
        if row is None:
            raise NotFound(f"no person named {name!r} in domain {domain.name!r}")
        return row[0]

    def ensure_people(self, domain: Domain, people: Iterable[str]) -> dict[str, int]:
        """Ids of these people, creating the missing ones in one statement."""
        wanted = sorted({names.person_name(p) for p in people})
        rows = self.conn.execute(
            "INSERT INTO people (domain_id, name) SELECT %s, unnest(%s::text[])"
            " ON CONFLICT (domain_id, name) DO UPDATE SET name = EXCLUDED.name RETURNING name, id",
            (domain.id, wanted)).fetchall()
        return dict(rows)

    def list_people(self, domain: Domain, *, search: str | None = None, limit: int = 1000,
                    offset: int = 0) -> list[Person]:
        rows = self.conn.execute(
            "SELECT p.id, p.name, (SELECT count(*) FROM faces f"
            "   WHERE f.domain_id = p.domain_id AND f.person_id = p.id),"
            " p.metadata, p.created_at FROM people p"
            " WHERE p.domain_id = %s AND (%s::text IS NULL OR p.name ILIKE '%%' || %s || '%%')"
            " ORDER BY p.name LIMIT %s OFFSET %s",
            (domain.id, search, search, limit, offset)).fetchall()
        return [Person(*r) for r in rows]

    def rename_person(self, domain: Domain, old: str, new: str) -> None:
        new = names.person_name(new)
        pid = self.person_id(domain, old)
        try:
            self.conn.execute("UPDATE people SET name = %s WHERE id = %s", (new, pid))
        except psycopg.errors.UniqueViolation:
            raise Conflict(f"domain {domain.name!r} already has a person named {new!r}") from None

    def set_metadata(self, domain: Domain, name: str, metadata: dict) -> None:
        pid = self.person_id(domain, name)
        self.conn.execute("UPDATE people SET metadata = %s WHERE id = %s", (Jsonb(metadata), pid))

    def delete_person(self, domain: Domain, name: str) -> int:
        """Delete a person and their faces; returns how many faces were deleted."""
        pid = self.person_id(domain, name)
        with self.conn.transaction():
            faces = self.conn.execute(
                "DELETE FROM faces WHERE domain_id = %s AND person_id = %s",
                (domain.id, pid)).rowcount
            self.conn.execute("DELETE FROM people WHERE id = %s", (pid,))
        return faces

    def purge(self, domain: Domain) -> None:
        """VACUUM the domain's partition so deleted embeddings leave the table and its index
        files now rather than whenever autovacuum comes by. Needs autocommit."""
        self.conn.execute(sql.SQL("VACUUM {}").format(_partition(domain.id)))

    # -- faces -----------------------------------------------------------------------------------

    def enrolled_hashes(self, domain: Domain, model: str) -> set[tuple[int, bytes]]:
        """``(person_id, photo_sha256)`` already enrolled with this model: lets a re-run skip
        photos before they reach the model."""
        model_id, _ = self.model(model)
        rows = self.conn.execute(
            "SELECT person_id, photo_sha256 FROM faces WHERE domain_id = %s AND model_id = %s",
            (domain.id, model_id))
        return {(r[0], bytes(r[1])) for r in rows}

    def add_faces(self, domain: Domain, model: str, faces: Sequence[NewFace]) -> int:
        """Store faces with COPY (one transaction); skip ones already there. Returns rows added."""
        if not faces:
            return 0
        model_id, dim = self.model(model)
        for f in faces:
            if f.embedding.shape != (dim,) or not np.all(np.isfinite(f.embedding)):
                raise ValueError(f"embedding must be {dim} finite numbers for model {model!r}")
        with self.conn.transaction():
            self.conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS new_faces (LIKE faces INCLUDING DEFAULTS)"
                " ON COMMIT DELETE ROWS")
            with self.conn.cursor().copy(
                "COPY new_faces (domain_id, person_id, model_id, embedding, box_x, box_y, box_w,"
                " box_h, det_score, photo_sha256) FROM STDIN") as copy:
                for f in faces:
                    copy.write_row((domain.id, f.person_id, model_id, f.embedding, *f.box,
                                    f.score, f.photo_sha256))
            added = self.conn.execute(
                "INSERT INTO faces (domain_id, person_id, model_id, embedding, box_x, box_y,"
                " box_w, box_h, det_score, photo_sha256)"
                " SELECT domain_id, person_id, model_id, embedding, box_x, box_y, box_w, box_h,"
                " det_score, photo_sha256 FROM new_faces"
                " ON CONFLICT (domain_id, person_id, model_id, photo_sha256) DO NOTHING").rowcount
            # After the rows, so a first bulk enrollment builds the graph in one pass (much faster
            # than growing it row by row); later batches are added to the existing index.
            self._ensure_index(domain, model_id, dim)
        return added

    def _ensure_index(self, domain: Domain, model_id: int, dim: int) -> None:
        """The HNSW index of one (domain, model): a partial expression index on the partition."""
        index = sql.Identifier(f"faces_d{domain.id}_m{model_id}_hnsw")
        self.conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (0x66616365, domain.id))
        if self.conn.execute("SELECT to_regclass(%s)", (index.as_string(self.conn),)).fetchone()[0]:
            return
        # A build is much faster when the whole graph fits in memory (pgvector warns otherwise).
        self.conn.execute("SET LOCAL maintenance_work_mem = '512MB'")
        self.conn.execute(sql.SQL(
            "CREATE INDEX {} ON {} USING hnsw ((embedding::vector({})) "
            "vector_cosine_ops) WHERE model_id = {}").format(
                index, _partition(domain.id), sql.Literal(dim), sql.Literal(model_id)))

    def list_faces(self, domain: Domain, person: str | None = None) -> list[FaceRow]:
        pid = None if person is None else self.person_id(domain, person)
        rows = self.conn.execute(
            "SELECT f.id, p.name, m.name, f.box_x, f.box_y, f.box_w, f.box_h, f.det_score,"
            " encode(f.photo_sha256, 'hex'), f.created_at"
            " FROM faces f JOIN people p ON p.id = f.person_id JOIN models m ON m.id = f.model_id"
            " WHERE f.domain_id = %s AND (%s::bigint IS NULL OR f.person_id = %s) ORDER BY f.id",
            (domain.id, pid, pid)).fetchall()
        return [FaceRow(r[0], r[1], r[2], (r[3], r[4], r[5], r[6]), r[7], r[8], r[9])
                for r in rows]

    def delete_face(self, domain: Domain, face_id: int) -> None:
        deleted = self.conn.execute("DELETE FROM faces WHERE domain_id = %s AND id = %s",
                                    (domain.id, face_id)).rowcount
        if not deleted:
            raise NotFound(f"no face {face_id} in domain {domain.name!r}")

    # -- search ----------------------------------------------------------------------------------

    def search_sql(self, model: str) -> sql.Composed:
        """The top-k query for one model. Dimension and model id are literals so the partial
        HNSW index of the domain's partition matches under any plan (generic or custom)."""
        model_id, dim = self.model(model)
        return sql.SQL("""
            WITH nearest AS (
                SELECT f.id, f.person_id, (f.embedding::vector({dim}) <=> %(q)s) AS distance
                FROM faces f
                WHERE f.domain_id = %(domain)s AND f.model_id = {model}
                ORDER BY f.embedding::vector({dim}) <=> %(q)s
                LIMIT %(n)s
            ), best AS (
                SELECT DISTINCT ON (n.person_id) n.person_id, n.id, n.distance
                FROM nearest n WHERE n.distance < %(threshold)s
                ORDER BY n.person_id, n.distance
            )
            SELECT b.person_id, p.name, b.id, b.distance
            FROM best b JOIN people p ON p.id = b.person_id
            ORDER BY b.distance
            LIMIT %(k)s""").format(dim=sql.Literal(dim), model=sql.Literal(model_id))

    def search(self, domain: Domain, model: str, embeddings: Iterable[np.ndarray], *, k: int,
               threshold: float) -> list[list[Match]]:
        """For each query embedding: up to ``k`` people, best face each, distance < threshold."""
        if model not in self._search_queries:
            self._search_queries[model] = self.search_sql(model).as_bytes(self.conn)
        query = self._search_queries[model]
        _, dim = self.model(model)
        n = max(k * FACES_PER_MATCH, 20)
        queries = [np.asarray(e, dtype=np.float32) for e in embeddings]
        if any(q.shape != (dim,) for q in queries):
            raise ValueError(f"query must have {dim} dimensions for model {model!r}")
        results = []
        with contextlib.ExitStack() as stack:
            if n > EF_SEARCH:  # the session's ef_search (see connect()) would cap the candidates
                stack.enter_context(self.conn.transaction())
                self.conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(n)))
            for q in queries:
                rows = self.conn.execute(query, {"q": q, "domain": domain.id, "n": n,
                                                 "threshold": threshold, "k": k}).fetchall()
                results.append([Match(*r) for r in rows])
        return results
