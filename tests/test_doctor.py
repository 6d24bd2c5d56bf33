"""``facesearch doctor`` against the real embedded PostgreSQL and the real model, in real processes."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from bench.synthetic import clustered
from facesearch import doctor
from facesearch.config import Settings
from facesearch.inference import ModelPool, ModelSpec
from facesearch.models import DLIB_MODEL, SFACE_MODEL
from facesearch.store import BlockingGallery, NewFace, connect

MODEL = DLIB_MODEL
BIG = "doctor-big"
BIG_PEOPLE = 1000  # x 4 faces = 4,000: the planner uses the index from about 3,000
DATABASE = "facesearch_doctor"


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def sql(url: str, statement: str) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []


def add_people(url: str, domain: str, people: int, seed: int, tag: str = "",
               autovacuum: bool = True, batch: int | None = None, domain_model: str = MODEL) -> int:
    """Synthetic faces (4 per person) stored through the gallery, as enrollment stores them. Returns
    once the server's table statistics count them: a backend reports its counters a little later
    (here: as its connection closes), and counts reported after an ANALYZE would make it stale."""
    _, faces = clustered(np.random.default_rng(seed), people, 4)
    with BlockingGallery(url) as gallery:
        dom = gallery.create_domain(domain, model=domain_model, exist_ok=True)
        if not autovacuum:  # only the test's ANALYZE, not autovacuum's whenever it comes by
            gallery.run(gallery.conn.execute(f"ALTER TABLE faces_d{dom.id} SET (autovacuum_enabled = false)"))
        ids = gallery.ensure_people(dom, [f"{tag}person {i}" for i in range(people)])
        rows = [NewFace(ids[f"{tag}person {i}"], emb, (0, 0, 100, 100), 1.0,
                        hashlib.sha256(f"{domain}/{tag}{i}/{j}".encode()).digest())
                for i, person in enumerate(faces) for j, emb in enumerate(person)]
        batch = batch or len(rows)
        for start in range(0, len(rows), batch):
            gallery.add_faces(dom, MODEL, rows[start:start + batch])
    table = f"faces_d{dom.id}"
    total = sql(url, f"SELECT count(*) FROM {table}")[0][0]
    wait_until(lambda: sql(url, "SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname ="
                                f" '{table}'")[0][0] >= total)
    return dom.id


@pytest.fixture(scope="module")
def url(db_url: str) -> Iterator[str]:
    """A database of its own on the session's server, so other tests' domains do not show up in
    these reports: reached by URL, as an external server is."""
    admin = psycopg.connect(db_url, autocommit=True)
    admin.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
    admin.execute(f"CREATE DATABASE {DATABASE}")
    url = make_conninfo(db_url, dbname=DATABASE)
    connect(url).close()  # pgvector and the schema
    yield url
    admin.execute(f"DROP DATABASE {DATABASE} WITH (FORCE)")
    admin.close()


@pytest.fixture(scope="module")
def report(url: str, cli) -> tuple[int, list[dict]]:
    """``doctor --json`` over a database with one analyzed domain of 4,000 faces."""
    dom_id = add_people(url, BIG, BIG_PEOPLE, seed=11)
    sql(url, f"ANALYZE faces_d{dom_id}")
    proc = cli("--database-url", url, "doctor", "--json", check=False)
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture
def db(url: str) -> Iterator[doctor.Database]:
    database = doctor.Database(url)
    database.open_gallery()
    yield database
    database.close()


def by_name(checks: list[dict]) -> dict[str, dict]:
    return {c["check"]: c for c in checks}


def test_all_ok_and_the_index_is_used(report: tuple[int, list[dict]]) -> None:
    code, checks = report
    assert [c for c in checks if c["status"] != "ok"] == [] and code == 0
    found = by_name(checks)
    assert set(found) == {
        "database", "database TLS", "pgvector", "migrations", f"statistics: {BIG}", f"index: {BIG}",
        f"search: {BIG}", "model", "check photo", "dimension", f"model: {MODEL}", "process: workers",
        "process: this", "TensorFlow + libpq"}
    # The default model (FACESEARCH_MODEL's) and the domain's, each against its reference.
    assert SFACE_MODEL in found["model"]["detail"] and "sface-2021dec's reference" in \
        found["check photo"]["detail"]
    assert "within" in found[f"model: {MODEL}"]["detail"] and "dlib reference" in \
        found[f"model: {MODEL}"]["detail"]
    assert re.fullmatch(r"faces_d\d+_m\d+_hnsw \(.+\) used by the search plan \(4,000 faces\)",
                        found[f"index: {BIG}"]["detail"])
    search = found[f"search: {BIG}"]["detail"]
    assert "over 20 searches" in search and float(re.search(r"p50 ([\d.]+) ms", search)[1]) < 50
    assert "(external)" in found["database"]["detail"] and "not in use: a Unix socket" in \
        found["database TLS"]["detail"]
    assert "no model runtime" in found["process: this"]["detail"]
    assert "no libpq" in found["process: workers"]["detail"]


def test_json_shape(report: tuple[int, list[dict]]) -> None:
    _, checks = report
    for c in checks:
        assert set(c) == {"check", "status", "detail", "hint"}
        assert c["status"] in ("ok", "warn", "fail") and c["check"] and c["detail"]
        assert c["hint"] is None or isinstance(c["hint"], str)


def test_human_output_on_the_embedded_default(cli) -> None:
    proc = cli("doctor", check=False)
    lines = proc.stdout.splitlines()
    assert "\x1b[" not in proc.stdout  # no color when not a terminal
    statuses = [line.split()[0] for line in lines[:-1]]
    assert set(statuses) <= {"ok", "warn", "fail"} and "(embedded)" in lines[0]
    assert re.fullmatch(r"\d+ ok, \d+ warn, \d+ fail", lines[-1])
    assert proc.returncode == (1 if "fail" in statuses else 0)


def test_pkl_mode_checks_the_files_and_never_the_database(cli, tmp_path: Path) -> None:
    """FACESEARCH_STORE=pkl: the store line reads the domains' files; no PostgreSQL is started."""
    home = {"FACESEARCH_HOME": str(tmp_path)}
    photo = tmp_path / "drawn.png"
    photo.write_bytes(doctor.check_face()[0])  # the project's own drawn face
    cli("--store", "pkl", "domains", "create", "docs", env=home)
    cli("--store", "pkl", "enroll", str(photo), "--domain", "docs", "--person", "Drawn", env=home)
    proc = cli("--store", "pkl", "doctor", "--json", check=False, env=home)
    checks = {c["check"]: c for c in json.loads(proc.stdout)}
    assert proc.returncode == 0, proc.stdout
    assert checks["store"]["status"] == "ok" and "1 domains, 1 faces" in checks["store"]["detail"]
    assert checks["dimension"]["status"] == "ok" and "database" not in checks
    assert not (tmp_path / "pgdata").exists()
    (tmp_path / "pkl" / ".facesearch" / "docs" / "facesearch-domain.json").write_text("{not json")
    proc = cli("--store", "pkl", "doctor", "--json", check=False, env=home)
    assert proc.returncode == 1 and json.loads(proc.stdout)[0]["status"] == "fail"


