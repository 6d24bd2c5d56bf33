"""DeepFace models (TensorFlow) in the model workers, and the seed's crash scenario end to end.

The system facesearch replaces ran DeepFace (TensorFlow) and its pgvector queries in one process;
once the database connection used TLS it died with ``free(): invalid pointer``: TensorFlow's
BoringSSL and libpq's OpenSSL share symbol names. Here, for real: the real ``facesearch serve``
with ``deepface:ArcFace`` (TensorFlow loaded in both model workers) talks to PostgreSQL over TLS
(Debian's pgbouncer terminates TLS in front of the embedded server, which has none) under
concurrent recognize requests, and no process dies. A control runs the seed's layout (TensorFlow,
then a TLS connection, in one process) to show that this setup does reproduce the crash.

DeepFace's real weights cannot be downloaded here: the test writes DeepFace's own ArcFace
architecture with random weights to the file name DeepFace expects. That tests the plumbing
(TensorFlow in the workers, 512-d embeddings, enroll and recognize), not accuracy.

Skipped without DeepFace on TensorFlow (``pip install -e '.[deepface]'``), pgbouncer
(``apt-get install pgbouncer``) or the openssl command. TensorFlow is never imported into the
pytest process (it has libpq loaded: that is the crash); only subprocesses import it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from facesearch import doctor

from ..conftest import photos_of
from .conftest import Server, free_port, jpeg, pick_people, start_server

MODEL = "deepface:ArcFace"
DOMAIN = "deepface-tls"
TENSORFLOW = re.compile(r"/(libtensorflow|_pywrap_tensorflow)[^/]*\.so")
LIBPQ = re.compile(r"/libpq[^/]*\.so")
LIBSSL = re.compile(r"/libssl[^/]*\.so")

_missing = [m for m in ("deepface", "tensorflow", "tf_keras") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(
    bool(_missing), reason=f"DeepFace on TensorFlow is not installed ({', '.join(_missing)} missing): "
    "pip install -e '.[deepface]'")

# Run in a subprocess (argv: the weights file to write, an LFW photo). 1. Builds DeepFace's own
# ArcFace network (its code, not a copy) with Keras's random initial weights, skipping only
# DeepFace's download and load, and saves the weights where DeepFace looks for them. 2. While
# TensorFlow is up anyway: facesearch's model loads that file and embeds the photo's face; prints
# how far that is from DeepFace.represent() of the same face chip.
RANDOM_ARCFACE = """
import os, sys
from pathlib import Path
import numpy as np
from PIL import Image
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # as DeepFace sets it: its layers are tf-keras's
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
target = Path(sys.argv[1])
from deepface.commons import weight_utils
from deepface.models.facial_recognition.tf import ArcFace
download, load = weight_utils.download_weights_if_necessary, weight_utils.load_model_weights
weight_utils.download_weights_if_necessary = lambda file_name, source_url, **kw: str(target)
weight_utils.load_model_weights = lambda model, weight_file: model  # keep the random weights
model = ArcFace.load_model()
target.parent.mkdir(parents=True, exist_ok=True)
partial = target.with_name("partial-" + target.name)
model.save_weights(str(partial))
partial.rename(target)
weight_utils.download_weights_if_necessary, weight_utils.load_model_weights = download, load

os.environ["DEEPFACE_HOME"] = str(target.parents[2])
from deepface import DeepFace
from facesearch.models import load_model
ours = load_model("deepface:ArcFace")
image = np.asarray(Image.open(sys.argv[2]).convert("RGB"))
faces = ours.detect(image)[:1]
ours.embed(image, faces)
[chip], _ = ours._chips([(image, faces)])
theirs = DeepFace.represent(chip[:, :, ::-1], model_name="ArcFace", detector_backend="skip",
                            enforce_detection=False)[0]["embedding"]
