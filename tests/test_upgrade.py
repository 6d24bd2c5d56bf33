"""A data directory of the release before domains had a model, opened by this one.

The old database is built the way that release left it: only migrations 0001-0005 applied, then
domains, people and dlib-resnet-v1 faces of real LFW photos written with its SQL (no model column
anywhere). This release migrates it (0006), gives each domain the model most of its faces have,
else dlib-resnet-v1, and recognizes in it with that model, over HTTP and in SQL.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from psycopg.conninfo import make_conninfo

from bench.synthetic import clustered
from facesearch.models import DLIB_MODEL, SFACE_MODEL, default_thresholds
from facesearch.store.migrate import ensure_vector_extension, migrate, migrations

from .api.conftest import jpeg, pick_people, start_server
from .conftest import photos_of

DATABASE = "facesearch_upgrade"
ARCFACE = "deepface:ArcFace"


def _old_domain(conn: psycopg.Connection, name: str) -> int:
    """The previous release's Gallery.create_domain: a row (no model) and its faces partition."""
    domain_id = conn.execute("INSERT INTO domains (name) VALUES (%s) RETURNING id", (name,)).fetchone()[0]
    conn.execute(f"CREATE TABLE faces_d{domain_id} PARTITION OF faces FOR VALUES IN ({domain_id})")
    return domain_id


def _old_model(conn: psycopg.Connection, name: str, dim: int) -> int:
    return conn.execute("INSERT INTO models (name, dim) VALUES (%s, %s) ON CONFLICT (name) DO UPDATE"
                        " SET name = EXCLUDED.name RETURNING id", (name, dim)).fetchone()[0]


def _old_faces(conn: psycopg.Connection, domain_id: int, model_id: int,
               faces: list[tuple[str, np.ndarray, bytes]]) -> None:
    """The previous release's add_faces, row by row: people by name, then their faces."""
    for person, embedding, sha in faces:
        pid = conn.execute(
            "INSERT INTO people (domain_id, name) VALUES (%s, %s) ON CONFLICT (domain_id, name)"
            " DO UPDATE SET name = EXCLUDED.name RETURNING id", (domain_id, person)).fetchone()[0]
        conn.execute(
            "INSERT INTO faces (domain_id, person_id, model_id, embedding, box_x, box_y, box_w, box_h,"
            " det_score, photo_sha256) VALUES (%s, %s, %s, %s, 60, 60, 120, 120, 1.0, %s)",
            (domain_id, pid, model_id, embedding, sha))


@pytest.fixture(scope="module")
def old_release(db_url: str, pool, lfw: Path) -> Iterator[dict]:
    """A database as the previous release left it: ``old`` (4 LFW people, 3 dlib faces each, its
    HNSW index), ``old-empty`` (no faces) and ``old-imported`` (mostly deepface:ArcFace faces, as
    import-pkl made them, and one dlib face)."""
    admin = psycopg.connect(db_url, autocommit=True)
    admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    admin.execute(f"CREATE DATABASE {DATABASE}")
    url = make_conninfo(db_url, dbname=DATABASE)
    conn = psycopg.connect(url, autocommit=True)
    ensure_vector_extension(conn)
    assert migrate(conn, target=5) == [1, 2, 3, 4, 5]
    register_vector(conn)
    assert conn.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'domains'"
                        " AND column_name = 'model'").fetchone() == (0,)

    people = pick_people(lfw, 5, 4, skip=2)
    rows, held_out = [], {}
    for name in people:
        photos = photos_of(lfw, name)
        for photo in photos[:3]:
            faces = pool.analyze(photo.read_bytes(), max_faces=1, largest=True, model=DLIB_MODEL).faces
            if faces:
                rows.append((name, faces[0].embedding, hashlib.sha256(photo.read_bytes()).digest()))
        held_out[name] = photos[4]
    dlib = _old_model(conn, DLIB_MODEL, 128)
    old = _old_domain(conn, "old")
    _old_faces(conn, old, dlib, rows)
    conn.execute(f"CREATE INDEX faces_d{old}_m{dlib}_hnsw ON faces_d{old} USING hnsw"
                 f" ((embedding::vector(128)) vector_cosine_ops) WHERE model_id = {dlib}")
    conn.execute(f"ANALYZE faces_d{old}")
    _old_domain(conn, "old-empty")
    imported = _old_domain(conn, "old-imported")
    _, arc = clustered(np.random.default_rng(5), 3, 1, dim=512)
    _old_faces(conn, imported, _old_model(conn, ARCFACE, 512),
               [(f"person {i}", arc[i, 0], bytes([i]) * 32) for i in range(3)])
    _old_faces(conn, imported, dlib, [(people[0], rows[0][1], rows[0][2])])
    conn.close()
    yield {"url": url, "held_out": held_out, "faces": len(rows)}
    admin.execute(f"DROP DATABASE {DATABASE} WITH (FORCE)")
    admin.close()


