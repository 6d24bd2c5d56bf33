"""Keys: the admin key manages, a domain key reaches its own domain and nothing else."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from ..conftest import photos_of
from .conftest import assert_error, jpeg, pick_people, start_server


@pytest.fixture(scope="module")
def tenants(server, lfw: Path) -> dict:
    """Domains iso-a and iso-b, one person each (the same LFW person in both, to prove that a
    search never crosses domains), and a key for each."""
    a, b = pick_people(lfw, 3, 2, skip=2)
    out = {}
    for dom, name in (("iso-a", a), ("iso-b", b)):
        assert server.admin.post("/v1/domains", json={"name": dom}).status_code == 201
        key = server.admin.post(f"/v1/domains/{dom}/keys", json={"name": "k"}).json()
        client = server.client(key["key"])
        photos = photos_of(lfw, name)
        r = client.post(f"/v1/domains/{dom}/enroll", data={"name": name},
                        files=[("photo", jpeg(p)) for p in photos[:2]], params={"face": "largest"})
        assert r.status_code == 201, r.text
        out[dom] = {"client": client, "key": key, "person": r.json()["person"]["id"],
                    "name": name, "probe": photos[2]}
    # B's person enrolled in A too, under another name: A's answers must still come only from A.
    photos = photos_of(lfw, b)
    r = out["iso-a"]["client"].post("/v1/domains/iso-a/enroll", data={"name": "Decoy"},
                                    files={"photo": jpeg(photos[0])}, params={"face": "largest"})
    assert r.status_code == 201
    out["decoy"] = r.json()["person"]["id"]
    return out


def test_a_domain_key_gets_nothing_of_another_domain(tenants: dict) -> None:
    a = tenants["iso-a"]["client"]
    b_person = tenants["iso-b"]["person"]
    probe = tenants["iso-b"]["probe"]
    routes = [
        ("GET", "/v1/domains/iso-b", {}),
        ("GET", "/v1/domains/iso-b/people", {}),
        ("POST", "/v1/domains/iso-b/people", {"json": {"name": "x"}}),
        ("GET", f"/v1/domains/iso-b/people/{b_person}", {}),
        ("PATCH", f"/v1/domains/iso-b/people/{b_person}", {"json": {"name": "x"}}),
        ("DELETE", f"/v1/domains/iso-b/people/{b_person}", {}),
        ("GET", f"/v1/domains/iso-b/people/{b_person}/faces", {}),
        ("POST", f"/v1/domains/iso-b/people/{b_person}/faces", {"files": {"photo": jpeg(probe)}}),
        ("POST", "/v1/domains/iso-b/enroll", {"data": {"name": "x"}, "files": {"photo": jpeg(probe)}}),
        ("DELETE", "/v1/domains/iso-b/faces/1", {}),
        ("GET", "/v1/domains/iso-b/faces/1/thumbnail", {}),
        ("POST", "/v1/domains/iso-b/recognize", {"files": {"photo": jpeg(probe)}}),
        ("GET", "/v1/domains/iso-b/keys", {}),
        ("POST", "/v1/domains/iso-b/keys", {"json": {"name": "x"}}),
        ("DELETE", f"/v1/domains/iso-b/keys/{tenants['iso-b']['key']['id']}", {}),
        ("DELETE", "/v1/domains/iso-b", {}),
        # A domain that does not exist answers the same: keys cannot probe for tenants.
        ("GET", "/v1/domains/no-such-domain/people", {}),
    ]
    for method, path, kwargs in routes:
        err = assert_error(a.request(method, path, **kwargs), 403, "forbidden")
        assert "iso-b" not in err["message"]
    # Admin-only routes refuse a domain key, even for its own domain.
    assert_error(a.get("/v1/domains"), 403)
    assert_error(a.post("/v1/domains", json={"name": "x"}), 403)
    assert_error(a.get("/v1/domains/iso-a/keys"), 403)
    assert_error(a.delete("/v1/domains/iso-a"), 403)
    # Ids are numbered per domain: B's person's id through A's own domain is A's person of that
    # number (or none), never B's; an id A lacks is not found; B is untouched.
    mine = a.get(f"/v1/domains/iso-a/people/{b_person}")
    assert mine.status_code == 404 or mine.json()["name"] != tenants["iso-b"]["name"]
    assert_error(a.get("/v1/domains/iso-a/people/999999"), 404, "not_found")
    assert_error(a.delete("/v1/domains/iso-a/people/999999"), 404, "not_found")
    b = tenants["iso-b"]["client"]
    assert b.get(f"/v1/domains/iso-b/people/{b_person}").status_code == 200


def test_search_stays_in_its_domain(tenants: dict) -> None:
    probe = tenants["iso-b"]["probe"]
    in_a = tenants["iso-a"]["client"].post("/v1/domains/iso-a/recognize",
                                           files={"photo": jpeg(probe)}, params={"threshold": 2})
    assert in_a.status_code == 200
    matches = [m for f in in_a.json()["faces"] for m in f["matches"]]
    # B's person is in A only as "Decoy" (ids are per domain, so B's id says nothing here).
    assert {m["name"] for m in matches} <= {tenants["iso-a"]["name"], "Decoy"}
    assert {m["person_id"] for m in matches} <= {tenants["iso-a"]["person"], tenants["decoy"]}
    in_b = tenants["iso-b"]["client"].post("/v1/domains/iso-b/recognize", files={"photo": jpeg(probe)})
    assert in_b.json()["faces"][0]["matches"][0]["person_id"] == tenants["iso-b"]["person"]


def test_missing_wrong_and_revoked_keys(server, tenants: dict) -> None:
    anonymous = server.client()
    assert_error(anonymous.get("/v1/domains/iso-a/people"), 401, "unauthorized")
    assert_error(server.client("fsk_not-a-key").get("/v1/domains/iso-a/people"), 401)
    with httpx.Client(base_url=server.base, headers={"X-API-Key": tenants["iso-a"]["key"]["key"]}) as c:
        assert c.get("/v1/domains/iso-a/people").status_code == 200
    # Health is open; everything else needs a key.
    assert anonymous.get("/healthz").status_code == 200
    assert_error(anonymous.post("/v1/detect", files={"photo": jpeg(tenants["iso-a"]["probe"])}), 401)

    new = server.admin.post("/v1/domains/iso-a/keys", json={"name": "temp"}).json()
    listed = server.admin.get("/v1/domains/iso-a/keys").json()["keys"]
    assert {k["id"] for k in listed} >= {new["id"], tenants["iso-a"]["key"]["id"]}
    assert all("key" not in k for k in listed)
    assert new["key"].startswith(next(k["prefix"] for k in listed if k["id"] == new["id"]))
    temp = server.client(new["key"])
    assert temp.get("/v1/domains/iso-a").status_code == 200
    assert server.admin.delete(f"/v1/domains/iso-a/keys/{new['id']}").status_code == 200
    assert_error(temp.get("/v1/domains/iso-a"), 401, "unauthorized")
    assert_error(server.admin.delete(f"/v1/domains/iso-b/keys/{tenants['iso-a']['key']['id']}"), 404)


def test_generated_admin_key_is_printed_once_and_kept_hashed(tmp_path: Path, home: Path,
                                                             db_url: str) -> None:
    """No FACESEARCH_ADMIN_KEY: the first start makes a key, prints it once, stores its hash.
    On the embedded server (the session's, in ``home``): with an external database URL a key is
    never generated (test_replicas.py)."""
    env = {"FACESEARCH_WORKERS": "1"}
    (home / "admin-key.sha256").unlink(missing_ok=True)
    log = tmp_path / "first.log"
    first = start_server(home, log, env=env, admin_key=None)
    try:
        printed = [w for w in log.read_text().split() if w.startswith("fsa_")]
        assert len(printed) == 1
        key = printed[0]
        assert key not in (home / "admin-key.sha256").read_text()
        assert first.client(key).get("/v1/domains").status_code == 200
    finally:
        assert first.stop() == 0
    second = start_server(home, tmp_path / "second.log", env=env, admin_key=None)
    try:
        assert "fsa_" not in (tmp_path / "second.log").read_text()
        assert second.client(key).get("/v1/domains").status_code == 200
        assert_error(second.client("fsa_guess").get("/v1/domains"), 401)
    finally:
        second.stop()
        (home / "admin-key.sha256").unlink(missing_ok=True)
