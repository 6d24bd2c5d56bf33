"""DeepFace PKL files: import-pkl and export-pkl through the real CLI, on the embedded PostgreSQL.

The Dlib files hold real dlib embeddings of LFW photos (DeepFace's Dlib model is our
dlib-resnet-v1), written in each generation's exact structure and scaled by random factors as
DeepFace's raw outputs are; recognizing a held-out photo through the CLI must then name the person.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.synthetic import clustered
from facesearch import deepface_pkl
from facesearch.deepface_pkl import InvalidPkl, model_from_filename, photo_key
from facesearch.models import DEFAULT_MODEL, DLIB_MODEL, default_thresholds

from .conftest import photos_of
from .test_cli import pick_people

DLIB_G3 = "ds_model_dlib_detector_opencv_aligned_normalization_base_expand_0.pkl"
ROOT = "/srv/deepface/db"  # the db_path the files claim their photos were in


def write(path: Path, rows: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(rows))
    return path


def summary(proc) -> dict:
    return json.loads(proc.stdout)


def faces_in(db, domain: str) -> int:
    return db.execute("SELECT count(*) FROM faces f JOIN domains d ON d.id = f.domain_id"
                      " WHERE d.name = %s", (domain,)).fetchone()[0]


def domain_exists(db, domain: str) -> bool:
    return db.execute("SELECT 1 FROM domains WHERE name = %s", (domain,)).fetchone() is not None


@pytest.fixture(scope="module")
def lfw_embeddings(lfw: Path, pool) -> dict:
    """Real dlib embeddings (largest face) of 4 photos each of 6 LFW people; the 5th held out."""
    enrolled, held_out = {}, {}
    for person in pick_people(lfw, 5, 6):
        photos = photos_of(lfw, person)
        found = []
        for photo in photos[:4]:
            analysis = pool.analyze(photo.read_bytes())
            if analysis.faces:
                found.append((photo, analysis.faces[0]))
        enrolled[person] = found
        held_out[person] = photos[4]
    return {"enrolled": enrolled, "held_out": held_out}


@pytest.fixture(scope="module")
def pkl_files(lfw_embeddings: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same faces in each generation's file, raw embeddings scaled by random factors."""
    rng = np.random.default_rng(4)
    out = tmp_path_factory.mktemp("pkl")
    g1, g2, g3 = [], [], []
    for person, faces in lfw_embeddings["enrolled"].items():
        for photo, face in faces:
            identity = f"{ROOT}/{person}/{photo.name}"
            raw = (face.embedding.astype(np.float64) * rng.uniform(0.05, 40)).tolist()
            b = face.box
            g1.append([identity, raw])
            g2.append([identity, raw, b.x, b.y, b.w, b.h])
            # DeepFace 0.0.86's hash: SHA-1 of the photo's bytes (later ones hash its size/times).
            g3.append({"identity": identity, "hash": hashlib.sha1(photo.read_bytes()).hexdigest(),
                       "embedding": raw, "target_x": b.x, "target_y": b.y, "target_w": b.w,
                       "target_h": b.h})
    # Photos where DeepFace found no face: embedding None, box zero.
    for name in ("blurry.jpg", "back_of_head.jpg"):
        g3.append({"identity": f"{ROOT}/Nobody_Found/{name}", "hash": hashlib.sha1(name.encode()).hexdigest(),
                   "embedding": None, "target_x": 0, "target_y": 0, "target_w": 0, "target_h": 0})
    return {1: write(out / "g1" / "representations_dlib.pkl", g1),
            2: write(out / "g2" / "representations_dlib.pkl", g2),
            3: write(out / "g3" / DLIB_G3, g3),
            "rows": {1: g1, 2: g2, 3: g3}}


@pytest.fixture(scope="module")
def imported(pkl_files: dict, cli) -> dict:
    """Each generation imported into its own domain."""
    return {gen: summary(cli("import-pkl", pkl_files[gen], "--domain", f"pkl-g{gen}", "--json"))
            for gen in (1, 2, 3)}


