"""The gallery store on the real embedded PostgreSQL + pgvector."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools

import numpy as np
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench.synthetic import clustered, near
from facesearch.errors import Conflict, InvalidName, ModelError, NotFound, StoreError
from facesearch.models import DLIB_MODEL, SFACE_MODEL
from facesearch.store import BlockingGallery, Gallery, GalleryCache, NewFace, connect, open_pool
from facesearch.store.migrate import migrations

from .conftest import STORES

MODEL = DLIB_MODEL
DIM = 128


def fill(gallery: BlockingGallery, domain: str, faces: np.ndarray) -> tuple[object, dict[int, int]]:
    """Create a domain with one person per row of ``faces``; returns (domain, person_id -> row)."""
    dom = gallery.create_domain(domain, model=MODEL)
    ids = gallery.ensure_people(dom, [f"person {i}" for i in range(len(faces))])
    rows, index = [], {}
    for i, person_faces in enumerate(faces):
        pid = ids[f"person {i}"]
        index[pid] = i
        for j, emb in enumerate(person_faces):
            sha = hashlib.sha256(f"{domain}/{i}/{j}".encode()).digest()
            rows.append(NewFace(pid, emb, (0, 0, 100, 100), 1.0, sha))
    ids = gallery.add_faces(dom, MODEL, rows)
    assert None not in ids and len(set(ids)) == len(rows)
    return dom, index


def explain(gallery: BlockingGallery, db: psycopg.Connection, dom, query: np.ndarray) -> str:
    """The plan of the very text ``search`` runs for this domain (ids and limits as literals)."""
    stmt = gallery.search_sql(MODEL, dom, 5).as_string(db)
    rows = db.execute("EXPLAIN " + stmt, {"q": query, "threshold": 0.5}).fetchall()
    return "\n".join(r[0] for r in rows)


def test_migrations_apply_once(db_url: str) -> None:
    for _ in range(2):
        conn = connect(db_url)
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
        conn.close()
        assert versions == [v for v, _, _ in migrations()]


def test_domains_people_and_faces(gallery: BlockingGallery, db: psycopg.Connection) -> None:
    rng = np.random.default_rng(1)
    _, faces = clustered(rng, 3, 2)
    dom, _ = fill(gallery, "store-basics", faces)
    with pytest.raises(Conflict):
        gallery.create_domain("store-basics", model=MODEL)
    with pytest.raises(InvalidName):
        gallery.create_domain("no spaces", model=MODEL)
    assert gallery.create_domain("store-basics", model=MODEL, exist_ok=True).id == dom.id

    people = gallery.list_people(dom)
    assert [(p.name, p.faces) for p in people] == [(f"person {i}", 2) for i in range(3)]
    gallery.rename_person(dom, "person 0", "Ana Novak")
    with pytest.raises(Conflict):
        gallery.rename_person(dom, "person 1", "Ana Novak")
    with pytest.raises(NotFound):
        gallery.rename_person(dom, "nobody", "x")
    assert [p.name for p in gallery.list_people(dom, search="nova")] == ["Ana Novak"]

    # Same photo, same person, same model again: nothing added.
    pid = gallery.person_id(dom, "Ana Novak")
    again = NewFace(pid, faces[0, 0], (0, 0, 100, 100), 1.0,
                    hashlib.sha256(b"store-basics/0/0").digest())
    assert gallery.add_faces(dom, MODEL, [again]) == [None]
    assert (pid, again.photo_sha256) in gallery.enrolled_hashes(dom, MODEL)

    # Deleting a person deletes its faces, checked in SQL.
    assert gallery.delete_person(dom, "Ana Novak") == 2
    count = db.execute("SELECT count(*) FROM faces WHERE domain_id = %s AND person_id = %s",
                       (dom.id, pid)).fetchone()
    assert count == (0,)
    assert db.execute("SELECT count(*) FROM people WHERE domain_id = %s AND id = %s",
                      (dom.id, pid)).fetchone() == (0,)
    gallery.purge(dom)

    face = gallery.list_faces(dom, "person 1")[0]
    gallery.delete_face(dom, face.id)
    with pytest.raises(NotFound):
        gallery.delete_face(dom, face.id)

    # Deleting the domain drops its partition: the embeddings are gone from disk.
    info = gallery.delete_domain("store-basics")
    assert (info.people, info.faces) == (2, 3)
    part = db.execute("SELECT to_regclass(%s)", (f"faces_d{dom.id}",)).fetchone()
    assert part == (None,)
    with pytest.raises(NotFound):
        gallery.get_domain("store-basics")


@pytest.mark.parametrize("gallery", STORES, indirect=True)
def test_a_domain_has_a_model(gallery: BlockingGallery, request: pytest.FixtureRequest) -> None:
    """Created with a model, listed with it, switched to another, its old faces deleted; both
    stores alike. (dlib-resnet-v1 and sface-2021dec are both 128-d: synthetic faces do for both.)"""
    rng = np.random.default_rng(3)
    _, faces = clustered(rng, 2, 2)
    dom = gallery.create_domain("store-model", model=MODEL)
    assert dom.model == MODEL == gallery.get_domain("store-model").model
    assert gallery.domain_info("store-model").model == MODEL
    assert {d.name: d.model for d in gallery.list_domains()}["store-model"] == MODEL
    # exist_ok returns the domain as it is, with its own model.
    assert gallery.create_domain("store-model", model=SFACE_MODEL, exist_ok=True) == dom
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        gallery.create_domain("store-model-bad", model="nope")
    with pytest.raises(NotFound):
        gallery.get_domain("store-model-bad")

    ids = gallery.ensure_people(dom, ["A", "B"])
    for model, k in ((MODEL, 0), (SFACE_MODEL, 1)):
        gallery.add_faces(dom, model, [NewFace(ids[name], faces[i, k], (0, 0, 1, 1), 1.0,
                                               hashlib.sha256(f"{name}{k}".encode()).digest())
                                       for i, name in enumerate("AB")])
    assert gallery.face_models(dom) == {MODEL: 2, SFACE_MODEL: 2}
    assert MODEL in gallery.domain_models()

    moved = gallery.set_domain_model("store-model", SFACE_MODEL)
    assert moved == dataclasses.replace(dom, model=SFACE_MODEL) == gallery.get_domain("store-model")
    assert SFACE_MODEL in gallery.domain_models()
    with pytest.raises(NotFound):
        gallery.set_domain_model("store-nowhere", SFACE_MODEL)
    with pytest.raises(ModelError):
        gallery.set_domain_model("store-model", "nope")
    assert gallery.delete_model_faces(moved, MODEL) == 2
    assert gallery.delete_model_faces(moved, MODEL) == 0
    assert gallery.face_models(moved) == {SFACE_MODEL: 2}
    assert gallery.enrolled_hashes(moved, MODEL) == set()
    assert [p.faces for p in gallery.list_people(moved)] == [1, 1]  # people and ids stay
    assert gallery.person_id(moved, "A") == ids["A"]
    assert gallery.search(moved, SFACE_MODEL, [faces[0, 1]], k=1, threshold=0.5)[0][0].person == "A"
    if isinstance(gallery, BlockingGallery):  # PostgreSQL
        db = request.getfixturevalue("db")
        dlib_id = db.execute("SELECT id FROM models WHERE name = %s", (MODEL,)).fetchone()[0]
        index = db.execute("SELECT to_regclass(%s)", (f"faces_d{dom.id}_m{dlib_id}_hnsw",)).fetchone()
        assert index == (None,)  # the old model's index went with its faces
        # recognize_face() searches the domain's model unless told otherwise.
        rows = db.execute("SELECT person_name FROM recognize_face(%s, 'store-model', 0.5, 1)",
                          (faces[1, 1],)).fetchall()
        assert rows == [("B",)]
        assert db.execute("SELECT * FROM recognize_face(%s, 'store-model', 0.5, 1, 'dlib-resnet-v1')",
                          (faces[1, 1],)).fetchall() == []
    gallery.delete_domain("store-model")


def test_wrong_dimension_is_refused(gallery: BlockingGallery) -> None:
    dom = gallery.create_domain("store-dims", model=MODEL)
    pid = gallery.person_id(dom, "x", create=True)
    with pytest.raises(ValueError, match="128"):
        gallery.add_faces(dom, MODEL, [NewFace(pid, np.ones(512, np.float32), (0, 0, 1, 1), 1.0,
                                               b"\0" * 32)])
    with pytest.raises(ValueError, match="128"):
        gallery.search(dom, MODEL, [np.ones(512, np.float32)], k=1, threshold=1.0)
    gallery.delete_domain("store-dims")


@pytest.fixture(scope="module")
def big_gallery(db_url: str):
    """>= 25,000 faces over four domains of different sizes (one small, like the seed's serbia)."""
    gallery = BlockingGallery(db_url)
    conn = connect(db_url)
    rng = np.random.default_rng(7)
    sizes = {"scale-a": 3000, "scale-b": 2000, "scale-c": 1250, "scale-d": 250}  # people, 4 faces
    domains = {}
    for name, people in sizes.items():
        centres, faces = clustered(rng, people, 4)
        dom, index = fill(gallery, name, faces)
        domains[name] = (dom, centres, faces, index)
    conn.execute("ANALYZE faces")
    yield gallery, domains, rng
    for name in sizes:
        gallery.delete_domain(name)
    conn.close()
    gallery.close()


def test_search_uses_the_domain_partition_and_its_vector_index(big_gallery, db) -> None:
    gallery, domains, _ = big_gallery
    total = db.execute("SELECT count(*) FROM faces").fetchone()[0]
    assert total >= 25_000
    for name, (dom, centres, _, _) in domains.items():
        plan = explain(gallery, db, dom, centres[0].astype(np.float32))
        scanned = {f"faces_d{d.id}" for d, *_ in domains.values() if f"faces_d{d.id} " in plan}
        assert scanned == {f"faces_d{dom.id}"}, f"{name}: other domains' rows scanned:\n{plan}"
        if name != "scale-d":  # 1,000 faces: the planner may rightly prefer reading them all
            assert f"Index Scan using faces_d{dom.id}_m" in plan, plan
            assert "Seq Scan" not in plan, plan


def test_search_recall_against_exact(big_gallery, db) -> None:
    gallery, domains, rng = big_gallery
    agree = total = 0
    for dom, centres, _, _ in domains.values():
        ids, embs = zip(*db.execute(
            "SELECT id, embedding FROM faces WHERE domain_id = %s", (dom.id,)).fetchall(), strict=True)
        matrix = np.stack([e.to_numpy() for e in embs])
        people = rng.choice(len(centres), size=100, replace=False)
        queries = near(rng, centres[people])
        exact = [ids[i] for i in np.argmax(queries @ matrix.T, axis=1)]
        found = gallery.search(dom, MODEL, queries, k=1, threshold=2.0)
        agree += sum(bool(f) and f[0].face_id == e for f, e in zip(found, exact, strict=True))
        total += len(queries)
    assert agree / total >= 0.99, f"top-1 agrees with exact search for {agree}/{total}"


def test_search_returns_best_face_per_person_under_threshold(big_gallery) -> None:
    gallery, domains, _ = big_gallery
    dom, _, faces, index = domains["scale-b"]
    matches = gallery.search(dom, MODEL, [faces[5, 0]], k=5, threshold=0.5)[0]
    assert index[matches[0].person_id] == 5 and matches[0].distance < 1e-5
    assert len({m.person_id for m in matches}) == len(matches)  # one row per person
    assert all(a.distance <= b.distance for a, b in itertools.pairwise(matches))
    assert all(m.distance < 0.5 for m in matches)
    tight = gallery.search(dom, MODEL, [faces[5, 0]], k=5, threshold=1e-4)[0]
    assert [index[m.person_id] for m in tight] == [5]


def test_recognize_face_sql_function(big_gallery, db) -> None:
    gallery, domains, _ = big_gallery
    dom, _, faces, _ = domains["scale-a"]
    for query in faces[:20, 1]:
        rows = db.execute("SELECT * FROM recognize_face(%s, %s, %s, %s)",
                          (query, "scale-a", 0.3, 3)).fetchall()
        ours = gallery.search(dom, MODEL, [query], k=3, threshold=0.3)[0]
        assert [(r[0], r[2]) for r in rows] == [(m.person_id, m.face_id) for m in ours]
        assert np.allclose([r[3] for r in rows], [m.distance for m in ours], atol=1e-6)
    with pytest.raises(psycopg.errors.NoDataFound, match="unknown domain"):
        db.execute("SELECT * FROM recognize_face(%s, 'nowhere', 0.3, 3)", (faces[0, 0],))
    with pytest.raises(psycopg.errors.DataException, match="dimensions"):
        db.execute("SELECT * FROM recognize_face(%s, 'scale-a', 0.3, 3)", (np.ones(512, np.float32),))


def test_external_url_is_used_as_given(db_url: str) -> None:
    """With a URL facesearch uses that server: here a fresh database on the same server."""
    admin = psycopg.connect(db_url, autocommit=True)
    admin.execute("DROP DATABASE IF EXISTS facesearch_external")
    admin.execute("CREATE DATABASE facesearch_external")
    url = make_conninfo(db_url, dbname="facesearch_external")
    conn = connect(url)
    assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(migrations())
    conn.close()
    admin.execute("DROP DATABASE facesearch_external")
    admin.close()


def test_clear_error_when_pgvector_cannot_be_created(db_url: str) -> None:
    admin = psycopg.connect(db_url, autocommit=True)
    admin.execute("DROP DATABASE IF EXISTS facesearch_limited")
    admin.execute("DROP ROLE IF EXISTS limited_user")
    admin.execute("CREATE ROLE limited_user LOGIN")
    admin.execute("CREATE DATABASE facesearch_limited OWNER limited_user")
    try:
        url = make_conninfo(db_url, dbname="facesearch_limited", user="limited_user")
        with pytest.raises(StoreError, match=r"could not be created.*CREATE EXTENSION vector"):
            connect(url)
    finally:
        admin.execute("DROP DATABASE facesearch_limited")
        admin.execute("DROP ROLE limited_user")
        admin.close()


def test_clear_error_when_server_unreachable(db_url: str) -> None:
    host = conninfo_to_dict(db_url)["host"]
    url = make_conninfo(db_url, host=host + "-missing")
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL"):
        connect(url)


def test_search_never_mixes_models(gallery: BlockingGallery, db: psycopg.Connection) -> None:
    """Faces of another model with the same dimension sit in the same domain; a search with one
    model never returns them (rule 4)."""
    dom = gallery.create_domain("store-models", model=MODEL)
    pid = gallery.person_id(dom, "Ana", create=True)
    emb = np.eye(DIM, dtype=np.float32)[0]
    gallery.add_faces(dom, MODEL, [NewFace(pid, emb, (0, 0, 1, 1), 1.0, b"\1" * 32)])
    other = db.execute(
        "INSERT INTO models (name, dim) VALUES ('other-model-128', %s) RETURNING id", (DIM,)).fetchone()[0]
    impostor = gallery.person_id(dom, "Other model", create=True)
    db.execute(
        "INSERT INTO faces (domain_id, person_id, model_id, embedding, box_x, box_y, box_w, box_h,"
        " photo_sha256) VALUES (%s, %s, %s, %s, 0, 0, 1, 1, %s)",
        (dom.id, impostor, other, emb, b"\2" * 32))
    matches = gallery.search(dom, MODEL, [emb], k=5, threshold=1.5)[0]
    assert [m.person for m in matches] == ["Ana"]
    gallery.delete_domain("store-models")
    db.execute("DELETE FROM models WHERE id = %s", (other,))


def test_search_many_queries_and_candidates(big_gallery) -> None:
    """Several embeddings in one call (pipelined), and a k whose candidates exceed ef_search (the
    SET LOCAL branch): the same answers as one query at a time."""
    gallery, domains, _ = big_gallery
    dom, _, faces, index = domains["scale-b"]
    queries = faces[:50, 0]
    together = gallery.search(dom, MODEL, queries, k=30, threshold=2.0)
    alone = [gallery.search(dom, MODEL, [q], k=30, threshold=2.0)[0] for q in queries[:5]]
    assert together[:5] == alone
    for matches in together:
        assert len(matches) == 30 and len({m.person_id for m in matches}) == 30
        assert all(a.distance <= b.distance for a, b in itertools.pairwise(matches))
    # Approximate search: a stored face finds itself nearly always (not always: see recall).
    found = sum(index[m[0].person_id] == i and m[0].distance < 1e-5 for i, m in enumerate(together))
    assert found >= 45, f"{found}/50 stored faces found themselves"
    assert gallery.search(dom, MODEL, [], k=5, threshold=0.5) == []


def test_person_ids_stay_in_their_domain(gallery: BlockingGallery, db: psycopg.Connection) -> None:
    """Person ids are numbered per domain (each domain's first person is 1), so each operation by
    id must check the domain: an id only domain B has, asked through domain A, is NotFound, and B's
    person is left untouched."""
    a = gallery.create_domain("store-ids-a", model=MODEL)
    b = gallery.create_domain("store-ids-b", model=MODEL)
    first_b = gallery.create_person(b, "Bo")
    assert (gallery.create_person(a, "Ann").id, first_b.id) == (1, 1)
    bea = gallery.create_person(b, "Bea", {"team": "b"})
    assert bea.id == 2
    emb = np.eye(DIM, dtype=np.float32)[1]
    gallery.add_faces(b, MODEL, [NewFace(bea.id, emb, (0, 0, 1, 1), 1.0, b"\3" * 32)])
    for call in (lambda: gallery.get_person(a, bea.id),
                 lambda: gallery.rename_person(a, bea.id, "Mallory"),
                 lambda: gallery.set_metadata(a, bea.id, {"owned": True}),
                 lambda: gallery.delete_person(a, bea.id),
                 lambda: gallery.list_faces(a, bea.id),
                 lambda: gallery.person_id(a, bea.id)):
        with pytest.raises(NotFound, match=f"with id {bea.id} in domain 'store-ids-a'"):
            call()
    with pytest.raises(NotFound, match="no person named 'Bea'"):
        gallery.get_person(a, "Bea")
    assert gallery.get_person(b, bea.id) == dataclasses.replace(bea, faces=1)
    assert db.execute("SELECT count(*) FROM faces WHERE domain_id = %s AND person_id = %s",
                      (b.id, bea.id)).fetchone() == (1,)

    # By id in its own domain: the same person as by name; updates return the updated person.
    assert gallery.get_person(b, "Bea") == gallery.get_person(b, bea.id)
    assert gallery.rename_person(b, bea.id, "Beatrix").name == "Beatrix"
    assert gallery.set_metadata(b, "Beatrix", {"team": "c"}).metadata == {"team": "c"}
    faces = gallery.list_faces(b, bea.id)
    assert [(f.person_id, f.person) for f in faces] == [(bea.id, "Beatrix")]
    assert gallery.delete_person(b, bea.id) == 1
    with pytest.raises(NotFound):
        gallery.get_person(b, bea.id)
    with pytest.raises(TypeError):
        gallery.get_person(b, 1.5)
    gallery.delete_domain("store-ids-a")
    gallery.delete_domain("store-ids-b")


def test_create_and_count_people(gallery: BlockingGallery) -> None:
    dom = gallery.create_domain("store-people", model=MODEL)
    ana = gallery.create_person(dom, "  Ana Novak ", {"employee": 7})
    assert (ana.name, ana.faces, ana.metadata) == ("Ana Novak", 0, {"employee": 7})
    with pytest.raises(Conflict, match="already has a person named 'Ana Novak'"):
        gallery.create_person(dom, "Ana Novak")
    with pytest.raises(InvalidName):
        gallery.create_person(dom, "")
    assert gallery.create_person(dom, "Bojan").metadata == {}
    gallery.ensure_people(dom, [f"extra {i}" for i in range(5)])
    assert gallery.count_people(dom) == 7
    assert gallery.count_people(dom, search="NOV") == 1
    assert gallery.count_people(dom, search="extra") == len(gallery.list_people(dom, search="extra"))
    page = gallery.list_people(dom, limit=3, offset=3)
    assert [p.name for p in page] == ["extra 1", "extra 2", "extra 3"]
    other = gallery.create_domain("store-people-2", model=MODEL)
    # Names and ids are per domain: the other domain's first person is its number 1 too.
    assert gallery.create_person(other, "Ana Novak").id == ana.id == 1
    assert gallery.count_people(other) == 1
    gallery.delete_domain("store-people")
    gallery.delete_domain("store-people-2")


def test_add_faces_returns_new_ids_and_none_for_duplicates(gallery: BlockingGallery) -> None:
    dom = gallery.create_domain("store-add", model=MODEL)
    pid = gallery.person_id(dom, "Ana", create=True)
    eye = np.eye(DIM, dtype=np.float32)

    def face(i: int, photo: bytes) -> NewFace:
        return NewFace(pid, eye[i], (i, 0, 10, 10), 0.9, hashlib.sha256(photo).digest())

    first = gallery.add_faces(dom, MODEL, [face(0, b"p0"), face(1, b"p1")])
    assert None not in first
    # Stored already; new; the new one again in the same batch; new.
    again = gallery.add_faces(dom, MODEL, [face(0, b"p0"), face(2, b"p2"), face(2, b"p2"),
                                           face(3, b"p3")])
    assert again[0] is None and again[2] is None and None not in (again[1], again[3])
    assert gallery.add_faces(dom, MODEL, []) == []
    rows = gallery.list_faces(dom, pid)
    assert [f.id for f in rows] == sorted([*first, again[1], again[3]])
    assert {f.id: f.box[0] for f in rows} == {first[0]: 0, first[1]: 1, again[1]: 2, again[3]: 3}
    assert {f.person_id for f in rows} == {pid}
    gallery.delete_domain("store-add")


def test_api_keys(gallery: BlockingGallery, db: psycopg.Connection) -> None:
    a = gallery.create_domain("store-keys-a", model=MODEL)
    b = gallery.create_domain("store-keys-b", model=MODEL)
    key, secret = gallery.create_key(a, "ci runner")
    assert secret.startswith("fsk_") and len(secret) > 40 and key.prefix == secret[:12]
    assert (key.name, key.last_used_at) == ("ci runner", None)
    assert gallery.key_domain(secret) == "store-keys-a"

    # The listing tells keys apart by prefix; neither the secret nor its hash is in it or stored.
    listed = gallery.list_keys(a)
    assert [k.id for k in listed] == [key.id] and listed[0].last_used_at is not None
    assert {f.name for f in dataclasses.fields(listed[0])} == {
        "id", "name", "prefix", "created_at", "last_used_at"}
    assert secret not in repr(listed)
    stored = db.execute("SELECT key_sha256, prefix FROM api_keys WHERE id = %s", (key.id,)).fetchone()
    assert bytes(stored[0]) == hashlib.sha256(secret.encode()).digest() and stored[1] == secret[:12]
    assert gallery.list_keys(b) == []

    for bad in ("", "fsk_", secret + "x", "fsk_" + "A" * 43, secret[:-1]):
        assert gallery.key_domain(bad) is None
    with pytest.raises(InvalidName):
        gallery.create_key(a, " ")

    # Another domain cannot revoke it; its own domain can.
    with pytest.raises(NotFound):
        gallery.revoke_key(b, key.id)
    assert gallery.key_domain(secret) == "store-keys-a"
    gallery.revoke_key(a, key.id)
    assert gallery.key_domain(secret) is None
    with pytest.raises(NotFound):
        gallery.revoke_key(a, key.id)

    # Deleting a domain deletes its keys.
    kept, kept_secret = gallery.create_key(b, "b's key")
    assert gallery.key_domain(kept_secret) == "store-keys-b"
    gallery.delete_domain("store-keys-b")
    assert gallery.key_domain(kept_secret) is None
    assert db.execute("SELECT count(*) FROM api_keys WHERE id = %s", (kept.id,)).fetchone() == (0,)
    gallery.delete_domain("store-keys-a")


def test_galleries_on_a_pool_share_a_cache_and_search_concurrently(
        gallery: BlockingGallery, db_url: str) -> None:
    """The service's way: a cheap Gallery per task on a pooled connection, one shared cache."""
    rng = np.random.default_rng(3)
    _, faces = clustered(rng, 40, 2)
    dom, index = fill(gallery, "store-pool", faces)

    async def main() -> tuple[list[list], GalleryCache]:
        pool = open_pool(db_url, min_size=2, max_size=4)
        await pool.open(wait=True)
        cache = GalleryCache()
        try:
            async def one(i: int) -> list:
                async with pool.connection() as conn:
                    return (await Gallery(conn, cache).search(dom, MODEL, [faces[i, 1]], k=3,
                                                              threshold=0.5))[0]

            results = await asyncio.gather(*(one(i) for i in range(len(faces))))
        finally:
            await pool.close()
        return results, cache

    results, cache = asyncio.run(main())
    assert [index[r[0].person_id] for r in results] == list(range(len(faces)))
    assert all(r[0].distance < 1e-5 for r in results)
    assert set(cache.models) == {MODEL} and set(cache.search_queries) == {MODEL}
    gallery.delete_domain("store-pool")


def test_concurrent_first_enrollments_into_a_new_domain(gallery: BlockingGallery, db_url: str,
                                                        db) -> None:
    """Several transactions adding the first faces of a domain at once: the one that builds the
    index and the others must not deadlock (the builder waits for their rows, they for its lock)."""
    rng = np.random.default_rng(5)
    _, faces = clustered(rng, 8, 3)
    dom = gallery.create_domain("store-race", model=MODEL)
    ids = gallery.ensure_people(dom, [f"p{i}" for i in range(len(faces))])

    async def main() -> list[list[int | None]]:
        pool = open_pool(db_url, min_size=len(faces), max_size=len(faces))
        await pool.open(wait=True)
        try:
            async def enroll(i: int) -> list[int | None]:
                async with pool.connection() as conn:
                    return await Gallery(conn).add_faces(dom, MODEL, [
                        NewFace(person_id=ids[f"p{i}"], embedding=e, box=(0, 0, 1, 1), score=1.0,
                                photo_sha256=hashlib.sha256(f"race{i}/{j}".encode()).digest())
                        for j, e in enumerate(faces[i])])

            return await asyncio.gather(*(enroll(i) for i in range(len(faces))))
        finally:
            await pool.close()

    added = asyncio.run(main())
    assert all(None not in ids_ for ids_ in added) and sum(map(len, added)) == faces.size // DIM
    indexes = db.execute("SELECT count(*) FROM pg_indexes WHERE tablename = %s AND indexdef LIKE"
                         " '%%hnsw%%'", (f"faces_d{dom.id}",)).fetchone()[0]
    assert indexes == 1
    gallery.delete_domain("store-race")
