"""DeepFace's current datastores (npz, feather, parquet) with DeepFace itself, through the real CLI.

DeepFace (the version the ``deepface`` extra pins) runs here offline, in a subprocess, on its
``Dlib`` model and ``dlib`` detector: their weights are the ``.dat`` files of
face-recognition-models, copied into ``$DEEPFACE_HOME/.deepface/weights`` under DeepFace's names.
Its own ``find()`` writes the npz, its own ``__save_representations`` the feather and parquet
files, and its own loader reads our exports back.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from facesearch import deepface_files, deepface_pkl
from facesearch.deepface_pkl import InvalidPkl
from facesearch.models import DLIB_MODEL, default_thresholds

from .conftest import photos_of
from .test_cli import pick_people

pytest.importorskip("deepface", reason="the deepface extra is not installed")
pytest.importorskip("pyarrow", reason="the arrow extra is not installed")

NAME = "ds_model_dlib_detector_dlib_aligned_normalization_base_expand_0"

# Run in a subprocess: DeepFace imports TensorFlow, which must not share a process with libpq.
DEEPFACE = r"""
import json, sys
from deepface import DeepFace
from deepface.modules import filestore, recognition
db, probe, what = sys.argv[1], sys.argv[2], sys.argv[3]
store = filestore.build_file_store(db)
save = getattr(recognition, "__save_representations")
load = getattr(recognition, "__load_representations")
out = {}
if what == "find":  # DeepFace makes its npz, then writes the same rows as feather and parquet
    result = DeepFace.find(probe, db_path=db, model_name="Dlib", detector_backend="dlib",
                           silent=True)
    out["identity"] = result[0]["identity"].iloc[0]
    rows = load(store=store, datastore_path=store.join(sys.argv[4] + ".npz"), datastore_format="npz")
    for fmt in ("feather", "parquet"):
        save(store=store, datastore_path=store.join(sys.argv[4] + "." + fmt), datastore_format=fmt,
             representations=rows)
    out["rows"] = len(rows)
elif what in ("refind", "find-as-is"):  # find() over our files, refreshing them or not
    try:
        result = DeepFace.find(probe, db_path=db, model_name="Dlib", detector_backend="dlib",
                               silent=True, refresh_database=what == "refind")
        out["identity"] = result[0]["identity"].iloc[0]
    except Exception as exc:
        out["error"] = type(exc).__name__
else:  # load each file named on the command line with DeepFace's own loader
    for name in sys.argv[4:]:
        rows = load(store=store, datastore_path=store.join(name), datastore_format=name.rsplit(".")[-1])
        out[name] = [[r["identity"], r["hash"], r["embedding"]] for r in rows]
print(json.dumps(out))
"""


def deepface(home: Path, db: Path, probe: Path, what: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", DEEPFACE, str(db), str(probe), what, *args],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DEEPFACE_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def deepface_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import face_recognition_models

    home = tmp_path_factory.mktemp("deepface-home")
    weights = home / ".deepface" / "weights"
    weights.mkdir(parents=True)
    models = Path(face_recognition_models.__file__).parent / "models"
    for name in ("dlib_face_recognition_resnet_model_v1.dat", "shape_predictor_5_face_landmarks.dat"):
        shutil.copy(models / name, weights / name)
    return home


@pytest.fixture(scope="module")
def db_path(lfw: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A DeepFace db_path of 4 LFW people (3 photos each) and a held-out photo of each."""
    root = tmp_path_factory.mktemp("db_path")
    held_out = {}
    for person in pick_people(lfw, 5, 4):
        photos = photos_of(lfw, person)
        (root / person).mkdir()
        for photo in photos[:3]:
            shutil.copy2(photo, root / person / photo.name)
        held_out[person] = photos[4]
    return {"root": root, "held_out": held_out}


@pytest.fixture(scope="module")
def made_by_deepface(deepface_home: Path, db_path: dict) -> dict:
    person, probe = next(iter(db_path["held_out"].items()))
    out = deepface(deepface_home, db_path["root"], probe, "find", NAME)
    assert Path(out["identity"]).parent.name == person  # DeepFace itself finds them
    return out