@pytest.mark.parametrize("gen", [1, 2, 3])
def test_each_generation_imports_as_dlib_and_is_recognized(gen: int, imported: dict, pkl_files: dict,
                                                          lfw_embeddings: dict, cli, db) -> None:
    s = imported[gen]
    faces = sum(len(f) for f in lfw_embeddings["enrolled"].values())
    assert s["generation"] == gen and s["rows"] == len(pkl_files["rows"][gen])
    assert (s["imported"], s["already_there"], s["people"]) == (faces, 0, 6)
    assert (s["model"], s["deepface_model"], s["dimensions"], s["index"]) == (
        "dlib-resnet-v1", "Dlib", 128, "hnsw")
    assert s["no_face_rows"] == (2 if gen == 3 else 0)
    assert faces_in(db, f"pkl-g{gen}") == faces
    # Stored normalized, whatever the scale of DeepFace's raw output.
    norms = db.execute("SELECT vector_norm(f.embedding) FROM faces f JOIN domains d"
                       " ON d.id = f.domain_id WHERE d.name = %s", (f"pkl-g{gen}",)).fetchall()
    assert np.allclose([n[0] for n in norms], 1.0, atol=1e-5)

    # The domain was made with the file's model, and recognizes with it. (Six people: LFW's 1:1
    # threshold is safe here; the 1:N default is set for galleries of 1,680.)
    people = list(lfw_embeddings["held_out"])
    out = cli("recognize", *(lfw_embeddings["held_out"][p] for p in people), "--domain",
              f"pkl-g{gen}", "--json", "--threshold", str(default_thresholds(DLIB_MODEL)[1])).stdout
    results = [json.loads(line) for line in out.splitlines()]
    assert {r["model"] for r in results} == {DLIB_MODEL}
    named = [r["faces"][0]["matches"][0]["person"] if r["faces"] and r["faces"][0]["matches"] else None
             for r in results]
    assert named == people


def test_an_import_gives_a_domain_without_faces_its_model(pkl_files: dict, lfw: Path, cli) -> None:
    """An existing domain without faces takes the file's model; one with faces of its own model
    keeps it, and the import says its faces are not searched."""
    cli("domains", "create", "pkl-into-empty")
    s = summary(cli("import-pkl", pkl_files[3], "--domain", "pkl-into-empty", "--json"))
    assert (s["model"], s["domain_model"]) == (DLIB_MODEL, DLIB_MODEL)
    cli("enroll", photos_of(lfw, "Tony_Blair")[0], "--domain", "pkl-into-busy", "--person", "Tony")
    proc = cli("import-pkl", pkl_files[3], "--domain", "pkl-into-busy")
    assert f"recognizes with its model {DEFAULT_MODEL}, not {DLIB_MODEL}" in proc.stderr
    listed = {d["name"]: d["model"] for d in json.loads(cli("domains", "list", "--json").stdout)}
    assert (listed["pkl-into-empty"], listed["pkl-into-busy"]) == (DLIB_MODEL, DEFAULT_MODEL)
    for domain in ("pkl-into-empty", "pkl-into-busy"):
        cli("domains", "delete", domain, "--yes")


def test_no_face_rows_are_skipped_not_stored(imported: dict, db) -> None:
    assert imported[3]["no_face_rows"] == 2
    assert db.execute("SELECT count(*) FROM people p JOIN domains d ON d.id = p.domain_id"
                      " WHERE d.name = 'pkl-g3' AND p.name = 'Nobody_Found'").fetchone()[0] == 0


def test_importing_twice_adds_nothing(imported: dict, pkl_files: dict, cli, db) -> None:
    before = faces_in(db, "pkl-g3")
    again = summary(cli("import-pkl", pkl_files[3], "--domain", "pkl-g3", "--json"))
    assert (again["imported"], again["already_there"]) == (0, imported[3]["imported"])
    assert faces_in(db, "pkl-g3") == before


def test_a_dimension_that_contradicts_the_file_name_is_refused(imported: dict, pkl_files: dict,
                                                                tmp_path: Path, cli, db) -> None:
    # dlib's 128-d rows under ArcFace's (512-d) name: into a new domain and an existing one.
    wrong = write(tmp_path / "ds_model_arcface_detector_opencv_aligned_normalization_base_expand_0.pkl",
                  pkl_files["rows"][3])
    before = faces_in(db, "pkl-g3")
    for domain in ("pkl-mismatch", "pkl-g3"):
        proc = cli("import-pkl", wrong, "--domain", domain, check=False)
        assert proc.returncode == 1
        assert "128 numbers" in proc.stderr and "ArcFace gives 512" in proc.stderr
    assert not domain_exists(db, "pkl-mismatch") and faces_in(db, "pkl-g3") == before
    # --model naming another model than the file's name is refused too.
    proc = cli("import-pkl", pkl_files[3], "--domain", "pkl-mismatch", "--model", "Facenet", check=False)
    assert proc.returncode == 1 and "--model says Facenet" in proc.stderr


