"""Face thumbnails: stored at enrollment, served only to keys of their domain, gone with the face."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from ..conftest import photos_of
from .conftest import assert_error, jpeg, pick_people


@pytest.fixture(scope="module")
def thumbs(server, lfw: Path) -> dict:
    """Domains thumbs-a (one person, two photos enrolled) and thumbs-b, a key for each."""
    name = pick_people(lfw, 2, 1, skip=4)[0]
    clients = {}
    for dom in ("thumbs-a", "thumbs-b"):
        assert server.admin.post("/v1/domains", json={"name": dom}).status_code == 201
        key = server.admin.post(f"/v1/domains/{dom}/keys", json={"name": "k"}).json()["key"]
        clients[dom] = server.client(key)
    r = clients["thumbs-a"].post("/v1/domains/thumbs-a/enroll", data={"name": name},
                                 files=[("photo", jpeg(p)) for p in photos_of(lfw, name)[:2]],
                                 params={"face": "largest"})
    assert r.status_code == 201 and r.json()["enrolled"] == 2, r.text
    person = r.json()["person"]
    faces = clients["thumbs-a"].get(f"/v1/domains/thumbs-a/people/{person['id']}/faces").json()["faces"]
    return {"a": clients["thumbs-a"], "b": clients["thumbs-b"], "person": person, "faces": faces}


def thumbnail_path(face_id: int) -> str:
    return f"/v1/domains/thumbs-a/faces/{face_id}/thumbnail"


def test_enrolled_faces_have_thumbnails(thumbs: dict) -> None:
    faces = thumbs["faces"]
    assert [f["has_thumbnail"] for f in faces] == [True, True]
    # The person (enroll's answer, get, and the listing) names a face to show.
    assert thumbs["person"]["thumbnail_face_id"] == faces[0]["id"]
    a = thumbs["a"]
    listed = a.get("/v1/domains/thumbs-a/people").json()["people"]
    assert [p["thumbnail_face_id"] for p in listed] == [faces[0]["id"]]
    r = a.get(thumbnail_path(faces[0]["id"]))
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/jpeg"
    assert r.headers["cache-control"] == "no-store"  # biometric data: no cache keeps it (issue 19)
    assert 1000 < len(r.content) < 8000  # a few KB
    image = Image.open(io.BytesIO(r.content))
    assert image.format == "JPEG" and image.size == (112, 112)


def test_thumbnails_only_for_keys_of_their_domain(server, thumbs: dict) -> None:
    face_id = thumbs["faces"][0]["id"]
    assert_error(thumbs["b"].get(thumbnail_path(face_id)), 403, "forbidden")
    assert_error(server.client().get(thumbnail_path(face_id)), 401, "unauthorized")
    # The face id is not thumbs-b's: asked in its own domain, it is simply not there.
    assert_error(thumbs["b"].get(f"/v1/domains/thumbs-b/faces/{face_id}/thumbnail"), 404, "not_found")
    assert server.admin.get(thumbnail_path(face_id)).status_code == 200


def test_thumbnail_goes_with_its_face(thumbs: dict, db) -> None:
    a = thumbs["a"]
    first, second = (f["id"] for f in thumbs["faces"])
    assert a.delete(f"/v1/domains/thumbs-a/faces/{first}").status_code == 204
    assert_error(a.get(thumbnail_path(first)), 404, "not_found")
    # Ids are numbered per domain: the check names it.
    in_a = ("SELECT count(*) FROM faces WHERE domain_id = (SELECT id FROM domains WHERE name = %s)"
            " AND id = %s")
    assert db.execute(in_a, ("thumbs-a", first)).fetchone() == (0,)
    person = a.get(f"/v1/domains/thumbs-a/people/{thumbs['person']['id']}").json()
    assert person["thumbnail_face_id"] == second
    assert a.delete(f"/v1/domains/thumbs-a/people/{thumbs['person']['id']}").status_code == 200
    assert_error(a.get(thumbnail_path(second)), 404, "not_found")
    assert db.execute(in_a, ("thumbs-a", second)).fetchone() == (0,)


def test_thumbnails_are_stored_out_of_line(thumbs: dict, db) -> None:
    """The JPEG is TOASTed without compression (migration 0004), on partitions made after it too."""
    rows = db.execute("SELECT attrelid::regclass::text, attstorage FROM pg_attribute"
                      " WHERE attname = 'thumbnail' AND attrelid::regclass::text LIKE 'faces%'").fetchall()
    assert ("faces", "e") in rows and len(rows) >= 3
    assert {storage for _, storage in rows} == {"e"}
