"""A domain has a model: two domains on different models side by side in one server, the same LFW
people enrolled in each, each answering with its own model; model names checked; verify by a
domain's model or a named one."""

from __future__ import annotations

from pathlib import Path

import pytest

from facesearch.models import DEFAULT_MODEL, DLIB_MODEL, FUSION_MODEL, MODEL_DIMS, default_thresholds

from ..conftest import photos_of
from .conftest import Server, assert_error, jpeg, pick_people

DLIB_DOMAIN = "models-dlib"
DEFAULT_DOMAIN = "models-default"


@pytest.fixture(scope="module")
def side_by_side(server: Server, lfw: Path) -> dict:
    """4 LFW people, 3 photos each, enrolled into a dlib-resnet-v1 domain and into one of the
    server's default model (no model given); their 4th photo held out."""
    created = {}
    for name, body in ((DLIB_DOMAIN, {"model": DLIB_MODEL}), (DEFAULT_DOMAIN, {})):
        r = server.admin.post("/v1/domains", json={"name": name, **body})
        assert r.status_code == 201, r.text
        created[name] = r.json()
    people = pick_people(lfw, 4, 4, skip=9)
    enrolled: dict[str, dict] = {DLIB_DOMAIN: {}, DEFAULT_DOMAIN: {}}
    for domain in enrolled:
        for name in people:
            r = server.admin.post(f"/v1/domains/{domain}/enroll", data={"name": name},
                                  files=[("photo", jpeg(p)) for p in photos_of(lfw, name)[:3]],
                                  params={"face": "largest"})
            assert r.status_code == 201, r.text
            enrolled[domain][name] = r.json()
    yield {"created": created, "enrolled": enrolled,
           "held_out": {name: photos_of(lfw, name)[3] for name in people}}
    for name in created:
        server.admin.delete(f"/v1/domains/{name}")


def test_each_domain_is_created_listed_and_enrolled_with_its_model(side_by_side: dict,
                                                                   server: Server) -> None:
    models = {DLIB_DOMAIN: DLIB_MODEL, DEFAULT_DOMAIN: DEFAULT_MODEL}
    assert {n: d["model"] for n, d in side_by_side["created"].items()} == models
    listed = {d["name"]: d for d in server.admin.get("/v1/domains").json()["domains"]}
    for domain, model in models.items():
        assert listed[domain]["model"] == model and listed[domain]["people"] == 4
        assert server.admin.get(f"/v1/domains/{domain}").json()["model"] == model
        for body in side_by_side["enrolled"][domain].values():
            assert body["model"] == model and body["enrolled"] >= 1
        faces = server.admin.get(f"/v1/domains/{domain}/people/"
                                 f"{body['person']['id']}/faces").json()["faces"]
        assert {f["model"] for f in faces} == {model}


def test_each_domain_recognizes_with_its_model(side_by_side: dict, server: Server) -> None:
    """The same photo in both domains: each answers with its own model, at that model's default
    threshold, and names the right person (at LFW's 1:1 threshold: a gallery of 4)."""
    answers: dict[str, list[dict]] = {DLIB_DOMAIN: [], DEFAULT_DOMAIN: []}
    for domain, model in ((DLIB_DOMAIN, DLIB_MODEL), (DEFAULT_DOMAIN, DEFAULT_MODEL)):
        recognize, verify = default_thresholds(model)
        right = 0
        for name, photo in side_by_side["held_out"].items():
            url = f"/v1/domains/{domain}/recognize"
            body = server.admin.post(url, files={"photo": jpeg(photo)}).json()
            assert (body["model"], body["threshold"]) == (model, recognize), body
            loose = server.admin.post(url, files={"photo": jpeg(photo)},
                                      params={"threshold": verify}).json()
            answers[domain].append(loose)
            first = loose["faces"][0]["matches"] if loose["faces"] else []
            right += bool(first) and first[0]["name"] == name
            person = side_by_side["enrolled"][domain][name]["person"]["id"]
            assert not first or first[0]["name"] != name or first[0]["person_id"] == person
        assert right >= 3, f"{domain}: {right} of 4"
    # Two models, two embeddings of each face: the distances differ (the detectors' boxes too).
    a, b = (answers[d][0]["faces"][0] for d in (DLIB_DOMAIN, DEFAULT_DOMAIN))
    assert a["matches"][0]["distance"] != b["matches"][0]["distance"]


def test_an_unknown_model_is_refused_with_the_known_ones(server: Server, tmp_path: Path) -> None:
    err = assert_error(server.admin.post("/v1/domains", json={"name": "models-bad", "model": "arcface"}),
                       422, "invalid_model")
    assert "unknown model 'arcface'" in err["message"]
    assert all(m in err["message"] for m in MODEL_DIMS)
    assert_error(server.admin.post("/v1/domains", json={"name": "models-bad", "model": 7}), 422)
    assert_error(server.admin.get("/v1/domains/models-bad"), 404)


