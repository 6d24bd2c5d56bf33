"""Migration 0008: ids numbered per domain. A database as the previous release left it (global
ids, interleaved across two domains) keeps every id; each domain's new ids continue from its own
largest; lookups by (domain, id) are served by an index (architecture rule 3)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from psycopg.conninfo import make_conninfo

from facesearch.models import SFACE_MODEL
from facesearch.store import BlockingGallery
from facesearch.store.gallery import NewFace
from facesearch.store.migrate import ensure_vector_extension, migrate

DATABASE = "facesearch_domain_ids"


@pytest.fixture(scope="module")
def before_0008(db_url: str) -> Iterator[str]:
    """Two domains whose people and faces took turns on the global sequences (ids 1-6)."""
    admin = psycopg.connect(db_url, autocommit=True)
    admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    admin.execute(f"CREATE DATABASE {DATABASE}")
    url = make_conninfo(db_url, dbname=DATABASE)
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_vector_extension(conn)
        migrate(conn, target=6)
        register_vector(conn)
        model = conn.execute("INSERT INTO models (name, dim) VALUES (%s, 128) RETURNING id",
                             (SFACE_MODEL,)).fetchone()[0]
        domains = {}
        for name in ("old-a", "old-b"):
            did = conn.execute("INSERT INTO domains (name, model) VALUES (%s, %s) RETURNING id",
                               (name, SFACE_MODEL)).fetchone()[0]
            conn.execute(f"CREATE TABLE faces_d{did} PARTITION OF faces FOR VALUES IN ({did})")
            domains[name] = did
        for i in range(6):  # a, b, a, b, ...: people 1-6 and faces 1-6 alternate
            did = domains["old-a" if i % 2 == 0 else "old-b"]
            pid = conn.execute("INSERT INTO people (domain_id, name) VALUES (%s, %s) RETURNING id",
                               (did, f"p{i}")).fetchone()[0]
            conn.execute("INSERT INTO faces (domain_id, person_id, model_id, embedding, box_x, box_y,"
                         " box_w, box_h, det_score, photo_sha256) VALUES (%s, %s, %s, %s, 0, 0, 1, 1,"
                         " 1.0, %s)", (did, pid, model, np.eye(128, dtype=np.float32)[i],
                                       bytes([i]) * 32))
    yield url
    admin.execute(f"DROP DATABASE {DATABASE} WITH (FORCE)")
    admin.close()


def test_old_ids_stay_and_new_ones_continue_per_domain(before_0008: str) -> None:
    with psycopg.connect(before_0008, autocommit=True) as conn:
        assert 8 in migrate(conn)
    with BlockingGallery(before_0008) as gallery:
        a, b = gallery.get_domain("old-a"), gallery.get_domain("old-b")
        assert [(p.id, p.name) for p in gallery.list_people(a)] == [(1, "p0"), (3, "p2"), (5, "p4")]
        assert [(p.id, p.name) for p in gallery.list_people(b)] == [(2, "p1"), (4, "p3"), (6, "p5")]
        assert [(f.id, f.person_id) for f in gallery.list_faces(b)] == [(2, 2), (4, 4), (6, 6)]
        # The next ids: one past each domain's largest, and B's new rows do not move A's.
        assert gallery.create_person(b, "new b").id == 7
        assert gallery.person_id(b, "newer b", create=True) == 8
        assert gallery.ensure_people(b, ["p1", "bulk 1", "bulk 2"]) == {"p1": 2, "bulk 1": 9,
                                                                         "bulk 2": 10}
        assert gallery.create_person(a, "new a").id == 6
        pid = gallery.person_id(a, "new a")
        ids = gallery.add_faces(a, SFACE_MODEL, [
            NewFace(pid, np.eye(128, dtype=np.float32)[10 + i], (0, 0, 1, 1), 1.0, bytes([10 + i]) * 32)
            for i in range(2)])
        assert ids == [6, 7]
        # An existing name costs no id: the counter moved only for the people created.
        assert gallery.person_id(a, "p0", create=True) == 1
        assert gallery.create_person(a, "after").id == 7
        # Search answers the domain's own ids.
        match = gallery.search(a, SFACE_MODEL, [np.eye(128, dtype=np.float32)[11]], k=1,
                               threshold=0.5)[0][0]
        assert (match.person_id, match.face_id, match.person) == (6, 7, "new a")


def test_lookups_by_domain_and_id_use_an_index(before_0008: str) -> None:
    with psycopg.connect(before_0008, autocommit=True) as conn:
        migrate(conn)
        conn.execute("SET enable_seqscan = off")  # tiny tables: ask which index serves the filter
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT name FROM people WHERE domain_id = 1 AND id = 3"))
        assert "people_pkey" in plan, plan
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT id FROM faces WHERE domain_id = 2 AND id = 4"))
        assert "faces_d2" in plan and "faces_d1" not in plan and "Index" in plan, plan
