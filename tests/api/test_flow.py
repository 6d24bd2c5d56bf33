"""The whole job over HTTP on LFW photos: domain, key, enroll, recognize, verify, detect, delete.
Run against both stores: PostgreSQL + pgvector, and PKL mode (DeepFace files, no database)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from facesearch import deepface_files
from facesearch.store.pkl import SIDECAR, meta_folder, person_folder

from ..conftest import STORES, photos_of
from .conftest import ADMIN_KEY, Server, assert_error, jpeg, pick_people

DOMAIN = "api-flow"


@pytest.fixture(scope="module", params=STORES)
def store(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def api(store: str, request: pytest.FixtureRequest) -> Server:
    """The session's server (pgvector), or one in PKL mode."""
    return request.getfixturevalue("server" if store == "pgvector" else "pkl_server")


@pytest.fixture(scope="module")
def flow(api: Server, store: str, lfw: Path) -> dict:
    """20 people enrolled with 3 photos each through a domain key; their 4th photo held out."""
    server = api
    r = server.admin.post("/v1/domains", json={"name": DOMAIN})
    assert r.status_code == 201, r.text
    assert r.json()["faces"] == 0
    key = server.admin.post(f"/v1/domains/{DOMAIN}/keys", json={"name": "flow"}).json()["key"]
    client = server.client(key)
    people, held_out = {}, {}
    for name in pick_people(lfw, 4, 20, skip=1):
        photos = photos_of(lfw, name)
        r = client.post(f"/v1/domains/{DOMAIN}/enroll", data={"name": name},
                        files=[("photo", jpeg(p)) for p in photos[:3]], params={"face": "largest"})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["person"]["name"] == name and body["enrolled"] >= 1
        people[name] = body["person"]["id"]
        held_out[name] = photos[3]
    return {"client": client, "key": key, "people": people, "held_out": held_out, "server": server,
            "store": store}