def test_a_model_that_cannot_load_here_is_refused(server: Server) -> None:
    """DeepFace's models need their weights file; this server has none in its DEEPFACE_HOME."""
    from facesearch.errors import ModelError
    from facesearch.models import check_model_files

    try:
        check_model_files("deepface:GhostFaceNet")
    except ModelError:
        pass
    else:
        pytest.skip("DeepFace's GhostFaceNet weights are installed here")
    err = assert_error(server.admin.post("/v1/domains", json={"name": "models-ghost",
                                                               "model": "deepface:GhostFaceNet"}),
                       422, "invalid_model")
    assert "model deepface:GhostFaceNet cannot load here" in err["message"]


def test_verify_with_a_domains_model_or_a_named_one(side_by_side: dict, server: Server,
                                                    lfw: Path) -> None:
    name, photo = next(iter(side_by_side["held_out"].items()))
    files = {"photo1": jpeg(photos_of(lfw, name)[0]), "photo2": jpeg(photo)}
    default = server.admin.post("/v1/verify", files=files).json()
    assert (default["model"], default["threshold"]) == (DEFAULT_MODEL, default_thresholds(DEFAULT_MODEL)[1])
    for params, model in (({"domain": DLIB_DOMAIN}, DLIB_MODEL),
                          ({"domain": DEFAULT_DOMAIN}, DEFAULT_MODEL),
                          ({"model": FUSION_MODEL}, FUSION_MODEL)):
        r = server.admin.post("/v1/verify", files=files, params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["model"], body["threshold"]) == (model, default_thresholds(model)[1])
        assert body["same_person"] is (body["distance"] < body["threshold"])
    assert_error(server.admin.post("/v1/verify", files=files, params={"model": "nope"}), 422,
                 "invalid_model")
    assert_error(server.admin.post("/v1/verify", files=files,
                                   params={"domain": DLIB_DOMAIN, "model": DLIB_MODEL}), 400)
    assert_error(server.admin.post("/v1/verify", files=files, params={"domain": "models-none"}), 404)
    # A domain key reaches its own domain's model, not another domain's (whether it exists or not).
    key = server.admin.post(f"/v1/domains/{DLIB_DOMAIN}/keys", json={"name": "verify"}).json()["key"]
    with server.client(key) as client:
        mine = client.post("/v1/verify", files=files, params={"domain": DLIB_DOMAIN})
        assert mine.status_code == 200 and mine.json()["model"] == DLIB_MODEL
        assert_error(client.post("/v1/verify", files=files, params={"domain": DEFAULT_DOMAIN}), 403)
        assert_error(client.post("/v1/verify", files=files, params={"domain": "models-none"}), 403)


def test_a_domain_threshold_is_its_own_until_its_model_changes(side_by_side: dict, server: Server,
                                                               db_url: str) -> None:
    """PATCH threshold: recognize answers at it when the request names none; null, or a new
    model, brings back the model's."""
    photo = next(iter(side_by_side["held_out"].values()))
    model_default = default_thresholds(DLIB_MODEL)[0]
    url = f"/v1/domains/{DLIB_DOMAIN}"
    r = server.admin.patch(url, json={"threshold": 0.0001})  # nobody is that close
    assert r.status_code == 200 and r.json()["threshold"] == pytest.approx(0.0001), r.text
    got = server.admin.post(f"{url}/recognize", files={"photo": jpeg(photo)}).json()
    assert got["threshold"] == pytest.approx(0.0001) and not got["faces"][0]["matches"]
    again = server.admin.post(f"{url}/recognize", params={"threshold": 0.2},
                              files={"photo": jpeg(photo)}).json()
    assert again["threshold"] == 0.2 and again["faces"][0]["matches"]  # the request's own wins
    assert_error(server.admin.patch(url, json={"threshold": 3}), 422)
    assert server.admin.patch(url, json={"threshold": None}).json()["threshold"] == model_default
    server.admin.patch(url, json={"threshold": 0.06})
    assert server.admin.get(url).json()["threshold"] == pytest.approx(0.06)
    from facesearch.store import BlockingGallery

    with BlockingGallery(db_url) as g:  # a new model: its distances, its threshold
        assert g.set_domain_model(DLIB_DOMAIN, DLIB_MODEL).threshold == pytest.approx(0.06)
        assert g.set_domain_model(DLIB_DOMAIN, DEFAULT_MODEL).threshold is None
        g.set_domain_model(DLIB_DOMAIN, DLIB_MODEL)
    assert server.admin.get(url).json()["threshold"] == model_default
    assert_error(server.client("fsk_not_a_key").patch(url, json={"threshold": 0.1}), 401)
