"""Unknown faces become people, over real HTTP with real LFW photos: a domain with keep_unknown
keeps the faces recognize matched to nobody, groups them into clusters, and a named cluster is
recognized from then on; a domain without it keeps nothing; deleting a domain deletes them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import psycopg
import pytest

from ..conftest import photos_of
from .conftest import assert_error, jpeg, pick_people

PEOPLE = 10
PHOTOS = 4  # clustered per person; the 5th is held out for the recognize after naming


@pytest.fixture(scope="module")
def unknown_domain(server, lfw: Path) -> dict:
    """Domain unk-a (keep_unknown) after recognizing 4 photos of each of 10 people nobody
    enrolled; which person each unassigned face id is; a key of unk-a and one of unk-b."""
    r = server.admin.post("/v1/domains", json={"name": "unk-a", "keep_unknown": True})
    assert r.status_code == 201 and r.json()["keep_unknown"] is True, r.text
    assert server.admin.post("/v1/domains", json={"name": "unk-b"}).status_code == 201
    keys = {d: server.admin.post(f"/v1/domains/{d}/keys", json={"name": "k"}).json()["key"]
            for d in ("unk-a", "unk-b")}
    client = server.client(keys["unk-a"])
    people = pick_people(lfw, PHOTOS + 1, PEOPLE, skip=7)
    whose: dict[int, str] = {}
    for person in people:
        for photo in photos_of(lfw, person)[:PHOTOS]:
            r = client.post("/v1/domains/unk-a/recognize", files={"photo": jpeg(photo)},
                            params={"max_faces": 1})
            assert r.status_code == 200, r.text
            face = r.json()["faces"][0]
            assert face["matches"] == [] and isinstance(face["unassigned_face_id"], int), face
            assert r.json()["timings_ms"]["keep_unknown"] > 0
            whose[face["unassigned_face_id"]] = person
    return {"client": client, "other": server.client(keys["unk-b"]), "people": people,
            "whose": whose}


def purity(clusters: list[dict], whose: dict[int, str]) -> tuple[float, set[str]]:
    """The share of clustered faces that are their cluster's majority person, and those people."""
    majority = [Counter(whose[f["id"]] for f in c["faces"]).most_common(1)[0] for c in clusters]
    faces = sum(len(c["faces"]) for c in clusters)
    return sum(n for _, n in majority) / faces, {p for p, _ in majority}


def check_clusters(client, whose: dict[int, str]) -> list[dict]:
    r = client.get("/v1/domains/unk-a/clusters")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["unassigned_faces"] == len(whose)
    clusters = body["clusters"]
    sizes = [c["size"] for c in clusters]
    assert sizes == sorted(sizes, reverse=True)  # largest first
    share, named = purity(clusters, whose)
    # 10 people: at least 9 clusters (and no more than 2 splits), 95 % of faces in the right one.
    assert PEOPLE - 1 <= len(clusters) <= PEOPLE + 2, sizes
    assert len(named) >= PEOPLE - 1, named
    assert share >= 0.95, (share, sizes)
    for c in clusters:
        assert 0 <= c["cohesion"] < body["cut"]
    return clusters


def test_unknown_faces_are_clustered_incrementally_and_again(unknown_domain: dict) -> None:
    client, whose = unknown_domain["client"], unknown_domain["whose"]
    before = check_clusters(client, whose)  # incremental: each face joined as it came
    r = client.post("/v1/domains/unk-a/clusters/recluster")
    assert r.status_code == 200 and r.json()["clusters"] >= PEOPLE - 1, r.text
    after = check_clusters(client, whose)
    assert {c["id"] for c in after}.isdisjoint({c["id"] for c in before})  # new ids