theirs = np.asarray(theirs, dtype=np.float32) / np.linalg.norm(theirs)
print(float(np.max(np.abs(faces[0].embedding - theirs))), faces[0].embedding.dtype, len(theirs))
"""

# The seed's layout in one process: TensorFlow imported first (DeepFace at start-up), then the
# database over TLS. Doctor's verdict on this process is printed before the connection.
SAME_PROCESS = """
import json, sys
import tensorflow
import psycopg
from facesearch import doctor
checks = [doctor.check_this_process(), doctor.check_tls_and_tensorflow(True, None)]
print(json.dumps([c.as_dict() for c in checks]), flush=True)
with psycopg.connect(sys.argv[1]) as conn:
    print("ssl_in_use", conn.pgconn.ssl_in_use, conn.execute("SELECT 1").fetchone(), flush=True)
print("survived", flush=True)
"""


@dataclass
class Bouncer:
    """pgbouncer terminating TLS (required of every client) in front of the embedded PostgreSQL."""

    url: str  # sslmode=require
    admin_url: str  # pgbouncer's console
    plain_url: str  # the same without TLS: refused
    log: Path

    def clients(self) -> list[dict]:
        """SHOW CLIENTS (the console speaks only the simple query protocol: ClientCursor)."""
        with psycopg.connect(self.admin_url, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
            cur = conn.execute("SHOW CLIENTS")
            names = [d.name for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kwargs)


@dataclass
class Weights:
    home: Path  # a DEEPFACE_HOME holding .deepface/weights/arcface_weights.h5 of random values
    check: str  # what RANDOM_ARCFACE printed: max |ours - DeepFace.represent|, dtype, dimension


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory, lfw: Path) -> Weights:
    """Made once per session (it takes a TensorFlow start-up)."""
    home = tmp_path_factory.mktemp("deepface-home")
    target = home / ".deepface" / "weights" / "arcface_weights.h5"
    photo = photos_of(lfw, pick_people(lfw, 1, 1, skip=11)[0])[0]
    proc = _run([sys.executable, "-c", RANDOM_ARCFACE, str(target), str(photo)], timeout=600)
    assert proc.returncode == 0 and target.is_file(), proc.stderr[-4000:]
    return Weights(home, proc.stdout.strip().splitlines()[-1])


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"pgbouncer exited with {proc.returncode}:\n{log.read_text()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"pgbouncer did not listen within {timeout} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def bouncer(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bouncer]:
    exe = shutil.which("pgbouncer", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    openssl = shutil.which("openssl")
    if exe is None or openssl is None:
        pytest.skip("needs Debian's pgbouncer and the openssl command: apt-get install pgbouncer openssl")
    backend = conninfo_to_dict(db_url)  # the embedded server: a Unix socket, no TLS
    socket_dir, user, dbname = str(backend["host"]), str(backend["user"]), str(backend["dbname"])
    d = tmp_path_factory.mktemp("pgbouncer")
    cert, key = d / "server.crt", d / "server.key"
    made = _run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)], timeout=60)
    assert made.returncode == 0, made.stderr
    (d / "users.txt").write_text(f'"{user}" ""\n')
    port = free_port()
    # Session pooling: each client keeps its server connection (its SET and prepared statements).
    (d / "pgbouncer.ini").write_text(f"""[databases]
