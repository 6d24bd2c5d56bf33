"""``facesearch backup`` / ``restore``: taken from the session's server while it serves and
enrolls, restored into a new data directory; the round trip keeps the domains, people, faces
(embeddings, thumbnails), API keys, and the answers. PKL mode's files alike."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from facesearch.config import Settings

from ..conftest import photos_of
from .conftest import Server, jpeg, pick_people

DOMAIN = "backup-src"
BUSY = "backup-busy"  # written to while the backup runs

# Everything a round trip must keep, in a form two databases can compare.
GALLERY_SQL = """
SELECT d.name, m.name, p.name, p.metadata::text, encode(f.photo_sha256, 'hex'),
       md5(f.embedding::text), md5(f.thumbnail), f.box_x, f.box_y, f.box_w, f.box_h
FROM faces f JOIN people p ON p.domain_id = f.domain_id AND p.id = f.person_id
JOIN domains d ON d.id = f.domain_id
JOIN models m ON m.id = f.model_id WHERE d.name = %s ORDER BY 3, 5"""
KEYS_SQL = """SELECT k.name, encode(k.key_sha256, 'hex'), k.prefix, k.created_at FROM api_keys k
JOIN domains d ON d.id = k.domain_id WHERE d.name = %s ORDER BY 1"""


def facesearch(home: Path, *args: str | Path, store: str = "pgvector") -> subprocess.CompletedProcess:
    exe = shutil.which("facesearch", path=str(Path(sys.executable).parent)) or "facesearch"
    env = {**os.environ, "FACESEARCH_HOME": str(home), "FACESEARCH_STORE": store,
           "FACESEARCH_WORKERS": "1"}
    env.pop("FACESEARCH_DATABASE_URL", None)
    proc = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (args, proc.stderr)
    return proc


def rows(url: str, query: str, *params: object) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


def recognize(home: Path, photo: Path, domain: str, store: str = "pgvector") -> list:
    out = json.loads(facesearch(home, "recognize", "-d", domain, "--json", photo,
                                store=store).stdout)
    return [[(m["person"], round(m["distance"], 5)) for m in f["matches"]] for f in out["faces"]]


def test_round_trip_while_serving(server: Server, db_url: str, lfw: Path, tmp_path: Path,
                                  cleanup: None) -> None:
    from facesearch.store import database_url

    people = pick_people(lfw, 3, 5, skip=11)
    assert server.admin.post("/v1/domains", json={"name": DOMAIN}).status_code == 201
    assert server.admin.post("/v1/domains", json={"name": BUSY}).status_code == 201
    key = server.admin.post(f"/v1/domains/{DOMAIN}/keys", json={"name": "kept"}).json()["key"]
    client = server.client(key)
    for name in people:
        r = client.post(f"/v1/domains/{DOMAIN}/enroll", data={"name": name},
                        files=[("photo", jpeg(p)) for p in photos_of(lfw, name)[:2]],
                        params={"face": "largest"})
        assert r.status_code == 201, r.text
    probe = photos_of(lfw, people[0])[2]

    # Enrollments go on in another domain while the backup is taken.
    busy = pick_people(lfw, 1, 30, skip=5)
    stop = threading.Event()

    def enroll_meanwhile() -> None:
        for name in busy:
            if stop.is_set():
                return
            server.admin.post(f"/v1/domains/{BUSY}/enroll", data={"name": name},
                              files={"photo": jpeg(photos_of(lfw, name)[0])},
                              params={"face": "largest"})

    writer = threading.Thread(target=enroll_meanwhile)
    writer.start()
    try:
        out = tmp_path / "gallery.backup"
        facesearch(server.home, "backup", "--out", out)
    finally:
        stop.set()
        writer.join()
    assert out.read_bytes().startswith(b"PGDMP")

    new_home = tmp_path / "restored-home"
    restored = facesearch(new_home, "restore", out)
    assert "restored" in restored.stdout
    new_url = database_url(Settings(home=new_home))
    assert rows(new_url, GALLERY_SQL, DOMAIN) == rows(db_url, GALLERY_SQL, DOMAIN)
    assert rows(new_url, KEYS_SQL, DOMAIN) == rows(db_url, KEYS_SQL, DOMAIN)
    assert rows(new_url, "SELECT max(version) FROM schema_migrations") == \
        rows(db_url, "SELECT max(version) FROM schema_migrations")
    # The busy domain: a snapshot, every restored face whole, none half-written.
    got = rows(new_url, "SELECT count(*), count(f.thumbnail) FROM faces f JOIN domains d"
                        " ON d.id = f.domain_id WHERE d.name = %s", BUSY)[0]
    assert got[0] == got[1] <= len(busy)
    # The same answers: the restored gallery (by the CLI) and the source (by the server).
    answer = recognize(new_home, probe, DOMAIN)
    r = client.post(f"/v1/domains/{DOMAIN}/recognize", files={"photo": jpeg(probe)})
    assert r.status_code == 200, r.text
    source = [[(m["name"], round(m["distance"], 5)) for m in f["matches"]] for f in r.json()["faces"]]
    assert [[(n, round(d, 3)) for n, d in f] for f in answer] == \
        [[(n, round(d, 3)) for n, d in f] for f in source]
    assert answer[0][0][0] == people[0]

    # A second restore into the same (no longer empty) data directory is refused.
    exe = shutil.which("facesearch", path=str(Path(sys.executable).parent)) or "facesearch"
    again = subprocess.run([exe, "restore", str(out)], capture_output=True, text=True,
                           env={**os.environ, "FACESEARCH_HOME": str(new_home)}, timeout=300)
    assert again.returncode == 1 and "already holds a gallery" in again.stderr


def test_round_trip_pkl(lfw: Path, tmp_path: Path) -> None:
    home, new_home = tmp_path / "pkl-home", tmp_path / "pkl-restored"
    folder = tmp_path / "photos"
    people = pick_people(lfw, 3, 3, skip=13)
    for name in people:
        (folder / name).mkdir(parents=True)
        for p in photos_of(lfw, name)[:2]:
            (folder / name / p.name).symlink_to(p)
    facesearch(home, "enroll", "-d", "pkl-src", folder, store="pkl")
    out = tmp_path / "pkl.backup"
    facesearch(home, "backup", "-o", out, store="pkl")
    facesearch(new_home, "restore", out, store="pkl")
    listing = ["domains", "list", "--json"]
    before = json.loads(facesearch(home, *listing, store="pkl").stdout)
    after = json.loads(facesearch(new_home, *listing, store="pkl").stdout)
    assert after == before and before[0]["faces"] == 6
    people_of = ["people", "list", "-d", "pkl-src", "--json"]
    assert facesearch(new_home, *people_of, store="pkl").stdout == \
        facesearch(home, *people_of, store="pkl").stdout
    probe = photos_of(lfw, people[1])[2]
    assert recognize(new_home, probe, "pkl-src", "pkl") == recognize(home, probe, "pkl-src", "pkl")
    # A PKL backup is not a PostgreSQL one: a clear refusal, nothing started.
    exe = shutil.which("facesearch", path=str(Path(sys.executable).parent)) or "facesearch"
    wrong = subprocess.run([exe, "restore", str(out)], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "FACESEARCH_HOME": str(tmp_path / "other"),
                                "FACESEARCH_STORE": "pgvector"})
    assert wrong.returncode == 1 and "FACESEARCH_STORE=pkl" in wrong.stderr, wrong.stderr
    assert not (tmp_path / "other" / "pgdata").exists()  # no database was started


@pytest.fixture
def cleanup(server: Server) -> Iterator[None]:
    """Leave the session's server without this module's domains."""
    yield
    for name in (DOMAIN, BUSY):
        server.admin.delete(f"/v1/domains/{name}")
