"""The gallery audit over real HTTP and the CLI, on real LFW photos: a face planted under the
wrong person, and one person enrolled under two names, are found; the clusters CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ..conftest import photos_of
from .conftest import assert_error, jpeg, pick_people


def enroll(server, domain: str, name: str, photos: list[Path]) -> list[int]:
    r = server.admin.post(f"/v1/domains/{domain}/enroll", data={"name": name},
                          files=[("photo", jpeg(p)) for p in photos], params={"face": "largest"})
    assert r.status_code == 201, r.text
    return [x["face_id"] for x in r.json()["results"] if x["status"] == "enrolled"]


@pytest.fixture(scope="module")
def audited(server, lfw: Path) -> dict:
    """Domain aud: 4 people of 4 photos; one photo of a 5th person filed under the first
    ("planted"); a 6th person's 4 photos split under two names; a 7th with one photo."""
    assert server.admin.post("/v1/domains", json={"name": "aud"}).status_code == 201
    people = pick_people(lfw, 4, 7, skip=11)
    for p in people[:4]:
        enroll(server, "aud", p, photos_of(lfw, p)[:4])
    planted = enroll(server, "aud", people[0], photos_of(lfw, people[4])[:1])[0]
    twin = photos_of(lfw, people[5])[:4]
    enroll(server, "aud", people[5], twin[:2])
    enroll(server, "aud", people[5] + " (2)", twin[2:])
    enroll(server, "aud", people[6], photos_of(lfw, people[6])[:1])
    return {"people": people, "planted": planted}


def test_audit_finds_the_planted_face_and_the_same_person_twice(server, audited: dict) -> None:
    r = server.admin.get("/v1/domains/aud/audit")
    assert r.status_code == 200, r.text
    report = r.json()
    people = audited["people"]
    assert report["faces"] == 4 * 4 + 1 + 4 + 1
    top = report["outliers"][:2]
    assert audited["planted"] in [o["face_id"] for o in top], report["outliers"]
    assert report["outliers"][0]["person"]["name"] == people[0]
    pairs = [{p["name"] for p in d["people"]} for d in report["duplicates"]]
    assert pairs and pairs[0] == {people[5], people[5] + " (2)"}, report["duplicates"]
    assert report["duplicates"][0]["nearest_distance"] < report["duplicate_threshold"]
    assert report["duplicates"][0]["likely_same"] is True
    assert [s["person"]["name"] for s in report["single_face"]] == [people[6]]


def test_audit_belongs_to_its_domain(server, audited: dict) -> None:
    assert server.admin.post("/v1/domains", json={"name": "aud-other"}).status_code == 201
    key = server.admin.post("/v1/domains/aud-other/keys", json={"name": "k"}).json()["key"]
    assert_error(server.client(key).get("/v1/domains/aud/audit"), 403, "forbidden")
    empty = server.client(key).get("/v1/domains/aud-other/audit").json()
    assert empty["faces"] == 0 and empty["outliers"] == [] and empty["duplicates"] == []


def test_audit_cli(cli, audited: dict) -> None:
    report = json.loads(cli("audit", "--domain", "aud", "--json").stdout)
    assert audited["planted"] in [o["face_id"] for o in report["outliers"][:2]]
    text = cli("audit", "--domain", "aud").stdout
    assert f"face {audited['planted']} of {audited['people'][0]}" in text
    assert "likely the same person" in text


def test_cluster_a_folder_and_name_a_cluster_from_the_cli(cli, server, lfw: Path, tmp_path: Path) -> None:
    people = pick_people(lfw, 3, 3, skip=13)
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in people:
        for photo in photos_of(lfw, p)[:3]:
            shutil.copy(photo, folder / photo.name)
    cli("domains", "create", "unk-cli")
    refused = cli("cluster", folder, "--domain", "unk-cli", check=False)
    assert refused.returncode == 1 and "--keep-unknown" in refused.stderr
    cli("domains", "update", "unk-cli", "--keep-unknown")
    out = json.loads(cli("cluster", folder, "--domain", "unk-cli", "--json").stdout)
    assert out["photos"] == 9 and out["new_faces"] >= 9
    # Each person's 3 photos make one cluster of their own (bystanders' faces are lone faces).
    groups = sorted(sorted(c["photos"]) for c in out["clusters"] if c["size"] > 1)
    assert groups == sorted(sorted(x.name for x in photos_of(lfw, p)[:3]) for p in people), out
    listed = json.loads(cli("clusters", "list", "--domain", "unk-cli", "--json").stdout)
    first = listed["clusters"][0]
    named = cli("clusters", "name", str(first["id"]), "Someone", "--domain", "unk-cli").stdout
    assert "Someone" in named and "faces enrolled" in named
    people_now = server.admin.get("/v1/domains/unk-cli/people").json()["people"]
    assert [(p["name"], p["faces"]) for p in people_now] == [("Someone", first["size"])]
    second = json.loads(cli("clusters", "list", "--domain", "unk-cli", "--json").stdout)["clusters"][0]
    assert "discarded" in cli("clusters", "discard", str(second["id"]), "--domain", "unk-cli").stdout


def test_one_click_fixes_move_a_face_and_merge_two_people(server, audited: dict) -> None:
    """Last in the module: it fixes what the fixture planted."""
    people = audited["people"]
    ids = {p["name"]: p["id"] for p in server.admin.get("/v1/domains/aud/people").json()["people"]}
    r = server.admin.post(f"/v1/domains/aud/faces/{audited['planted']}/move",
                          json={"person_id": ids[people[6]]})
    assert r.status_code == 200 and r.json()["person"]["faces"] == 2, r.text
    assert_error(server.admin.post(f"/v1/domains/aud/faces/{audited['planted']}/move",
                                   json={"person_id": 10**9}), 404, "not_found")
    r = server.admin.post(f"/v1/domains/aud/people/{ids[people[5]]}/merge",
                          json={"person_id": ids[people[5] + " (2)"]})
    assert r.status_code == 200 and r.json()["moved"] == 2 and r.json()["person"]["faces"] == 4, r.text
    report = server.admin.get("/v1/domains/aud/audit").json()
    # The planted face is people[6]'s now (a stranger to them too, so still an outlier there).
    assert {o["person"]["name"] for o in report["outliers"] if o["face_id"] == audited["planted"]} \
        <= {people[6]}
    assert people[5] + " (2)" not in {p["name"] for d in report["duplicates"] for p in d["people"]}