@pytest.mark.parametrize("fmt", ["npz", "feather", "parquet"])
def test_imports_what_deepface_wrote(made_by_deepface: dict, db_path: dict, fmt: str, cli) -> None:
    file = db_path["root"] / f"{NAME}.{fmt}"
    domain = f"df-{fmt}"
    calibrate = "--calibrate" if fmt == "npz" else "--no-calibrate"
    s = json.loads(cli("import-deepface", file, "--domain", domain, "--json", calibrate).stdout)
    assert (s["format"], s["model"], s["rows"], s["imported"]) == (fmt, DLIB_MODEL, 12, 12)
    if fmt == "npz":  # the photos are where the file says: some embedded by facesearch too
        cal = s["calibration"]
        assert cal["photos"] == 12 and 0 < cal["offset_median"] <= cal["offset_p90"] < 0.2, cal
        assert cal["model_threshold"] <= cal["threshold"] <= cal["model_threshold"] + cal["offset_median"]
    else:
        assert "calibration" not in s
    listed = {d["name"]: d for d in json.loads(cli("domains", "list", "--json").stdout)}
    if fmt == "npz":  # the domain recognizes at the calibrated threshold from now on
        assert (listed[domain]["threshold"], listed[domain]["own_threshold"]) == (cal["threshold"], True)
        cli("domains", "update", domain, "--model-threshold")
        listed = {d["name"]: d for d in json.loads(cli("domains", "list", "--json").stdout)}
    assert (listed[domain]["threshold"], listed[domain]["own_threshold"]) == (
        default_thresholds(DLIB_MODEL)[0], False)
    assert (s["detector"], s["aligned"], s["normalization"], s["expand"]) == ("dlib", True, "base", 0)
    # Our query embeddings against DeepFace's gallery: the nearest person is the right one.
    people, probes = zip(*db_path["held_out"].items(), strict=True)
    out = cli("recognize", *probes, "--domain", domain, "--json", "--threshold", "1").stdout
    lines = [json.loads(line) for line in out.splitlines()]  # JSON Lines, one per photo
    assert [r["faces"][0]["matches"][0]["person"] for r in lines] == list(people)
    assert all({"search", "total"} <= set(r["timings_ms"]) for r in lines)


def test_format_is_told_by_the_bytes_not_the_name(made_by_deepface: dict, db_path: dict,
                                                 tmp_path: Path, cli) -> None:
    lying = tmp_path / "ds_model_dlib_detector_dlib_aligned_normalization_base_expand_0.pkl"
    shutil.copy(db_path["root"] / f"{NAME}.parquet", lying)
    s = json.loads(cli("import-pkl", lying, "--domain", "df-lying", "--json").stdout)
    assert (s["format"], s["imported"]) == ("parquet", 12)
    garbage = tmp_path / f"{NAME}.npz"
    garbage.write_bytes(b"not a datastore at all")
    proc = cli("import-deepface", garbage, "--domain", "df-garbage", check=False)
    assert proc.returncode == 1 and "npz, feather or parquet" in proc.stderr, proc.stderr
    proc = cli("import-deepface", db_path["root"] / f"{NAME}.npz", "--domain", "df-garbage",
               "--model", "ArcFace", check=False)
    assert proc.returncode == 1 and "--model says ArcFace" in proc.stderr, proc.stderr


def test_exports_read_by_deepface_and_reused_as_they_are(made_by_deepface: dict, db_path: dict,
                                                         deepface_home: Path, tmp_path: Path,
                                                         cli) -> None:
    # facesearch enrolls DeepFace's folder itself, then exports into it for DeepFace.
    root = tmp_path / "db"
    shutil.copytree(db_path["root"], root, ignore=shutil.ignore_patterns("ds_*"))
    cli("domains", "create", "df-enrolled", "--model", DLIB_MODEL)
    cli("enroll", root, "--domain", "df-enrolled")
    names = []
    for fmt in ("npz", "feather", "parquet"):
        s = json.loads(cli("export-deepface", "--domain", "df-enrolled", "--out", root, "--format",
                           fmt, "--detector", "dlib", "--json").stdout)
        assert (s["faces"], s["reusable_rows"], s["needs_refresh_database_false"]) == (12, 12, False)
        assert s["file"] == str(root / f"{NAME}.{fmt}")
        names.append(Path(s["file"]).name)
    loaded = deepface(deepface_home, root, next(iter(db_path["held_out"].values())), "load", *names)
    first = loaded[names[0]]
    assert len(first) == 12 and all(loaded[n] == first for n in names)
    assert {Path(identity).relative_to(root).parts[0] for identity, _, _ in first} == set(
        db_path["held_out"])

    # find() with its default refresh_database=True keeps every row: the file is not rewritten.
    for name in names[1:]:
        (root / name).unlink()
    npz = root / names[0]
    before = (npz.read_bytes(), npz.stat().st_mtime_ns)
    person, probe = next(iter(db_path["held_out"].items()))
    found = deepface(deepface_home, root, probe, "refind")
    assert Path(found["identity"]).parent.name == person
    assert (npz.read_bytes(), npz.stat().st_mtime_ns) == before

    # Without the photos, the export says DeepFace needs refresh_database=False.
    proc = cli("export-deepface", "--domain", "df-enrolled", "--out", tmp_path, "--detector", "dlib")
    assert "refresh_database=False" in proc.stderr
    # An older DeepFace gets PKL (0.0.101's name), and cannot be given npz.
    s = json.loads(cli("export-deepface", "--domain", "df-enrolled", "--out", tmp_path,
                       "--deepface-version", "0.0.101", "--json").stdout)
    assert s["file"].endswith("_expand_0.pkl") and len(pickle.loads(Path(s["file"]).read_bytes())) == 12
    proc = cli("export-deepface", "--domain", "df-enrolled", "--out", tmp_path, "--format", "npz",
               "--deepface-version", "0.0.95", check=False)
    assert proc.returncode == 2 and "reads pkl" in proc.stderr


