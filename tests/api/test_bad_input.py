"""Bad input over HTTP: each gets its documented 4xx and the one error shape; the server stays up
and keeps what it stored."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from ..conftest import photos_of
from .conftest import assert_error, jpeg, pick_people

DOMAIN = "api-bad"


@pytest.fixture(scope="module")
def setup(server, lfw: Path) -> dict:
    assert server.admin.post("/v1/domains", json={"name": DOMAIN}).status_code == 201
    name = pick_people(lfw, 2, 1, skip=3)[0]
    photo = photos_of(lfw, name)[0]
    r = server.admin.post(f"/v1/domains/{DOMAIN}/enroll", data={"name": name},
                          files={"photo": jpeg(photo)}, params={"face": "largest"})
    assert r.status_code == 201, r.text
    return {"photo": photo, "person": r.json()["person"]["id"], "faces": r.json()["person"]["faces"]}


def recognize(server, **kwargs):
    return server.admin.post(f"/v1/domains/{DOMAIN}/recognize", **kwargs)


def png_bomb() -> bytes:
    """A tiny PNG that claims 200 megapixels."""
    buf = io.BytesIO()
    Image.new("L", (20000, 10000)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def test_bad_photos(server, setup: dict) -> None:
    data = setup["photo"].read_bytes()
    assert_error(recognize(server, content=b"", headers={"Content-Type": "image/jpeg"}), 415,
                 "unsupported_image")
    assert_error(recognize(server, json={"photo": "x"}), 415, "unsupported_media_type")
    assert_error(recognize(server), 415, "unsupported_media_type")
    assert_error(recognize(server, files={"photo": ("a.txt", b"hello, not a photo", "text/plain")}),
                 415, "unsupported_image")
    assert_error(recognize(server, files={"photo": ("t.jpg", data[: len(data) // 2], "image/jpeg")}),
                 422, "invalid_image")
    assert_error(recognize(server, files={"photo": ("bomb.png", png_bomb(), "image/png")}), 413,
                 "image_too_large")
    assert_error(recognize(server, data={"note": "no file"}), 415, "unsupported_media_type")
    two = [("photo", jpeg(setup["photo"])), ("photo", jpeg(setup["photo"]))]
    assert_error(recognize(server, files=two), 400, "bad_request")
    blank = io.BytesIO()
    Image.new("RGB", (300, 300), "white").save(blank, "JPEG")
    r = recognize(server, files={"photo": ("blank.jpg", blank.getvalue(), "image/jpeg")})
    assert r.status_code == 200 and r.json()["faces"] == []  # no face is an answer, not an error
    refused = server.admin.post(f"/v1/domains/{DOMAIN}/people/{setup['person']}/faces",
                                files={"photo": ("blank.jpg", blank.getvalue(), "image/jpeg")})
    err = assert_error(refused, 422, "nothing_enrolled")
    assert err["details"][0]["error"]["code"] == "no_face"
    # Enrolling a new name with no usable photo leaves no empty person behind.
    nobody = server.admin.post(f"/v1/domains/{DOMAIN}/enroll", data={"name": "Nobody Here"},
                               files={"photo": ("blank.jpg", blank.getvalue(), "image/jpeg")})
    assert_error(nobody, 422, "nothing_enrolled")
    assert server.admin.get(f"/v1/domains/{DOMAIN}/people", params={"q": "Nobody"}).json()["total"] == 0
    assert_error(server.admin.post("/v1/verify", files={"photo1": jpeg(setup["photo"]),
                                                        "photo2": ("b.jpg", blank.getvalue())}),
                 422, "no_face")
    assert_error(server.admin.post("/v1/verify", files={"photo1": jpeg(setup["photo"])}), 400)
    assert_error(server.admin.post("/v1/detect", content=b"\x00" * 100,
                                   headers={"Content-Type": "application/octet-stream"}), 415)


def test_oversize_upload(server, setup: dict) -> None:
    big = b"\xff\xd8" + b"\0" * (16 * 1024 * 1024)
    assert_error(recognize(server, files={"photo": ("big.jpg", big, "image/jpeg")}), 413,
                 "upload_too_large")
    # Streamed without a Content-Length (chunked): cut off at the limit just the same.
    chunks = (b"\0" * (1 << 20) for _ in range(20))
    assert_error(recognize(server, content=chunks, headers={"Content-Type": "image/jpeg"}), 413,
                 "upload_too_large")


def test_unknown_things_and_bad_parameters(server, setup: dict) -> None:
    photo = {"photo": jpeg(setup["photo"])}
    assert_error(server.admin.post("/v1/domains/nowhere/recognize", files=photo), 404, "not_found")
    assert_error(server.admin.get(f"/v1/domains/{DOMAIN}/people/999999999"), 404, "not_found")
    assert_error(server.admin.get(f"/v1/domains/{DOMAIN}/people/abc"), 422, "invalid_request")
    assert_error(server.admin.get("/v1/nothing-here"), 404, "not_found")
    assert_error(server.admin.put(f"/v1/domains/{DOMAIN}"), 405, "method_not_allowed")
    assert_error(recognize(server, files=photo, params={"top_k": 0}), 422, "invalid_request")
    assert_error(recognize(server, files=photo, params={"threshold": "wide"}), 422)
    assert_error(server.admin.post(f"/v1/domains/{DOMAIN}/people", content=b"{not json",
                                   headers={"Content-Type": "application/json"}), 422)
    assert_error(server.admin.post(f"/v1/domains/{DOMAIN}/people/{setup['person']}/faces",
                                   files=photo, params={"face": "biggest"}), 422)
    assert_error(server.admin.post(f"/v1/domains/{DOMAIN}/enroll", files=photo), 400, "bad_request")


@pytest.mark.parametrize("name", ["", "../etc", "a b", "x" * 64, "dom\x00ain", "ümlaut", "a;DROP"])
def test_hostile_domain_names(server, name: str) -> None:
    assert_error(server.admin.post("/v1/domains", json={"name": name}), 422, "invalid_name")


@pytest.mark.parametrize("name", ["", " ", "a\nb", "tab\there", "\u202eevil", "x" * 201, "nul\x00"])
def test_hostile_person_names(server, setup: dict, name: str) -> None:
    r = server.admin.post(f"/v1/domains/{DOMAIN}/people", json={"name": name})
    assert_error(r, 422, "invalid_name")


def test_odd_but_valid_names_are_stored_verbatim(server, setup: dict) -> None:
    for name in ["Robert'); DROP TABLE people;--", "Žiga Čuk", "李小龍", "O'Brien / Smith"]:
        r = server.admin.post(f"/v1/domains/{DOMAIN}/people", json={"name": name})
        assert r.status_code == 201, r.text
        assert server.admin.get(f"/v1/domains/{DOMAIN}/people/{r.json()['id']}").json()["name"] == name


def test_still_up_and_nothing_lost(server, setup: dict) -> None:
    assert server.client().get("/readyz").status_code == 200
    person = server.admin.get(f"/v1/domains/{DOMAIN}/people/{setup['person']}").json()
    assert person["faces"] == setup["faces"]
    r = recognize(server, files={"photo": jpeg(setup["photo"])})
    assert r.json()["faces"][0]["matches"][0]["person_id"] == setup["person"]