def test_enroll_response_lists_each_photo(flow: dict, lfw: Path) -> None:
    client = flow["client"]
    name = next(iter(flow["people"]))
    photos = photos_of(lfw, name)[:3]
    # The same photos again: nothing new is stored, and each photo says so.
    r = client.post(f"/v1/domains/{DOMAIN}/people/{flow['people'][name]}/faces",
                    files=[("photo", jpeg(p)) for p in photos], params={"face": "largest"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["enrolled"] == 0
    assert [x["photo"] for x in body["results"]] == [p.name for p in photos]
    assert {x["status"] for x in body["results"]} <= {"already_enrolled", "refused"}
    faces = client.get(f"/v1/domains/{DOMAIN}/people/{flow['people'][name]}/faces").json()["faces"]
    assert len(faces) == body["person"]["faces"] >= 1
    assert {f["person"] for f in faces} == {name}


def test_recognize_held_out_photos(flow: dict) -> None:
    client = flow["client"]
    right = 0
    for name, photo in flow["held_out"].items():
        r = client.post(f"/v1/domains/{DOMAIN}/recognize", files={"photo": jpeg(photo)})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["faces_found"] >= len(body["faces"])
        assert set(body["timings_ms"]) >= {"decode", "detect", "embed", "search", "total"}
        first = body["faces"][0]["matches"] if body["faces"] else []
        if first and first[0]["name"] == name:
            right += 1
            m = first[0]
            assert m["person_id"] == flow["people"][name]
            assert 0 <= m["distance"] < body["threshold"]
            assert abs(m["similarity"] - (1 - m["distance"])) < 1e-4
    assert right >= 0.95 * len(flow["held_out"]), f"{right} of {len(flow['held_out'])}"


def test_recognize_options(flow: dict) -> None:
    client = flow["client"]
    photo = next(iter(flow["held_out"].values()))
    loose = client.post(f"/v1/domains/{DOMAIN}/recognize", files={"photo": jpeg(photo)},
                        params={"top_k": 3, "threshold": 0.5}).json()
    matches = loose["faces"][0]["matches"]
    assert 1 <= len(matches) <= 3 and loose["top_k"] == 3 and loose["threshold"] == 0.5
    assert [m["distance"] for m in matches] == sorted(m["distance"] for m in matches)
    assert len({m["person_id"] for m in matches}) == len(matches)  # one entry per person
    strict = client.post(f"/v1/domains/{DOMAIN}/recognize", files={"photo": jpeg(photo)},
                         params={"threshold": 1e-6}).json()
    assert strict["faces"][0]["matches"] == []
    # A raw image body works too (curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg').
    raw = client.post(f"/v1/domains/{DOMAIN}/recognize", content=photo.read_bytes(),
                      headers={"Content-Type": "image/jpeg"})
    assert raw.status_code == 200
    assert raw.json()["faces"][0]["box"] == loose["faces"][0]["box"]


def test_every_face_of_a_group_photo(flow: dict) -> None:
    """A 2x2 collage of four enrolled people's held-out photos: four faces, each recognized."""
    people = list(flow["held_out"].items())[4:8]
    collage = Image.new("RGB", (500, 500))
    for i, (_, photo) in enumerate(people):
        collage.paste(Image.open(photo).convert("RGB"), ((i % 2) * 250, (i // 2) * 250))
    buf = io.BytesIO()
    collage.save(buf, "JPEG", quality=92)
    group = ("group.jpg", buf.getvalue(), "image/jpeg")
    client = flow["client"]
    body = client.post(f"/v1/domains/{DOMAIN}/recognize", files={"photo": group}).json()
    assert body["faces_found"] == len(body["faces"]) == 4

    def quadrant(face: dict) -> int:
        box = face["box"]
        return (box["x"] + box["w"] // 2) // 250 + 2 * ((box["y"] + box["h"] // 2) // 250)

    right = 0
    for face in body["faces"]:
        right += bool(face["matches"]) and face["matches"][0]["name"] == people[quadrant(face)][0]
    assert right >= 3, body
    # max_faces: only the largest are matched; faces_found still counts them all.
    two = client.post(f"/v1/domains/{DOMAIN}/recognize", files={"photo": group},
                      params={"max_faces": 2}).json()
    assert two["faces_found"] == 4 and len(two["faces"]) == 2
    sizes = [f["box"]["w"] * f["box"]["h"] for f in body["faces"]]
    assert sorted(sizes, reverse=True)[:2] == [f["box"]["w"] * f["box"]["h"] for f in two["faces"]]
    # min_face: the faces are ~110 px, so asking for 80 px and up finds the same four (without
    # the upsampled pass for small faces); a ~40 px face added is found only by the default.
    small = Image.open(people[0][1]).convert("RGB").resize((90, 90))
    collage.paste(small, (205, 205))
    buf = io.BytesIO()
    collage.save(buf, "JPEG", quality=92)
    with_small = ("group.jpg", buf.getvalue(), "image/jpeg")
    for path in (f"/v1/domains/{DOMAIN}/recognize", "/v1/detect"):
        big = client.post(path, files={"photo": group}, params={"min_face": 80}).json()
        assert big["faces_found"] == 4
        assert sorted(map(quadrant, big["faces"])) == sorted(map(quadrant, body["faces"]))
        assert client.post(path, files={"photo": with_small}).json()["faces_found"] == 5
        assert client.post(path, files={"photo": with_small},
                           params={"min_face": 80}).json()["faces_found"] == 4
        assert_error(client.post(path, files={"photo": group}, params={"min_face": 5}), 422)
    # Enrolling it without saying which face is refused, with the reason.
    name, _ = people[0]
    refused = client.post(f"/v1/domains/{DOMAIN}/people/{flow['people'][name]}/faces",
                          files={"photo": group})
    err = assert_error(refused, 422, "nothing_enrolled")
    assert err["details"][0]["error"]["code"] == "several_faces"
    assert err["details"][0]["faces_found"] == 4


def test_verify_and_detect(flow: dict, lfw: Path) -> None:
    client = flow["client"]
    a, b = list(flow["held_out"])[:2]
    same = client.post("/v1/verify", files={"photo1": jpeg(photos_of(lfw, a)[0]),
                                            "photo2": jpeg(photos_of(lfw, a)[1])})
    assert same.status_code == 200, same.text
    assert same.json()["same_person"] is True
    different = client.post("/v1/verify", files={"photo1": jpeg(photos_of(lfw, a)[0]),
                                                 "photo2": jpeg(photos_of(lfw, b)[0])}).json()
    assert different["same_person"] is False
    assert different["distance"] > same.json()["distance"]
    assert different["threshold"] == same.json()["threshold"] > 0
    found = client.post("/v1/detect", files={"photo": jpeg(photos_of(lfw, a)[0])})
    assert found.status_code == 200
    face = found.json()["faces"][0]
    assert set(face) == {"box", "score", "landmarks"} and len(face["landmarks"]) == 5
    assert found.json()["image"] == {"width": 250, "height": 250}


def test_people_listing_and_update(flow: dict) -> None:
    client = flow["client"]
    page = client.get(f"/v1/domains/{DOMAIN}/people", params={"limit": 7, "offset": 0}).json()
    rest = client.get(f"/v1/domains/{DOMAIN}/people", params={"limit": 100, "offset": 7}).json()
    assert page["total"] == rest["total"] == len(flow["people"])
    assert len(page["people"]) == 7 and len(rest["people"]) == len(flow["people"]) - 7
    names = [p["name"] for p in page["people"] + rest["people"]]
    assert names == sorted(names) and set(names) == set(flow["people"])

    r = client.post(f"/v1/domains/{DOMAIN}/people", json={"name": "Ana Novak", "metadata": {"t": 1}})
    assert r.status_code == 201
    pid = r.json()["id"]
    assert_error(client.post(f"/v1/domains/{DOMAIN}/people", json={"name": "Ana Novak"}), 409,
                 "conflict")
    r = client.patch(f"/v1/domains/{DOMAIN}/people/{pid}",
                     json={"name": "Ana Kovač", "metadata": {"team": "blue"}})
    assert r.status_code == 200
    assert (r.json()["name"], r.json()["metadata"]) == ("Ana Kovač", {"team": "blue"})
    assert client.get(f"/v1/domains/{DOMAIN}/people/{pid}").json()["name"] == "Ana Kovač"
    assert client.delete(f"/v1/domains/{DOMAIN}/people/{pid}").status_code == 200
    assert_error(client.get(f"/v1/domains/{DOMAIN}/people/{pid}"), 404, "not_found")


def test_delete_person_removes_biometric_data(flow: dict, request: pytest.FixtureRequest) -> None:
    client = flow["client"]
    name, photo = list(flow["held_out"].items())[-1]
    pid = flow["people"][name]
    faces = client.get(f"/v1/domains/{DOMAIN}/people/{pid}/faces").json()["faces"]
    # Delete one face first, then the person.
    assert client.delete(f"/v1/domains/{DOMAIN}/faces/{faces[0]['id']}").status_code == 204
    assert_error(client.delete(f"/v1/domains/{DOMAIN}/faces/{faces[0]['id']}"), 404)
    deleted = client.delete(f"/v1/domains/{DOMAIN}/people/{pid}")
    assert deleted.status_code == 200 and deleted.json()["name"] == name
    if flow["store"] == "pgvector":
        db = request.getfixturevalue("db")
        for table, column in (("faces", "person_id"), ("people", "id")):  # ids are per domain
            assert db.execute(f"SELECT count(*) FROM {table} WHERE domain_id ="
                              f" (SELECT id FROM domains WHERE name = %s) AND {column} = %s",
                              (DOMAIN, pid)).fetchone() == (0,)
    else:  # PKL mode: their rows are gone from the DeepFace file, they from the sidecar
        folder = flow["server"].home / "pkl" / DOMAIN
        (datastore,) = folder.glob("ds_model_*.npz")  # DeepFace's current format
        data = datastore.read_bytes()
        rows = deepface_files.read_rows(data, "npz", datastore.name)
        assert rows and not [r for r in rows if f"/{person_folder(name)}/" in r["identity"]]
        assert not [f for f in faces if any(r["identity"].endswith(f"/facesearch-{f['id']}.jpg")
                                            for r in rows)]
        sidecar = json.loads((meta_folder(folder.parent, DOMAIN) / SIDECAR).read_text())
        assert pid not in {p["id"] for p in sidecar["people"]} | {f["person_id"] for f in sidecar["faces"]}
        assert not (flow["server"].home / "pgdata").exists()  # and no database was ever made
    after = client.post(f"/v1/domains/{DOMAIN}/recognize", files={"photo": jpeg(photo)}).json()
    assert all(m["person_id"] != pid for f in after["faces"] for m in f["matches"])
    assert_error(client.get(f"/v1/domains/{DOMAIN}/people/{pid}/faces"), 404, "not_found")


def test_domain_counts_metrics_and_logs(flow: dict) -> None:
    server = flow["server"]
    info = flow["client"].get(f"/v1/domains/{DOMAIN}").json()
    assert info["name"] == DOMAIN and info["faces"] >= 19 and info["people"] >= 19
    listed = {d["name"]: d for d in server.admin.get("/v1/domains").json()["domains"]}
    assert listed[DOMAIN]["faces"] == info["faces"]

    metrics = server.admin.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.text
    assert f'facesearch_faces{{domain="{DOMAIN}"}} {float(info["faces"])}' in text
    assert 'route="/v1/domains/{domain}/recognize"' in text
    assert "facesearch_search_seconds_bucket" in text and "facesearch_inference_seconds" in text
    assert_error(server.client().get("/metrics"), 401, "unauthorized")

    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    requests = [x for x in lines if x.get("event") == "request"]
    recognized = [x for x in requests if x["route"] == "/v1/domains/{domain}/recognize"]
    # Every request that got past the key check logs its domain (other tests of the session's
    # server send some with no or another domain's key).
    assert all(x.get("domain") for x in recognized if x["status"] not in (401, 403, 429))
    ours = [x for x in recognized if x["domain"] == DOMAIN and x["status"] == 200]
    assert len(ours) >= len(flow["held_out"])
    assert {"status", "ms", "faces", "timings_ms", "id"} <= set(ours[-1])
    # Keys never reach the log.
    log = server.log()
    assert ADMIN_KEY not in log and flow["key"] not in log


def test_openapi_docs(server) -> None:
    assert server.client().get("/docs").status_code == 200
    spec = server.client().get("/openapi.json").json()
    assert "/v1/domains/{domain}/recognize" in spec["paths"]
    body = spec["paths"]["/v1/domains/{domain}/recognize"]["post"]["requestBody"]
    assert "multipart/form-data" in body["content"]