# -- hostile files ---------------------------------------------------------------------------------

def _rows(n: int = 4, dim: int = 128) -> list[dict]:
    rng = np.random.default_rng(1)
    return [{"identity": f"/db/p{i % 2}/{i}.jpg", "hash": f"{i:040x}",
             "embedding": rng.normal(size=dim).tolist(), "target_x": 1, "target_y": 2,
             "target_w": 30, "target_h": 40} for i in range(n)]


def _npz(**replace: np.ndarray) -> bytes:
    data = deepface_files.serialize(_rows(), "npz")
    with np.load(io.BytesIO(data)) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(replace)
    sink = io.BytesIO()
    np.savez(sink, **arrays)
    return sink.getvalue()


def _read(tmp_path: Path, data: bytes, suffix: str = "npz") -> None:
    path = tmp_path / f"{NAME}.{suffix}"
    path.write_bytes(data)
    deepface_pkl.read_pkl(path)


def test_hostile_npz_files_are_refused(tmp_path: Path) -> None:
    good = deepface_files.serialize(_rows(), "npz")
    _read(tmp_path, good)  # the control
    cases = {
        "pickled objects": (_npz(identity=np.array([object()] * 4, dtype=object)), "column identity"),
        "wrong dtype": (_npz(identity=np.arange(4)), "column identity is int64"),
        "NaN": (_npz(embedding=np.full((4, 128), np.nan)), "NaN"),
        "text embedding": (_npz(embedding=np.array([["x"] * 128] * 4)), "column embedding"),
        "short column": (_npz(hash=np.array(["a", "b"])), "different lengths"),
        "truncated": (good[: len(good) // 2], "not a readable npz"),
        "missing column": (_npz(), None),
    }
    del_hash = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(del_hash, "w") as dst:
        for info in src.infolist():
            if info.filename != "hash.npy":
                dst.writestr(info, src.read(info))
    cases["missing column"] = (del_hash.getvalue(), "no column(s) hash")
    # A header that declares 10^12 rows over 4 rows of data.
    huge = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(huge, "w") as dst:
        for info in src.infolist():
            blob = src.read(info)
            if info.filename == "embedding.npy":
                blob = blob.replace(b"(4, 128)", b"(1000000000000, 128)")
            dst.writestr(info, blob)
    cases["huge declared shape"] = (huge.getvalue(), "more than the file holds")
    for label, (data, message) in cases.items():
        with pytest.raises(InvalidPkl) as err:
            _read(tmp_path, data)
        assert message in err.value.message, (label, err.value.message)


def test_zip_bombs_and_hostile_arrow_files_are_refused(tmp_path: Path) -> None:
    import pyarrow as pa
    from pyarrow import feather, parquet

    good = deepface_files.serialize(_rows(), "npz")
    bomb = io.BytesIO()  # a column of 64 MiB of zeros, deflated to a few kB
    with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(
            bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename != "hash.npy":
                dst.writestr(info.filename, src.read(info))
        with dst.open("hash.npy", "w") as f:
            for _ in range(64):
                f.write(b"\0" * (1 << 20))
    assert len(bomb.getvalue()) < 1 << 20
    with pytest.raises(InvalidPkl, match="GiB unpacked"):
        _read(tmp_path, bomb.getvalue())

    def arrow(fmt: str, table: pa.Table) -> bytes:
        sink = pa.BufferOutputStream()
        (feather.write_feather(table, sink) if fmt == "feather" else parquet.write_table(table, sink))
        return sink.getvalue().to_pybytes()

    rows = _rows()
    columns = {k: [r[k] for r in rows] for k in deepface_pkl.KEYS}
    for fmt in ("feather", "parquet"):
        _read(tmp_path, arrow(fmt, pa.table(columns)), fmt)  # the control
        mixed = {**columns, "embedding": [e[:64] if i else e for i, e in enumerate(columns["embedding"])]}
        with pytest.raises(InvalidPkl, match="earlier rows"):
            _read(tmp_path, arrow(fmt, pa.table(mixed)), fmt)
        binary = {**columns, "identity": [s.encode() for s in columns["identity"]]}
        with pytest.raises(InvalidPkl, match="column identity is binary"):
            _read(tmp_path, arrow(fmt, pa.table(binary)), fmt)
        nan = {**columns, "embedding": [[float("nan")] * 128] * 4}
        with pytest.raises(InvalidPkl, match="NaN"):
            _read(tmp_path, arrow(fmt, pa.table(nan)), fmt)
        with pytest.raises(InvalidPkl, match=f"not a readable {fmt}"):
            _read(tmp_path, arrow(fmt, pa.table(columns))[:-40], fmt)


def test_file_names_and_versions() -> None:
    name = deepface_files.parse_filename(f"{NAME}.parquet")
    assert name == deepface_files.DatastoreName("Dlib", "dlib", True, "base", 0, "parquet")
    assert name.filename() == f"{NAME}.parquet"
    v2 = deepface_files.parse_filename("ds_facenet512_retinaface_v2.pkl")
    assert (v2.model, v2.detector, v2.format) == ("Facenet512", "retinaface", "pkl")
    arc = deepface_files.DatastoreName("ArcFace", "opencv", format="pkl")
    assert arc.filename("0.0.79") == "representations_arcface.pkl"
    assert arc.filename("0.0.88") == "ds_arcface_opencv_v2.pkl"
    assert arc.filename("0.0.101") == ("ds_model_arcface_detector_opencv_aligned_normalization_base"
                                       "_expand_0.pkl")
    assert deepface_files.formats_read_by("0.0.101") == ("pkl",)
    assert deepface_files.formats_read_by("0.0.103")[0] == "npz"
    assert deepface_files.parse_filename("photo.npz") is None
    from facesearch.cli import deepface as cli_deepface  # the CLI's copy of the constants

    assert cli_deepface._FORMATS == deepface_files.FORMATS
    assert cli_deepface._CURRENT_DEEPFACE == deepface_files.CURRENT_DEEPFACE
    import deepface

    assert deepface.__version__ == deepface_files.CURRENT_DEEPFACE


def test_deepface_cannot_wreck_a_store_mode_domain(db_path: dict, deepface_home: Path,
                                                   tmp_path: Path, cli) -> None:
    home = {"FACESEARCH_HOME": str(tmp_path / "home"), "FACESEARCH_STORE": "deepface"}
    cli("domains", "create", "store", "--model", DLIB_MODEL, env=home)
    root = tmp_path / "people"
    shutil.copytree(db_path["root"], root, ignore=shutil.ignore_patterns("ds_*"))
    cli("enroll", root, "--domain", "store", env=home)
    folder = tmp_path / "home" / "pkl" / "store"  # DeepFace's db_path: its datastore and nothing else
    (datastore,) = folder.iterdir()
    assert datastore.name == f"{NAME}.npz"
    before = datastore.read_bytes()
    person, probe = next(iter(db_path["held_out"].items()))
    # refresh_database=True (DeepFace's default): no photo in the folder, so DeepFace stops and
    # leaves the file alone; refresh_database=False uses it as it is.
    assert deepface(deepface_home, folder, probe, "refind") == {"error": "EmptyDatasource"}
    assert datastore.read_bytes() == before
    found = deepface(deepface_home, folder, probe, "find-as-is")
    assert Path(found["identity"]).parent.name == person

    # A photo dropped into the folder: DeepFace rewrites the file for it, dropping our 12 rows.
    # facesearch notices, doctor says so, and the copy it last wrote brings them back.
    (folder / person).mkdir()
    shutil.copy(probe, folder / person / probe.name)
    assert Path(deepface(deepface_home, folder, probe, "refind")["identity"]).parent.name == person
    assert len(deepface_pkl.read_pkl(datastore).faces) == 1
    checks = {c["check"]: c for c in json.loads(cli("doctor", "--json", check=False,
                                                    env=home).stdout)}
    store = checks["store"]
    assert store["status"] == "warn" and "lost 12 faces" in store["detail"], store
    last_good = Path(store["detail"].rpartition("last good copy ")[2].split()[0])
    assert last_good.read_bytes() == before
    shutil.rmtree(folder / person)
    shutil.copy(last_good, datastore)
    people = json.loads(cli("people", "list", "--domain", "store", "--json", env=home).stdout)
    assert sum(p["faces"] for p in people) == 12