* = host={socket_dir}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {d / "users.txt"}
admin_users = {user}
pool_mode = session
client_tls_sslmode = require
client_tls_cert_file = {cert}
client_tls_key_file = {key}
""")
    cmd = [exe]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root: run it as the embedded server's user
        cmd += ["-u", pwd.getpwuid(Path(socket_dir).stat().st_uid).pw_name]
    log = d / "pgbouncer.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*cmd, str(d / "pgbouncer.ini")], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        _wait_port(port, proc, log)
        base = {"host": "127.0.0.1", "port": port, "user": user}
        yield Bouncer(url=make_conninfo(**base, dbname=dbname, sslmode="require",
                                        application_name="facesearch-deepface-test"),
                      admin_url=make_conninfo(**base, dbname="pgbouncer", sslmode="require"),
                      plain_url=make_conninfo(**base, dbname=dbname, sslmode="disable"), log=log)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def tf_server(bouncer: Bouncer, weights: Weights, tmp_path_factory: pytest.TempPathFactory,
              lfw: Path) -> Iterator[dict]:
    """``facesearch serve`` with deepface:ArcFace in 2 workers, its database over TLS through
    pgbouncer; 4 LFW people enrolled (2 photos each)."""
    home = tmp_path_factory.mktemp("deepface-serve")
    srv = start_server(home, home / "server.log", "--workers", "2", env={
        "FACESEARCH_DATABASE_URL": bouncer.url, "FACESEARCH_MODEL": MODEL,
        "DEEPFACE_HOME": str(weights.home)})
    try:
        r = srv.admin.post("/v1/domains", json={"name": DOMAIN})
        assert r.status_code in (201, 409), r.text
        enrolled: dict[str, list[Path]] = {}
        for name in pick_people(lfw, 3, 4, skip=7):
            photos = photos_of(lfw, name)[:2]
            r = srv.admin.post(f"/v1/domains/{DOMAIN}/enroll", data={"name": name},
                               files=[("photo", jpeg(p)) for p in photos], params={"face": "largest"})
            assert r.status_code == 201, r.text
            stored = {x["photo"] for x in r.json()["results"] if x["status"] == "enrolled"}
            if stored:
                enrolled[name] = [p for p in photos if p.name in stored]
        assert sum(map(len, enrolled.values())) >= 4, enrolled
        yield {"server": srv, "enrolled": enrolled}
    finally:
        with contextlib.suppress(httpx.HTTPError):  # a dead server has failed the tests already
            srv.admin.delete(f"/v1/domains/{DOMAIN}")
        srv.stop()


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_embeddings_are_deepface_represent_of_the_face_chip(weights: Weights) -> None:
    """facesearch runs DeepFace's network on its own compiled path: same numbers as represent()."""
    diff, dtype, dim = weights.check.split()
    assert float(diff) < 1e-5 and dtype == "float32" and int(dim) == 512, weights.check


def test_tensorflow_only_in_the_workers_and_tls_libpq_only_in_the_api_process(tf_server: dict) -> None:
    srv: Server = tf_server["server"]
    api = _maps(srv.proc.pid)
    assert LIBPQ.search(api) and LIBSSL.search(api), "the API process should talk to the database"
    assert not TENSORFLOW.search(api), "TensorFlow is mapped in the API process"
    workers = srv.worker_pids()
    assert len(workers) == 2
    for pid in workers:
        maps = _maps(pid)
        assert TENSORFLOW.search(maps), f"worker {pid} has no TensorFlow: is the model DeepFace's?"
        assert not LIBPQ.search(maps), f"worker {pid} mapped libpq next to TensorFlow"
    # doctor reads the same layout
    assert doctor.mapped(srv.proc.pid) == ([], True)
    assert "tensorflow" in doctor.workers_runtimes(workers)