@pytest.mark.parametrize("bad", ["nan", "inf", "zeros", "text", "ragged"])
def test_malformed_rows_are_refused_by_row(bad: str, pkl_files: dict, tmp_path: Path, cli, db) -> None:
    rows = [dict(r) for r in pkl_files["rows"][3]]
    emb = list(rows[3]["embedding"])
    if bad == "nan":
        emb[7] = float("nan")
    elif bad == "inf":
        emb[0] = float("inf")
    elif bad == "zeros":
        emb = [0.0] * len(emb)
    elif bad == "text":
        emb[5] = "0.25"
    else:
        emb = emb[:-1]
    rows[3]["embedding"] = emb
    proc = cli("import-pkl", write(tmp_path / DLIB_G3, rows), "--domain", f"pkl-bad-{bad}", check=False)
    assert proc.returncode == 1
    assert f"row 3 ({rows[3]['identity']})" in proc.stderr and "nothing was imported" in proc.stderr
    assert not domain_exists(db, f"pkl-bad-{bad}")


class _RunsCommand:
    """What an attacker's pickle looks like: unpickling it calls os.system."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (self.command,)


@pytest.mark.parametrize("where", ["whole file", "inside a row"])
def test_a_pickle_that_runs_code_is_refused_without_running_it(where: str, pkl_files: dict,
                                                               tmp_path: Path, cli, db) -> None:
    marker = tmp_path / "pwned"
    payload = _RunsCommand(f"touch {marker}")
    if where == "whole file":
        rows: Any = payload
    else:
        rows = [dict(r) for r in pkl_files["rows"][3]]
        rows[1]["embedding"] = payload
    proc = cli("import-pkl", write(tmp_path / DLIB_G3, rows), "--domain", "pkl-evil", check=False)
    assert proc.returncode == 1
    assert "refused" in proc.stderr and "posix.system" in proc.stderr
    assert not marker.exists()
    assert not domain_exists(db, "pkl-evil")


def test_export_gives_deepface_rows_and_reimports_the_same(imported: dict, pkl_files: dict,
                                                         tmp_path: Path, cli) -> None:
    out = tmp_path / "db_path" / DLIB_G3
    out.parent.mkdir()
    s = summary(cli("export-pkl", "--domain", "pkl-g3", "--out", out, "--json"))
    assert (s["faces"], s["people"], s["model"], s["deepface_model"]) == (
        imported[3]["imported"], 6, "dlib-resnet-v1", "Dlib")
    rows = pickle.loads(out.read_bytes())  # plain pickle: what DeepFace does
    assert isinstance(rows, list) and len(rows) == imported[3]["imported"]
    originals = {r["identity"]: r for r in pkl_files["rows"][3] if r["embedding"] is not None}
    for row in rows:
        assert sorted(row) == sorted(deepface_pkl.KEYS)
        assert all(type(x) is float for x in row["embedding"])
        original = originals[row["identity"]]  # the original path, kept since the import
        assert row["hash"] == original["hash"]
        raw = np.asarray(original["embedding"])
        assert np.allclose(row["embedding"], raw / np.linalg.norm(raw), atol=1e-6)
        assert [row[k] for k in deepface_pkl.KEYS[3:]] == [original[k] for k in deepface_pkl.KEYS[3:]]
    assert not list(out.parent.glob(".*.tmp"))  # written through a temporary file, renamed

    again = summary(cli("import-pkl", out, "--domain", "pkl-reimported", "--json"))
    assert (again["imported"], again["people"], again["model"]) == (len(rows), 6, "dlib-resnet-v1")
    listing = {d: json.loads(cli("people", "list", "--domain", d, "--json").stdout)
               for d in ("pkl-g3", "pkl-reimported")}
    assert ([(p["name"], p["faces"]) for p in listing["pkl-g3"]]
            == [(p["name"], p["faces"]) for p in listing["pkl-reimported"]])
    # Importing the export back where it came from adds nothing: same photo keys.
    same = summary(cli("import-pkl", out, "--domain", "pkl-g3", "--json"))
    assert same["imported"] == 0


def test_export_of_enrolled_faces_names_them_under_db_path(tmp_path: Path, lfw: Path, cli) -> None:
    photos = photos_of(lfw, pick_people(lfw, 5, 6)[1])[:2]
    cli("domains", "create", "pkl-enrolled", "--model", DLIB_MODEL)  # a model DeepFace has
    cli("enroll", *photos, "--domain", "pkl-enrolled", "--person", "Ana Novak")
    out = tmp_path / "export.pkl"
    proc = cli("export-pkl", "--domain", "pkl-enrolled", "--out", out, "--db-path", "/photos")
    assert "ds_model_dlib_detector_opencv_aligned_normalization_base_expand_0.pkl" in proc.stderr
    rows = pickle.loads(out.read_bytes())
    assert {r["hash"] for r in rows} == {hashlib.sha256(p.read_bytes()).hexdigest() for p in photos}
    assert all(r["identity"].startswith("/photos/Ana Novak/facesearch-") for r in rows)
    # Imported back, they are the enrolled photos (same person, same SHA-256): nothing new.
    again = summary(cli("import-pkl", out, "--domain", "pkl-enrolled", "--model", "Dlib", "--json"))
    assert (again["imported"], again["already_there"]) == (0, 2)
    assert deepface_pkl.path_part("AC/DC") == "AC_DC" and deepface_pkl.path_part("..") == "_.."


def test_arcface_file_imports_as_a_deepface_model(tmp_path: Path, lfw: Path, cli) -> None:
    rng = np.random.default_rng(11)
    _, faces = clustered(rng, 20, 3, dim=512)
    rows = []
    for p in range(20):
        for k in range(3):
            rows.append({"identity": f"C:\\deepface\\db\\person {p}\\{k}.jpg",  # DeepFace on Windows
                         "hash": f"{p:020x}{k:020x}", "embedding": (faces[p, k] * 9.5).tolist(),
                         "target_x": 5, "target_y": 6, "target_w": 50 + k, "target_h": 60})
    # A photo with two faces: both rows, the larger one kept.
    rows.append({**rows[0], "embedding": (-faces[0, 0]).tolist(), "target_w": 10, "target_h": 10})
    f = write(tmp_path / "ds_arcface_retinaface_v2.pkl", rows)
    s = summary(cli("import-pkl", f, "--domain", "pkl-arcface", "--json"))
    assert (s["model"], s["dimensions"], s["index"], s["imported"], s["people"]) == (
        "deepface:ArcFace", 512, "hnsw", 60, 20)
    assert (s["several_faces"], s["other_faces_skipped"]) == (1, 1)
    people = json.loads(cli("people", "list", "--domain", "pkl-arcface", "--json").stdout)
    assert len(people) == 20 and {p["faces"] for p in people} == {3}
    listed = json.loads(cli("faces", "list", "--domain", "pkl-arcface", "--person", "person 0",
                            "--json").stdout)
    assert {x["model"] for x in listed} == {"deepface:ArcFace"}
    assert sorted(x["box"]["w"] for x in listed) == [50, 51, 52]  # not the 10x10 second face
    assert all(x["score"] is None for x in listed)
    domains = json.loads(cli("domains", "list", "--json").stdout)
    assert {"name": "pkl-arcface", "people": 20, "faces": 60} in [
        {k: d[k] for k in ("name", "people", "faces")} for d in domains]
    # Recognizing new photos with it needs DeepFace and its weights, which nobody put in this empty
    # DEEPFACE_HOME: a clear error (what is missing, where), not a crash or a download.
    photo = photos_of(lfw, pick_people(lfw, 5, 6)[0])[0]
    proc = cli("recognize", photo, "--domain", "pkl-arcface", check=False,
               env={"FACESEARCH_MODEL": "deepface:ArcFace", "DEEPFACE_HOME": str(tmp_path)})
    assert proc.returncode == 1
    assert "deepface:ArcFace needs DeepFace" in proc.stderr


def test_a_4096_dimension_model_is_stored_without_an_index(tmp_path: Path, cli, db, gallery) -> None:
    rng = np.random.default_rng(12)
    _, faces = clustered(rng, 4, 2, dim=4096)
    rows = [[f"/db/face {p}/{k}.jpg", (faces[p, k] * 3).tolist()] for p in range(4) for k in range(2)]
    f = write(tmp_path / "representations_vgg_face.pkl", rows)  # generation 1, "VGG-Face"
    proc = cli("import-pkl", f, "--domain", "pkl-vgg")
    assert "8 faces imported" in proc.stdout and "no vector index" in proc.stderr
    s = summary(cli("import-pkl", f, "--domain", "pkl-vgg", "--json"))
    assert (s["model"], s["dimensions"], s["index"], s["already_there"]) == (
        "deepface:VGG-Face", 4096, "none", 8)
    dom = gallery.get_domain("pkl-vgg")
    assert db.execute("SELECT count(*) FROM pg_indexes WHERE tablename = %s AND indexdef LIKE"
                      " '%%hnsw%%'", (f"faces_d{dom.id}",)).fetchone()[0] == 0
    # Exact search still finds the right person.
    found = gallery.search(dom, "deepface:VGG-Face", [faces[2, 1]], k=1, threshold=0.5)
    assert found[0][0].person == "face 2" and found[0][0].distance < 1e-5


def test_file_names_and_photo_keys() -> None:
    assert model_from_filename("representations_vgg_face.pkl") == "VGG-Face"
    assert model_from_filename("representations_facenet512.pkl") == "Facenet512"
    assert model_from_filename("representations_facenet.pkl") == "Facenet"
    assert model_from_filename("ds_ghostfacenet_yolov8_v2.pkl") == "GhostFaceNet"
    assert model_from_filename(
        "ds_model_deepid_detector_dlib_unaligned_normalization_raw_expand_10.pkl") == "DeepID"
    assert model_from_filename("ds_model_arcface_detector_opencv.pkl") == "ArcFace"
    assert model_from_filename("faces.pkl") is None
    assert deepface_pkl.deepface_model("vgg-face") == "VGG-Face"
    assert deepface_pkl.deepface_model("deepface:SFace") == "SFace"
    assert deepface_pkl.deepface_model("dlib-resnet-v1") == "Dlib"
    assert deepface_pkl.facesearch_model("Dlib") == "dlib-resnet-v1"
    with pytest.raises(InvalidPkl):
        deepface_pkl.deepface_model("deepface:Dlib")
    sha = hashlib.sha256(b"photo").hexdigest()
    assert photo_key("/a/b.jpg", sha) == bytes.fromhex(sha)  # a SHA-256: the photo's own
    assert photo_key("/a/b.jpg", "ab" * 20) == hashlib.sha256(b"ab" * 20).digest()
    assert photo_key("/a/b.jpg", None) == hashlib.sha256(b"/a/b.jpg").digest()
    assert deepface_pkl.person_of("C:\\db\\Ana Novak\\1.jpg") == "Ana Novak"
    with pytest.raises(ValueError):
        deepface_pkl.person_of("1.jpg")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_arrays_and_scalars_are_plain_data(protocol: int, tmp_path: Path) -> None:
    """Some DeepFace versions leave NumPy arrays and scalars in their rows: the safe loader reads
    them in every pickle protocol."""
    rows = [{"identity": f"/db/p{i}/{i}.jpg", "hash": f"{i:040x}",
             "embedding": np.arange(1, 129, dtype=np.float32) * (i + 1),
             "target_x": np.int64(3), "target_y": np.int32(4), "target_w": np.float64(10.0),
             "target_h": 20} for i in range(3)]
    f = tmp_path / DLIB_G3
    f.write_bytes(pickle.dumps(rows, protocol=protocol))
    contents = deepface_pkl.read_pkl(f)
    assert (contents.generation, contents.dim, len(contents.faces)) == (3, 128, 3)
    assert contents.faces[0].box == (3, 4, 10, 20)
    assert np.allclose(contents.faces[2].embedding, np.arange(1, 129) / np.linalg.norm(np.arange(1, 129)))
