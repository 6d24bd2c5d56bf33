"""facesearch.client (sync and async) against the real server: every route through its typed
method, dataclass answers, ApiError with the API's codes (each one documented in the OpenAPI
document for its route), and a 503 retried after Retry-After (a model worker killed for real)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from facesearch.client import (
    ApiError,
    AsyncClient,
    Client,
    CreatedKey,
    Detection,
    Domain,
    Enrollment,
    PeoplePage,
    Person,
    Recognition,
    Verification,
)
from facesearch.service.openapi import documented_codes

from ..conftest import photos_of
from .conftest import ADMIN_KEY, start_server

DOMAIN = "client-api"
PEOPLE = ("Colin_Powell", "Gerhard_Schroeder")


@pytest.fixture(scope="module")
def fs(server) -> Client:
    with Client(server.base, ADMIN_KEY) as client:
        yield client


@pytest.fixture(scope="module")
def openapi(server) -> dict:
    return server.client().get("/openapi.json").json()


@pytest.fixture(scope="module")
def enrolled(fs: Client, lfw: Path) -> dict[str, Enrollment]:
    dom = fs.create_domain(DOMAIN)
    assert isinstance(dom, Domain) and dom.people == 0 and isinstance(dom.created_at, datetime)
    assert dom.threshold is not None and 0 < dom.threshold < 1
    out = {}
    for person in PEOPLE:
        photos = photos_of(lfw, person)[:3]
        out[person] = fs.enroll(DOMAIN, person.replace("_", " "), photos, face="largest")
    return out


def test_import_is_light() -> None:
    """The client imports no model runtime and no database driver."""
    code = ("import sys, facesearch.client; heavy = {'onnxruntime', 'cv2', 'dlib', 'tensorflow', "
            "'psycopg', 'psycopg_pool', 'pgvector', 'numpy', 'PIL'}; "
            "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_people_enroll_and_faces(fs: Client, enrolled: dict[str, Enrollment], lfw: Path) -> None:
    e = enrolled[PEOPLE[0]]
    assert isinstance(e.person, Person) and e.enrolled == 3 and e.model == fs.get_domain(DOMAIN).model
    assert [r.status for r in e.results] == ["enrolled"] * 3 and e.results[0].box.w > 20
    page = fs.list_people(DOMAIN, q="powell")
    assert isinstance(page, PeoplePage) and page.total == 1 and page.people[0].name == "Colin Powell"
    pid = page.people[0].id
    # A fourth photo by bytes, to the person's id.
    extra = photos_of(lfw, PEOPLE[0])[3]
    more = fs.enroll_person(DOMAIN, pid, [(extra.name, extra.read_bytes())], face="largest")
    assert more.enrolled == 1 and more.person.faces == 4
    faces = fs.list_faces(DOMAIN, pid)
    assert len(faces) == 4 and all(f.person_id == pid for f in faces)
    assert fs.face_thumbnail(DOMAIN, faces[0].id)[:3] == b"\xff\xd8\xff"  # a JPEG
    fs.delete_face(DOMAIN, faces[-1].id)
    assert fs.get_person(DOMAIN, pid).faces == 3
    renamed = fs.update_person(DOMAIN, pid, name="Colin L. Powell", metadata={"role": "test"})
    assert (renamed.name, renamed.metadata) == ("Colin L. Powell", {"role": "test"})
    temp = fs.create_person(DOMAIN, "Nobody Yet")
    assert fs.delete_person(DOMAIN, temp.id).name == "Nobody Yet"


def test_recognize_verify_detect(fs: Client, enrolled: dict[str, Enrollment], lfw: Path) -> None:
    held_out = photos_of(lfw, PEOPLE[1])[4]
    r = fs.recognize(DOMAIN, held_out)
    assert isinstance(r, Recognition) and r.faces_found >= 1
    assert r.faces[0].matches[0].name == "Gerhard Schroeder"
    assert r.top_k == 5 and r.threshold == fs.get_domain(DOMAIN).threshold
    strict = fs.recognize(DOMAIN, held_out, top_k=1, threshold=0.01)
    assert strict.threshold == 0.01 and strict.faces[0].matches == []
    a, b = photos_of(lfw, PEOPLE[1])[3:5]
    v = fs.verify(a, b, domain=DOMAIN)
    assert isinstance(v, Verification) and v.same_person and len(v.faces) == 2
    d = fs.detect(held_out.read_bytes())
    assert isinstance(d, Detection) and d.faces_found >= 1 and len(d.faces[0].landmarks) == 5


def test_keys_and_whoami(fs: Client, server, enrolled: dict[str, Enrollment]) -> None:
    assert fs.whoami().admin is True
    key = fs.create_key(DOMAIN, "client")
    assert isinstance(key, CreatedKey) and key.key.startswith(key.prefix)
    with Client(server.base, key.key) as mine:
        me = mine.whoami()
        assert (me.admin, me.domain) == (False, DOMAIN)
        assert mine.list_people(DOMAIN).total == 2
        assert any(k.id == key.id for k in fs.list_keys(DOMAIN))
        assert fs.revoke_key(DOMAIN, key.id).id == key.id
        with pytest.raises(ApiError) as err:
            mine.whoami()
        assert (err.value.status, err.value.code) == (401, "unauthorized")
    assert fs.health() == {"status": "ok"} and fs.ready()["status"] == "ready"
    assert f'domain="{DOMAIN}"' in fs.metrics()


def test_errors_carry_the_documented_codes(fs: Client, server, openapi: dict,
                                           enrolled: dict[str, Enrollment], lfw: Path) -> None:
    """Each failure is an ApiError whose code the OpenAPI document lists for that route."""
    fs.create_domain("client-other")
    other = fs.create_key("client-other", "x")
    outsider = Client(server.base, other.key)
    photo = photos_of(lfw, PEOPLE[0])[0]
    cases = [
        (lambda: fs.get_domain("no-such-domain"), "get", "/v1/domains/{domain}", 404, "not_found"),
        (lambda: fs.create_domain(DOMAIN), "post", "/v1/domains", 409, "conflict"),
        (lambda: fs.create_domain("x", model="nope"), "post", "/v1/domains", 422, "invalid_model"),
        (lambda: fs.create_domain("bad name!"), "post", "/v1/domains", 422, "invalid_name"),
        (lambda: outsider.recognize(DOMAIN, photo), "post", "/v1/domains/{domain}/recognize", 403,
         "forbidden"),
        (lambda: outsider.list_domains(), "get", "/v1/domains", 403, "forbidden"),
        (lambda: fs.recognize(DOMAIN, ("notes.txt", b"not a photo")),
         "post", "/v1/domains/{domain}/recognize", 415, "unsupported_image"),
        (lambda: fs.recognize(DOMAIN, ("cut.jpg", photo.read_bytes()[:400])),
         "post", "/v1/domains/{domain}/recognize", 422, "invalid_image"),
        (lambda: fs.recognize(DOMAIN, photo, top_k=0), "post", "/v1/domains/{domain}/recognize",
         422, "invalid_request"),
        (lambda: fs.get_person(DOMAIN, 10**9), "get", "/v1/domains/{domain}/people/{person_id}",
         404, "not_found"),
        (lambda: fs.enroll(DOMAIN, "Blank", [("blank.png", _blank_png())]),
         "post", "/v1/domains/{domain}/enroll", 422, "nothing_enrolled"),
        (lambda: fs.verify(photo, ("blank.png", _blank_png())), "post", "/v1/verify", 422, "no_face"),
        (lambda: Client(server.base).list_domains(), "get", "/v1/domains", 401, "unauthorized"),
    ]
    for call, method, path, status, code in cases:
        with pytest.raises(ApiError) as err:
            call()
        assert (err.value.status, err.value.code) == (status, code), (path, err.value)
        assert err.value.message and str(err.value).startswith(code)
        assert code in documented_codes(openapi, method, path).get(status, []), (method, path, code)
    refused = fs.list_people(DOMAIN, q="Blank")
    assert refused.total == 0  # the refused enrollment left nothing behind
    with pytest.raises(ApiError) as err:
        Client("http://127.0.0.1:1", ADMIN_KEY).health()
    assert (err.value.status, err.value.code) == (0, "network_error")
    outsider.close()


def _blank_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (200, 200), (200, 200, 200)).save(buf, "PNG")
    return buf.getvalue()


def test_async_client(server, enrolled: dict[str, Enrollment], lfw: Path) -> None:
    held_out = [photos_of(lfw, p)[4] for p in PEOPLE]

    async def run() -> list:
        async with AsyncClient(server.base, ADMIN_KEY) as afs:
            me = await afs.whoami()
            results = await asyncio.gather(*(afs.recognize(DOMAIN, p) for p in held_out))
            with pytest.raises(ApiError) as err:
                await afs.get_domain("no-such-domain")
            assert err.value.code == "not_found"
            return [me, *results]

    me, *results = asyncio.run(run())
    assert me.admin
    assert [r.faces[0].matches[0].name for r in results] == ["Colin L. Powell", "Gerhard Schroeder"]


def test_503_is_retried_after_retry_after(server, home: Path, lfw: Path,
                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    """A replica with one model worker: the worker is stopped, then killed with the client's
    request in it. The server answers 503 model_unavailable with Retry-After; the client waits,
    sends again once the pool has replaced the worker, and gets the answer."""
    log = tmp_path_factory.mktemp("client-replica") / "server.log"
    replica = start_server(home, log, "--workers", "1")
    photo = photos_of(lfw, PEOPLE[0])[0]
    try:
        (worker,) = replica.worker_pids()
        os.kill(worker, signal.SIGSTOP)
        with ThreadPoolExecutor(1) as ex, Client(replica.base, ADMIN_KEY, retries=30) as fs:
            future = ex.submit(fs.detect, photo)
            deadline = time.monotonic() + 60
            while httpx.get(replica.base + "/readyz", timeout=10).json()["workers"]["busy"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            os.kill(worker, signal.SIGKILL)
            detection = future.result(timeout=120)
        assert detection.faces_found >= 1
        statuses = [json.loads(line)["status"] for line in replica.log().splitlines()
                    if '"route": "/v1/detect"' in line]
        assert statuses[0] == 503 and statuses[-1] == 200, statuses
    finally:
        replica.stop()
