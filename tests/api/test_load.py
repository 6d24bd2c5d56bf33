"""Many mixed requests at once: every one answered, and exactly what was enrolled is stored."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from ..conftest import photos_of
from .conftest import jpeg, pick_people

DOMAIN = "api-load"
CONCURRENCY = 8


def test_300_mixed_requests_at_concurrency_8(server, lfw: Path, db) -> None:
    admin = server.admin
    assert admin.post("/v1/domains", json={"name": DOMAIN}).status_code == 201
    gallery = pick_people(lfw, 6, 10, skip=4)
    for name in gallery:
        r = admin.post(f"/v1/domains/{DOMAIN}/enroll", data={"name": name}, params={"face": "largest"},
                       files=[("photo", jpeg(p)) for p in photos_of(lfw, name)[:2]])
        assert r.status_code == 201, r.text
    start_faces = admin.get(f"/v1/domains/{DOMAIN}").json()["faces"]
    probes = [p for name in gallery for p in photos_of(lfw, name)[2:6]]
    # New people to enroll during the run: one-photo LFW people whose photo has a face.
    newcomers = []
    for name in pick_people(lfw, 1, 400, skip=7):
        if len(newcomers) == 110:
            break
        photo = photos_of(lfw, name)[0]
        if len(photos_of(lfw, name)) == 1 and admin.post(
                "/v1/detect", files={"photo": jpeg(photo)}).json()["faces"]:
            newcomers.append((name, photo))
    assert len(newcomers) == 110

    jobs = [("recognize", p) for p in probes * 5][:200] + [("enroll", n) for n in newcomers]
    random.Random(7).shuffle(jobs)
    assert len(jobs) >= 300

    with httpx.Client(base_url=server.base, timeout=120, headers=admin.headers,
                      limits=httpx.Limits(max_connections=CONCURRENCY, keepalive_expiry=2)) as client:
        def run(job: tuple) -> httpx.Response:
            kind, item = job
            if kind == "recognize":
                return client.post(f"/v1/domains/{DOMAIN}/recognize", files={"photo": jpeg(item)})
            name, photo = item
            return client.post(f"/v1/domains/{DOMAIN}/enroll", data={"name": name},
                               files={"photo": jpeg(photo)}, params={"face": "largest"})

        with ThreadPoolExecutor(CONCURRENCY) as ex:
            responses = list(ex.map(run, jobs))

    bad = [(job[0], r.status_code, r.text[:200]) for job, r in zip(jobs, responses, strict=True)
           if not 200 <= r.status_code < 300]
    assert not bad, bad
    enrolled = sum(r.json()["enrolled"] for (kind, _), r in zip(jobs, responses, strict=True)
                   if kind == "enroll")
    assert enrolled == len(newcomers)
    faces = admin.get(f"/v1/domains/{DOMAIN}").json()["faces"]
    assert faces == start_faces + enrolled
    stored = db.execute("SELECT count(*) FROM faces f JOIN domains d ON d.id = f.domain_id"
                        " WHERE d.name = %s", (DOMAIN,)).fetchone()[0]
    assert stored == faces
    # The recognitions were right too (a sanity check on answers under load, not a benchmark).
    right = 0
    for (kind, photo), r in zip(jobs, responses, strict=True):
        faces = r.json()["faces"] if kind == "recognize" else None
        right += bool(faces and faces[0]["matches"] and faces[0]["matches"][0]["name"] == photo.parent.name)
    assert right >= 0.85 * 200