def test_clusters_belong_to_their_domain(server, unknown_domain: dict) -> None:
    other = unknown_domain["other"]
    assert_error(other.get("/v1/domains/unk-a/clusters"), 403, "forbidden")
    assert_error(server.client().get("/v1/domains/unk-a/clusters"), 401, "unauthorized")
    assert other.get("/v1/domains/unk-b/clusters").json()["clusters"] == []
    cluster = unknown_domain["client"].get("/v1/domains/unk-a/clusters").json()["clusters"][0]
    # unk-b has no such cluster: per-domain ids say nothing of other tenants'.
    assert_error(other.delete(f"/v1/domains/unk-b/clusters/{cluster['id']}"), 404, "not_found")
    face = cluster["faces"][0]["id"]
    assert_error(other.get(f"/v1/domains/unk-b/unassigned/{face}/thumbnail"), 404, "not_found")
    r = unknown_domain["client"].get(f"/v1/domains/unk-a/unassigned/{face}/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert cluster["faces"][0]["thumbnail"] == f"/v1/domains/unk-a/unassigned/{face}/thumbnail"


def test_naming_a_cluster_makes_recognize_name_them(server, unknown_domain: dict, lfw: Path) -> None:
    client, whose = unknown_domain["client"], unknown_domain["whose"]
    cluster = client.get("/v1/domains/unk-a/clusters").json()["clusters"][0]
    person = Counter(whose[f["id"]] for f in cluster["faces"]).most_common(1)[0][0]
    assert_error(client.post(f"/v1/domains/unk-a/clusters/{cluster['id']}/person", json={}),
                 400, "bad_request")
    r = client.post(f"/v1/domains/unk-a/clusters/{cluster['id']}/person", json={"name": person})
    assert r.status_code == 201, r.text
    named = r.json()
    assert named["person"]["name"] == person and named["person"]["faces"] == named["enrolled"] > 0
    assert named["person"]["thumbnail_face_id"] is not None  # the thumbnails came along
    assert_error(client.get(f"/v1/domains/unk-a/clusters/{cluster['id']}"), 404, "not_found")
    held_out = photos_of(lfw, person)[PHOTOS]
    r = client.post("/v1/domains/unk-a/recognize", files={"photo": jpeg(held_out)},
                    params={"max_faces": 1})
    face = r.json()["faces"][0]
    assert face["matches"] and face["matches"][0]["name"] == person, face
    assert face["unassigned_face_id"] is None  # matched: not kept


def test_merge_remove_and_discard(unknown_domain: dict) -> None:
    client = unknown_domain["client"]
    clusters = client.get("/v1/domains/unk-a/clusters").json()["clusters"]
    total = client.get("/v1/domains/unk-a/clusters").json()["unassigned_faces"]
    a, b = clusters[0], clusters[1]
    merged = client.post(f"/v1/domains/unk-a/clusters/{a['id']}/merge", json={"cluster_id": b["id"]})
    assert merged.status_code == 200 and merged.json()["size"] == a["size"] + b["size"], merged.text
    assert_error(client.post(f"/v1/domains/unk-a/clusters/{a['id']}/merge",
                             json={"cluster_id": a["id"]}), 400, "bad_request")
    face = b["faces"][0]["id"]
    r = client.delete(f"/v1/domains/unk-a/clusters/{a['id']}/faces/{face}")
    assert r.status_code == 200, r.text
    lone = r.json()["cluster_id"]
    assert client.get(f"/v1/domains/unk-a/clusters/{lone}").json()["size"] == 1
    assert client.get(f"/v1/domains/unk-a/clusters/{a['id']}").json()["size"] == a["size"] + b["size"] - 1
    r = client.delete(f"/v1/domains/unk-a/clusters/{a['id']}")
    assert r.status_code == 200 and r.json()["discarded"] == a["size"] + b["size"] - 1
    after = client.get("/v1/domains/unk-a/clusters").json()["unassigned_faces"]
    assert after == total - (a["size"] + b["size"] - 1)


def test_a_domain_without_keep_unknown_keeps_nothing(server, lfw: Path, db_url: str) -> None:
    assert server.admin.post("/v1/domains", json={"name": "unk-off"}).status_code == 201
    person = pick_people(lfw, 2, 1, skip=3)[0]
    r = server.admin.post("/v1/domains/unk-off/recognize", files={"photo": jpeg(photos_of(lfw, person)[0])})
    assert r.status_code == 200
    assert r.json()["faces"] and all(f["unassigned_face_id"] is None for f in r.json()["faces"])
    assert "keep_unknown" not in r.json()["timings_ms"]
    body = server.admin.get("/v1/domains/unk-off/clusters").json()
    assert body["unassigned_faces"] == 0 and body["keep_unknown"] is False
    with psycopg.connect(db_url, autocommit=True) as conn:
        n = conn.execute("SELECT count(*) FROM unassigned_faces u JOIN domains d ON d.id = u.domain_id"
                         " WHERE d.name = 'unk-off'").fetchone()[0]
    assert n == 0
    # Turned on later (the admin key only), it keeps the next unknown face.
    assert_error(server.client().patch("/v1/domains/unk-off", json={"keep_unknown": True}), 401)
    r = server.admin.patch("/v1/domains/unk-off", json={"keep_unknown": True})
    assert r.status_code == 200 and r.json()["keep_unknown"] is True
    r = server.admin.post("/v1/domains/unk-off/recognize", files={"photo": jpeg(photos_of(lfw, person)[0])},
                          params={"max_faces": 1})
    assert isinstance(r.json()["faces"][0]["unassigned_face_id"], int)


def test_deleting_a_domain_deletes_its_unassigned_faces(server, lfw: Path, db_url: str) -> None:
    assert server.admin.post("/v1/domains", json={"name": "unk-del", "keep_unknown": True}).status_code == 201
    person = pick_people(lfw, 2, 1, skip=5)[0]
    for photo in photos_of(lfw, person)[:2]:
        r = server.admin.post("/v1/domains/unk-del/recognize", files={"photo": jpeg(photo)},
                              params={"max_faces": 1})
        assert r.json()["faces"][0]["unassigned_face_id"] is not None
    with psycopg.connect(db_url, autocommit=True) as conn:
        domain_id = conn.execute("SELECT id FROM domains WHERE name = 'unk-del'").fetchone()[0]

        def kept() -> int:
            return conn.execute("SELECT count(*) FROM unassigned_faces WHERE domain_id = %s",
                                (domain_id,)).fetchone()[0]

        assert kept() == 2
        assert server.admin.delete("/v1/domains/unk-del").status_code == 200
        assert kept() == 0
        assert conn.execute("SELECT count(*) FROM unassigned_counters WHERE domain_id = %s",
                            (domain_id,)).fetchone()[0] == 0
