"""Bulk loads (store/bulk.py) on the real embedded PostgreSQL: a first load COPYs straight into
faces with vectors exactly as given, a conflict falls back to the staged insert."""

from __future__ import annotations

import hashlib

import numpy as np
import psycopg

from bench.synthetic import clustered
from facesearch.store import BlockingGallery, NewFace, bulk
from facesearch.store.gallery import ANALYZE_BATCH

MODEL = "deepface:ArcFace"  # 512-d: over the TOAST threshold, as the imports that are bulk loads
DIM = 512


def faces_of(people: dict[str, int], per_person: int, seed: int) -> list[NewFace]:
    _, emb = clustered(np.random.default_rng(seed), len(people), per_person, DIM)
    return [NewFace(pid, emb[i, k], (i, k, 10, 10), None, hashlib.sha256(f"{name}/{k}".encode()).digest(),
                    source=f"/db/{name}/{k}.jpg", source_hash=f"{i:x}{k:x}")
            for i, (name, pid) in enumerate(sorted(people.items())) for k in range(per_person)]


def staging_table(gallery: BlockingGallery) -> bool:
    """Whether this session has made add_faces' staging table."""
    cur = gallery.run(gallery.conn.execute("SELECT to_regclass('pg_temp.new_faces') IS NOT NULL"))
    return gallery.run(cur.fetchone())[0]


def test_a_first_load_is_copied_straight_into_faces(gallery: BlockingGallery,
                                                    db: psycopg.Connection) -> None:
    dom = gallery.create_domain("bulk-first", model=MODEL)
    people = gallery.ensure_people(dom, [f"p{i}" for i in range(400)])
    faces = faces_of(people, 3, seed=1)  # 1,200: more than ANALYZE_BATCH, and an index build
    assert len(faces) > ANALYZE_BATCH
    repeat = faces[5]  # given twice: the first is stored, the repeat is None
    sent: list[int] = []
    ids = gallery.add_faces(dom, MODEL, [*faces, repeat], progress=sent.append)
    assert not staging_table(gallery)  # no staging table, no INSERT ... SELECT
    assert sum(sent) == len(faces) + 1  # the bar reaches the end, repeats included
    assert ids[-1] is None and None not in ids[:-1]
    assert ids[:-1] == list(range(ids[0], ids[0] + len(faces)))  # the domain's ids, in order
    rows = db.execute("SELECT id, embedding, box_x, box_y, source, source_hash, det_score FROM faces"
                      " WHERE domain_id = %s ORDER BY id", (dom.id,)).fetchall()
    assert len(rows) == len(faces)
    for (fid, emb, x, y, source, source_hash, score), face, want in zip(rows, faces, ids[:-1],
                                                                       strict=True):
        assert fid == want and (x, y) == face.box[:2] and score is None
        assert (source, source_hash) == (face.source, face.source_hash)
        assert np.array_equal(emb.to_numpy(), face.embedding)  # float32, bit for bit
    # The index was built after the rows, and the search finds each face.
    model_id, _ = gallery.model(MODEL)
    assert db.execute("SELECT to_regclass(%s) IS NOT NULL",
                      (f"faces_d{dom.id}_m{model_id}_hnsw",)).fetchone()[0]
    hits = gallery.search(dom, MODEL, [faces[0].embedding, faces[-1].embedding], k=1, threshold=0.01)
    assert [h[0].face_id for h in hits] == [ids[0], ids[len(faces) - 1]]
    # A later batch (the index exists) is staged: stored ones are skipped, the new one added.
    more = faces_of({"p0": people["p0"]}, 4, seed=1)[3]
    again = gallery.add_faces(dom, MODEL, [faces[0], more])
    assert staging_table(gallery)
    assert again[0] is None and again[1] == ids[0] + len(faces) + 2  # the repeat's id is unused
    gallery.delete_domain("bulk-first")


def test_a_first_load_that_conflicts_falls_back_to_the_staged_insert(
        gallery: BlockingGallery, db: psycopg.Connection) -> None:
    dom = gallery.create_domain("bulk-conflict", model=MODEL)
    people = gallery.ensure_people(dom, ["ana", "bo"])
    faces = faces_of(people, 2, seed=2)
    model_id, _ = gallery.model(MODEL)
    # A row that is there already (as if another writer committed it after the check).
    stored = db.execute("INSERT INTO faces (domain_id, person_id, model_id, embedding, box_x, box_y,"
                        " box_w, box_h, photo_sha256) VALUES (%s, %s, %s, %s, 0, 0, 1, 1, %s)"
                        " RETURNING id", (dom.id, faces[1].person_id, model_id, faces[1].embedding,
                                          faces[1].photo_sha256)).fetchone()[0]
    rows = bulk.face_rows(dom.id, model_id, faces, 1000, DIM)

    async def first_load() -> list[int | None] | None:
        async with gallery.conn.transaction():
            return await bulk.copy_first_load(gallery.conn, rows, [True] * len(rows), None)

    assert gallery.run(first_load()) is None  # refused, and nothing of it written
    assert db.execute("SELECT id FROM faces WHERE domain_id = %s", (dom.id,)).fetchall() == [
        (stored,)]
    # add_faces' own fallback: the staged insert stores the others and skips the stored one.
    ids = gallery.add_faces(dom, MODEL, faces)
    assert ids[1] is None and None not in (ids[0], ids[2], ids[3])
    assert db.execute("SELECT count(*) FROM faces WHERE domain_id = %s", (dom.id,)).fetchone()[0] == 4
    gallery.delete_domain("bulk-conflict")