def test_unreachable_database_is_a_fail_line_and_exit_1(cli) -> None:
    url = "postgresql://doctor:s3cret-pw@127.0.0.1:1/nowhere"
    proc = cli("--database-url", url, "doctor", "--json", check=False)
    checks = json.loads(proc.stdout)
    assert proc.returncode == 1 and "s3cret" not in proc.stdout + proc.stderr
    first = checks[0]
    assert (first["check"], first["status"]) == ("database", "fail")
    assert "127.0.0.1:1/nowhere" in first["detail"] and "FACESEARCH_DATABASE_URL" in first["hint"]
    # The other database checks are skipped; the model and the processes are still checked.
    assert [c["check"] for c in checks[1:]] == [
        "model", "check photo", "dimension", "process: workers", "process: this", "TensorFlow + libpq"]
    assert all(c["status"] == "ok" for c in checks[1:])
    assert "s3cret" not in doctor._scrub(f'bad value in "{url}"', url)


def test_stale_statistics_warn(url: str, db: doctor.Database) -> None:
    dom_id = add_people(url, "doctor-stale", 50, seed=12, autovacuum=False)
    try:
        sql(url, f"ANALYZE faces_d{dom_id}")
        [stale] = [d for d in doctor.domain_models(db) if d.domain == "doctor-stale"]
        assert doctor.check_statistics(db, stale).status == "ok"

        # 120 rows changed: more than autovacuum waits for (50 + 10% of 200)
        add_people(url, "doctor-stale", 30, seed=13, tag="new ", autovacuum=False)
        check = doctor.check_statistics(db, stale)
        assert check.status == "warn"
        assert "120 of 320 rows changed since" in check.detail
        assert check.hint.startswith(f"run ANALYZE faces_d{dom_id};") and "autovacuum is off" in check.hint

        sql(url, f"ANALYZE faces_d{dom_id}")
        assert doctor.check_statistics(db, stale).status == "ok"
    finally:
        with BlockingGallery(url) as gallery:
            gallery.delete_domain("doctor-stale")