def test_old_domains_get_the_model_of_their_faces(old_release: dict, cli) -> None:
    listed = json.loads(cli("--database-url", old_release["url"], "domains", "list", "--json").stdout)
    assert {d["name"]: (d["model"], d["faces"]) for d in listed} == {
        "old": (DLIB_MODEL, old_release["faces"]), "old-empty": (DLIB_MODEL, 0),
        "old-imported": (ARCFACE, 4)}
    with psycopg.connect(old_release["url"]) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
        nullable = conn.execute("SELECT is_nullable FROM information_schema.columns"
                                " WHERE table_name = 'domains' AND column_name = 'model'").fetchone()
    assert versions == [v for v, _, _ in migrations()] and 6 in versions and nullable == ("NO",)


def test_recognize_in_an_old_domain(old_release: dict, tmp_path: Path) -> None:
    """The service on the upgraded database: its workers preload the domains' models that can load
    here (dlib-resnet-v1 besides the default; not ArcFace, whose weights are missing), and an old
    domain answers with dlib-resnet-v1, at that model's threshold."""
    server = start_server(tmp_path, tmp_path / "server.log", "--workers", "1", env={
        "FACESEARCH_DATABASE_URL": old_release["url"], "DEEPFACE_HOME": str(tmp_path)})
    try:
        log = server.log()
        assert f"model workers ready: 1 x {SFACE_MODEL}, {DLIB_MODEL}" in log, log
        assert f"not loading model {ARCFACE}" in log
        assert server.admin.get("/v1/domains/old").json()["model"] == DLIB_MODEL
        recognize, verify = default_thresholds(DLIB_MODEL)
        right = 0
        for name, photo in old_release["held_out"].items():
            body = server.admin.post("/v1/domains/old/recognize", files={"photo": jpeg(photo)}).json()
            assert (body["model"], body["threshold"]) == (DLIB_MODEL, recognize), body
            # A gallery of 4: LFW's 1:1 threshold is safe here (the 1:N default is set for 1,680).
            loose = server.admin.post("/v1/domains/old/recognize", files={"photo": jpeg(photo)},
                                      params={"threshold": verify}).json()
            right += bool(loose["faces"] and loose["faces"][0]["matches"]
                          and loose["faces"][0]["matches"][0]["name"] == name)
        assert right >= 3, f"{right} of 4"
        # Enrolling into the old domain adds dlib-resnet-v1 faces.
        name, photo = next(iter(old_release["held_out"].items()))
        enrolled = server.admin.post("/v1/domains/old/enroll", data={"name": name},
                                     files={"photo": jpeg(photo)})
        assert enrolled.status_code == 201 and enrolled.json()["model"] == DLIB_MODEL, enrolled.text
    finally:
        server.stop()
    with psycopg.connect(old_release["url"]) as conn:
        register_vector(conn)
        (embedding,) = conn.execute(
            "SELECT f.embedding FROM faces f JOIN people p ON p.domain_id = f.domain_id"
            " AND p.id = f.person_id JOIN domains d"
            " ON d.id = f.domain_id WHERE d.name = 'old' AND p.name = %s LIMIT 1", (name,)).fetchone()
        # recognize_face() without a model: the domain's.
        rows = conn.execute("SELECT person_name, distance FROM recognize_face(%s, 'old', 0.01, 1)",
                            (embedding,)).fetchall()
        assert rows and rows[0][0] == name and rows[0][1] < 1e-5
        models = dict(conn.execute("SELECT m.name, count(*) FROM faces f JOIN models m"
                                   " ON m.id = f.model_id JOIN domains d ON d.id = f.domain_id"
                                   " WHERE d.name = 'old' GROUP BY 1").fetchall())
    assert models == {DLIB_MODEL: old_release["faces"] + 1}


def test_old_partitions_get_their_own_keys(old_release: dict) -> None:
    """0011: faces' keys and foreign keys move from the parent to each partition (so a shard can
    be a foreign partition); an old domain keeps refusing a duplicate face or an unknown person."""
    with psycopg.connect(old_release["url"], autocommit=True) as conn:
        migrate(conn)
        old = conn.execute("SELECT id FROM domains WHERE name = 'old'").fetchone()[0]
        keys = dict(conn.execute("SELECT conname, contype FROM pg_constraint WHERE conrelid = %s::regclass"
                                 " AND contype IN ('p', 'u', 'f')", (f"faces_d{old}",)).fetchall())
        assert keys == {f"faces_d{old}_pkey": "p", f"faces_d{old}_photo_key": "u",
                        f"faces_d{old}_domain_fkey": "f", f"faces_d{old}_person_fkey": "f",
                        f"faces_d{old}_model_fkey": "f"}
        assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = 'faces'::regclass"
                            " AND contype IN ('p', 'u', 'f')").fetchone() == (0,)
        copy = ("INSERT INTO faces (domain_id, id, person_id, model_id, embedding, box_x, box_y,"
                " box_w, box_h, photo_sha256) SELECT domain_id, {}, {}, model_id, embedding, 0, 0,"
                " 1, 1, photo_sha256 FROM faces WHERE domain_id = %s ORDER BY id LIMIT 1")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(copy.format("id + 1000", "person_id"), (old,))
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute(copy.format("id + 1000", "person_id + 1000"), (old,))