def test_concurrent_recognize_over_tls_kills_no_process(tf_server: dict, bouncer: Bouncer,
                                                         lfw: Path) -> None:
    srv: Server = tf_server["server"]
    enrolled: dict[str, list[Path]] = tf_server["enrolled"]
    workers = sorted(srv.worker_pids())
    strangers = [photos_of(lfw, n)[0] for n in pick_people(lfw, 1, 4, skip=3)]
    jobs = [(name, photo) for name, photos in enrolled.items() for photo in photos]
    jobs += [(None, photo) for photo in strangers]
    jobs = (jobs * (40 // len(jobs) + 1))[:40]

    def recognize(photo: Path) -> httpx.Response:
        return srv.admin.post(f"/v1/domains/{DOMAIN}/recognize", files={"photo": jpeg(photo)})

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(recognize, [photo for _, photo in jobs]))

    assert [r.status_code for r in responses] == [200] * len(jobs), [r.text for r in responses
                                                                     if r.status_code != 200]
    for (name, _), r in zip(jobs, responses, strict=True):
        body = r.json()
        assert body["model"] == MODEL
        if name is not None:  # an enrolled photo finds its person first, random weights or not
            best = body["faces"][0]["matches"][0]
            # (Not quite 0: enrollment looks for the largest face only, without upsampling, so
            # its landmarks differ by a pixel or so. Other people were 0.04 and more away.)
            assert best["name"] == name and best["distance"] < 0.02, body["faces"][0]

    # Nobody died: the server, the same two workers, no restart.
    assert srv.proc.poll() is None, srv.log()
    assert sorted(srv.worker_pids()) == workers
    ready = httpx.get(srv.base + "/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["workers"]["restarts"] == 0, ready.text
    assert "free(): invalid pointer" not in srv.log()

    # ...and the API process's database connections were TLS: pgbouncer lists them so, and it
    # accepts no other kind.
    mine = [c for c in bouncer.clients() if c["application_name"] == "facesearch-deepface-test"]
    assert mine and all(c["tls"].startswith("TLS") for c in mine), mine
    with pytest.raises(psycopg.OperationalError, match="SSL required"):
        psycopg.connect(bouncer.plain_url).close()


def test_the_seeds_layout_is_a_doctor_fail_and_does_crash(bouncer: Bouncer) -> None:
    """The control: TensorFlow and a TLS libpq connection in one process. Doctor calls it a fail
    with the reason, and the process dies as the seed's did."""
    proc = _run([sys.executable, "-c", SAME_PROCESS, bouncer.url], timeout=300,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = proc.stdout.splitlines()
    assert lines, proc.stderr[-4000:]
    this, both = json.loads(lines[0])
    assert this["status"] == "fail" and "tensorflow" in this["detail"]
    assert both["status"] == "fail" and "TLS in use" in both["detail"]
    assert "free(): invalid pointer" in both["detail"] and both["hint"]
    if proc.returncode == 0:
        versions = _run([sys.executable, "-m", "pip", "list"], timeout=60).stdout
        found = [v for v in versions.splitlines() if re.match(r"(tensorflow|psycopg-binary) ", v)]
        pytest.skip(f"this TensorFlow and psycopg no longer crash together ({found}): the control "
                    "reproduces nothing, so the end-to-end test above proves less")
    assert proc.returncode == -signal.SIGABRT, (proc.returncode, proc.stderr[-4000:])
    assert "free(): invalid pointer" in proc.stderr
    assert "survived" not in proc.stdout


def test_workers_holding_tensorflow_and_libpq_with_tls_is_a_fail() -> None:
    check = doctor.check_tls_and_tensorflow(True, workers_clean=False, workers_tf=True)
    assert check.status == "fail" and "model workers" in check.detail
    assert "free(): invalid pointer" in check.detail
    assert doctor.check_tls_and_tensorflow(False, workers_clean=False, workers_tf=True).status == "warn"
    ok = doctor.check_tls_and_tensorflow(True, workers_clean=True, workers_tf=True)
    assert ok.status == "ok" and "TensorFlow only in the model workers" in ok.detail


def test_missing_weights_refuse_to_start(db_url: str, tmp_path: Path) -> None:
    """No weights file: ``facesearch serve`` exits 1 at once, naming the file and where it goes
    (never a download attempt, never a service that can only answer 503)."""
    empty = tmp_path / "no-weights"
    srv = start_server(tmp_path, tmp_path / "server.log", "--workers", "1", wait=False, env={
        "FACESEARCH_DATABASE_URL": db_url, "FACESEARCH_MODEL": MODEL, "DEEPFACE_HOME": str(empty)})
    try:
        code = srv.proc.wait(60)
    except subprocess.TimeoutExpired:
        srv.stop(signal.SIGKILL)
        pytest.fail(f"facesearch serve kept running without the weights:\n{srv.log()}")
    finally:
        srv.stop()
    log = srv.log()
    assert code == 1, log
    expected = empty / ".deepface" / "weights" / "arcface_weights.h5"
    assert f"needs DeepFace's weights file arcface_weights.h5, expected at {expected}" in log, log
    assert "DEEPFACE_HOME" in log and "never downloads" in log
    assert not expected.parent.exists()  # DeepFace never ran (it creates the folder at import)