def test_stale_statistics_of_a_big_domain_are_reported(
        url: str, db: doctor.Database, settings: Settings) -> None:
    """Enrolled in small batches (add_faces analyzes only after its first batch or a large one) with
    autovacuum off: the statistics describe 400 of 5,200 faces. Doctor warns and says what to run;
    after that ANALYZE both checks are ok and the search plan uses the index."""
    dom_id = add_people(url, "doctor-unanalyzed", 1300, seed=15, autovacuum=False,
                        batch=400)  # 5,200 faces
    try:
        [d] = [d for d in doctor.domain_models(db) if d.domain == "doctor-unanalyzed"]
        stats = doctor.check_statistics(db, d)
        assert stats.status == "warn" and "changed since" in stats.detail
        assert stats.hint.startswith(f"run ANALYZE faces_d{dom_id};")
        sql(url, f"ANALYZE faces_d{dom_id}")
        assert doctor.check_statistics(db, d).status == "ok"
        assert "used by the search plan" in doctor.check_index(db, d, settings).detail
    finally:
        with BlockingGallery(url) as gallery:
            gallery.delete_domain("doctor-unanalyzed")


def test_missing_index_fails_with_the_statement_that_recreates_it(
        url: str, db: doctor.Database, settings: Settings) -> None:
    dom_id = add_people(url, "doctor-noindex", 5, seed=14)
    try:
        [d] = [d for d in doctor.domain_models(db) if d.domain == "doctor-noindex"]
        assert doctor.check_index(db, d, settings).status == "ok"
        sql(url, f"DROP INDEX faces_d{dom_id}_m{d.model_id}_hnsw")
        check = doctor.check_index(db, d, settings)
        assert check.status == "fail" and "no HNSW index" in check.detail
        statement = check.hint.split("or run: ", 1)[1]
        sql(url, statement)
        assert doctor.check_index(db, d, settings).status == "ok"
    finally:
        with BlockingGallery(url) as gallery:
            gallery.delete_domain("doctor-noindex")


def test_faces_the_domain_does_not_search_are_a_warning(url: str, db: doctor.Database,
                                                         settings: Settings) -> None:
    """A domain on sface-2021dec still holding dlib-resnet-v1 faces (a move not finished): one warn
    line for them, no index or search checks of a model the domain never searches."""
    add_people(url, "doctor-moving", 5, seed=16, domain_model=SFACE_MODEL)
    try:
        checks = {c.check: c for c in doctor.database_checks(db, settings)}
        warn = checks["models: doctor-moving"]
        assert warn.status == "warn" and "20 faces of dlib-resnet-v1" in warn.detail
        assert "its model is sface-2021dec" in warn.detail and "set-model" in warn.hint
        assert "index: doctor-moving" not in checks and "search: doctor-moving" not in checks
        assert doctor.models_in_use(db) == sorted([MODEL, SFACE_MODEL])
    finally:
        with BlockingGallery(url) as gallery:
            gallery.delete_domain("doctor-moving")


def test_check_photo_is_detected_and_embeds_as_the_reference(pool, settings: Settings) -> None:
    data, reference = doctor.check_face()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) < 30_000
    check, embedding = doctor.check_photo(pool, settings, MODEL)  # ONNX runtime, HOG: the defaults
    assert check.status == "ok", check
    expected = reference["faces"]["hog"]
    assert np.max(np.abs(embedding - np.asarray(expected["embedding"]))) < 1e-3
    assert f"x={expected['box']['x']} y={expected['box']['y']}" in check.detail


def test_check_photo_with_dlib_itself_and_the_cnn_detector(settings: Settings) -> None:
    """The reference was computed by dlib's own ResNet: it reproduces it, with either detector's
    reference (the CNN detector's box differs, so do the landmarks and the embedding)."""
    dlib_cnn = replace(settings, runtime="dlib", detector="cnn")
    spec = ModelSpec(model=MODEL, runtime="dlib", detector="cnn", cache_dir=str(settings.cache_dir))
    with ModelPool(spec, workers=1) as pool:
        check, embedding = doctor.check_photo(pool, dlib_cnn, MODEL)
    assert check.status == "ok", check
    _, reference = doctor.check_face()
    assert np.max(np.abs(embedding - np.asarray(reference["faces"]["cnn"]["embedding"]))) < 1e-5


def test_a_runtime_in_this_process_is_a_fail() -> None:
    """The pytest process is no API process: load real runtimes into it and see doctor notice them,
    by the native library mapped as well as by the module."""
    import dlib  # noqa: F401
    import onnxruntime  # noqa: F401

    maps = doctor._maps()
    assert doctor.RUNTIMES["dlib"].search(maps) and doctor.RUNTIMES["onnxruntime"].search(maps)
    assert {"dlib", "onnxruntime"} <= set(doctor.runtimes_here())
    check = doctor.check_this_process()
    assert check.status == "fail" and "dlib, onnxruntime" in check.detail and check.hint
