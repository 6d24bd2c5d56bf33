"""Unassigned faces in the real embedded PostgreSQL: per-domain ids, the incremental join, the
retention limits, the index that serves the domain filter, and PKL mode's clear refusal."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import psycopg
import pytest

from facesearch.models import SFACE_MODEL
from facesearch.store import BlockingGallery, unknown
from facesearch.store.pkl import BlockingPklGallery


def people_faces(rng: np.random.Generator, people: int, per: int) -> np.ndarray:
    """Unit vectors: people in random directions (~1 apart), their faces ~0.1 from their centre."""
    centres = rng.normal(size=(people, 128))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    faces = centres[:, None, :] + 0.05 * rng.normal(size=(people, per, 128))
    return (faces / np.linalg.norm(faces, axis=2, keepdims=True)).astype(np.float32)


def new(emb: np.ndarray, tag: str) -> unknown.UnknownFace:
    return unknown.UnknownFace(emb, (0, 0, 50, 50), 0.9, hashlib.sha256(tag.encode()).digest())


def add(gallery: BlockingGallery, dom, faces: list[unknown.UnknownFace], max_faces: int = 1000,
        max_days: float = 30) -> list[int]:
    return gallery.run(unknown.add_unknown(gallery.gallery, dom, faces, max_faces=max_faces,
                                           max_days=max_days))


def domain(gallery: BlockingGallery, name: str):
    gallery.create_domain(name, model=SFACE_MODEL)
    gallery.run(unknown.set_keep_unknown(gallery.gallery, name, True))
    dom = gallery.get_domain(name)
    assert dom.keep_unknown
    return dom


def test_ids_per_domain_and_the_incremental_join(gallery: BlockingGallery) -> None:
    faces = people_faces(np.random.default_rng(3), 2, 3)
    a, b = domain(gallery, "unk-store-a"), domain(gallery, "unk-store-b")
    ids_a = add(gallery, a, [new(f, f"a{i}") for i, f in enumerate(faces[0])])
    ids_b = add(gallery, b, [new(faces[1][0], "b0")])
    assert ids_a == [1, 2, 3] and ids_b == [1]  # each domain counts its own
    add(gallery, a, [new(f, f"a2-{i}") for i, f in enumerate(faces[1])])
    clusters = gallery.run(unknown.list_clusters(gallery.gallery, a))
    assert [sorted(f.id for f in c.faces) for c in clusters] == [[1, 2, 3], [4, 5, 6]]
    assert [c.id for c in clusters] == [1, 2]
    assert gallery.run(unknown.list_clusters(gallery.gallery, b)) == []  # a lone face: min_faces 2
    assert [c.id for c in gallery.run(unknown.list_clusters(gallery.gallery, b, min_faces=1))] == [1]


def test_retention_keeps_the_newest(gallery: BlockingGallery) -> None:
    dom = domain(gallery, "unk-store-keep")
    faces = people_faces(np.random.default_rng(4), 5, 1)[:, 0]
    add(gallery, dom, [new(f, f"k{i}") for i, f in enumerate(faces)], max_faces=3)
    left = gallery.run(unknown.list_clusters(gallery.gallery, dom, min_faces=1))
    assert sorted(f.id for c in left for f in c.faces) == [3, 4, 5]
    # Older than the age limit: gone at the next prune.
    assert gallery.run(unknown.prune(gallery.gallery, dom, max_faces=100, max_days=0)) == 3
    assert gallery.run(unknown.count_unassigned(gallery.gallery, dom)) == 0


def test_the_domain_filter_is_served_by_an_index(gallery: BlockingGallery, db: psycopg.Connection) -> None:
    big, small = domain(gallery, "unk-store-big"), domain(gallery, "unk-store-small")
    rng = np.random.default_rng(5)
    add(gallery, big, [new(f, f"big{i}") for i, f in enumerate(people_faces(rng, 400, 5).reshape(-1, 128))],
        max_faces=5000)
    add(gallery, small, [new(f, f"s{i}") for i, f in enumerate(people_faces(rng, 2, 2).reshape(-1, 128))])
    db.execute("ANALYZE unassigned_faces")
    model_id = gallery.model(SFACE_MODEL)[0]
    for query in ("SELECT id, cluster_id, embedding FROM unassigned_faces WHERE domain_id = %s"
                  " AND model_id = %s ORDER BY id",
                  "SELECT id FROM unassigned_faces WHERE domain_id = %s AND cluster_id = 1"
                  " AND model_id = %s"):
        plan = "\n".join(r[0] for r in db.execute("EXPLAIN " + query, (small.id, model_id)))
        assert "Index" in plan and "Seq Scan" not in plan, plan


def test_pkl_mode_refuses_clearly(tmp_path: Path) -> None:
    with BlockingPklGallery(tmp_path / "pkl") as pkl:
        dom = pkl.create_domain("unk-pkl", model=SFACE_MODEL)
        with pytest.raises(unknown.NotInPkl, match="PKL mode"):
            pkl.run(unknown.list_clusters(pkl.gallery, dom))
        with pytest.raises(unknown.NotInPkl):
            pkl.run(unknown.set_keep_unknown(pkl.gallery, "unk-pkl", True))
    assert unknown.NotInPkl.status == 400
