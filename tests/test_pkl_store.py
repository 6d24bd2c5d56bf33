"""DeepFace-store mode (FACESEARCH_STORE=deepface, alias pkl): galleries in DeepFace's own
datastore files (npz by default), no database. Real LFW embeddings from the session's model pool;
the pgvector store on the session's PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from facesearch import deepface_files, deepface_pkl
from facesearch.errors import Conflict, InvalidName, NotFound
from facesearch.models import DLIB_MODEL, SFACE_MODEL, default_thresholds
from facesearch.store import BlockingGallery, NewFace
from facesearch.store.pkl import (
    LAST_GOOD,
    SIDECAR,
    THUMBNAILS,
    BlockingPklGallery,
    folder_person,
    meta_folder,
    model_file,
    person_folder,
)

from .api.conftest import UNREACHABLE_DB
from .conftest import STORES, photos_of

MODEL = DLIB_MODEL
FILE = model_file(MODEL)
THRESHOLD = default_thresholds(MODEL)[0]  # recognize's


def rows_of(path: Path) -> list[dict]:
    """A datastore's rows as DeepFace's loader gives them (embeddings as lists of floats)."""
    data = path.read_bytes()
    rows = deepface_files.read_rows(data, deepface_files.sniff(data), path.name)
    return [{**r, "embedding": None if r["embedding"] is None else np.asarray(
        r["embedding"]).tolist()} for r in rows]


def write_in_place(path: Path, rows: list[dict]) -> None:
    """As DeepFace's FileStore.write_bytes does: open(path, "wb"), the same inode."""
    with path.open("wb") as f:
        f.write(deepface_files.serialize(rows, path.suffix[1:]))


def spread(lfw: Path, count: int, photos: int, exactly: bool = False) -> list[str]:
    """A deterministic spread of LFW people with at least (or exactly) ``photos`` photos."""
    found = sorted(d.name for d in lfw.iterdir()
                   if (n := len(list(d.glob("*.jpg")))) == photos or (not exactly and n > photos))
    step = max(1, len(found) // count)
    return found[3::step][:count]


@pytest.fixture(scope="module")
def lfw_faces(pool, lfw: Path) -> dict:
    """16 LFW people with 3 photos to enroll and a 4th held out, and 6 strangers (one photo each):
    their largest faces, embedded (with thumbnails) by the real model."""
    people = {name: photos_of(lfw, name)[:4] for name in spread(lfw, 16, 4)}
    strangers = [photos_of(lfw, name)[0] for name in spread(lfw, 6, 1, exactly=True)]
    paths = [p for photos in people.values() for p in photos] + strangers
    futures = [pool.submit_batch([p.read_bytes() for p in paths[i:i + 8]], max_pixels=10**8,
                                 max_faces=1, thumbnails=True) for i in range(0, len(paths), 8)]
    faces = {}
    for future, start in zip(futures, range(0, len(paths), 8), strict=True):
        for path, analysis in zip(paths[start:start + 8], pool.result(future), strict=True):
            if not isinstance(analysis, Exception) and analysis.faces:
                faces[path] = (analysis.faces[0], hashlib.sha256(path.read_bytes()).digest())
    enroll = {name: [p for p in photos[:3] if p in faces] for name, photos in people.items()}
    held_out = {name: photos[3] for name, photos in people.items() if photos[3] in faces}
    return {"faces": faces, "enroll": enroll, "held_out": held_out,
            "strangers": [p for p in strangers if p in faces]}


def fill(gallery, domain: str, lfw_faces: dict) -> tuple[object, dict[int, Path]]:
    """Enroll the module's people into a new domain: (domain, face id -> photo)."""
    dom = gallery.create_domain(domain, model=MODEL)
    ids = gallery.ensure_people(dom, lfw_faces["enroll"])
    photos = [(name, p) for name, ps in lfw_faces["enroll"].items() for p in ps]
    new = []
    for name, p in photos:
        face, sha = lfw_faces["faces"][p]
        new.append(NewFace(ids[name], face.embedding, (face.box.x, face.box.y, face.box.w, face.box.h),
                           face.score, sha, face.thumbnail))
    face_ids = gallery.add_faces(dom, MODEL, new)
    assert None not in face_ids
    return dom, {fid: p for fid, (_, p) in zip(face_ids, photos, strict=True)}


@pytest.fixture
def pkl(tmp_path: Path) -> BlockingPklGallery:
    with BlockingPklGallery(tmp_path / "pkl") as g:
        yield g


def test_same_top1_as_pgvector(lfw_faces: dict, db_url: str, pkl: BlockingPklGallery) -> None:
    """The same LFW gallery in both stores: every held-out photo and stranger gets the same first
    match (or none) from each, at the same distance."""
    queries = [lfw_faces["faces"][p][0].embedding
               for p in [*lfw_faces["held_out"].values(), *lfw_faces["strangers"]]]
    with BlockingGallery(db_url) as pg:
        pg_dom, _ = fill(pg, "pkl-vs-pgvector", lfw_faces)
        try:
            results = {}
            for threshold in (THRESHOLD, 2.0):
                results[threshold] = pg.search(pg_dom, MODEL, queries, k=5, threshold=threshold)
        finally:
            pg.delete_domain("pkl-vs-pgvector")
    pkl_dom, _ = fill(pkl, "pkl-vs-pgvector", lfw_faces)
    right = matched = 0
    for threshold, expected in results.items():
        got = pkl.search(pkl_dom, MODEL, queries, k=5, threshold=threshold)
        for a, b in zip(expected, got, strict=True):
            assert [m.person for m in a[:1]] == [m.person for m in b[:1]]
            common = {m.person: m.distance for m in a}
            for m in b:
                if m.person in common:
                    assert abs(m.distance - common[m.person]) < 1e-5
            assert [m.distance for m in b] == sorted(m.distance for m in b)
            assert len({m.person_id for m in b}) == len(b) and all(m.distance < threshold for m in b)
        if threshold == THRESHOLD:
            held_out = list(lfw_faces["held_out"])
            right = sum(bool(m) and m[0].person == name for name, m in zip(held_out, got, strict=False))
            matched = sum(bool(m) for m in got[len(held_out):])  # strangers
    # The comparison means something: most held-out photos are found, strangers mostly not.
    assert right >= 0.9 * len(lfw_faces["held_out"]) and matched <= 1


def test_file_is_a_deepface_gallery_holding_what_was_enrolled(lfw_faces: dict,
                                                               pkl: BlockingPklGallery) -> None:
    dom, photos = fill(pkl, "lfw", lfw_faces)
    odd = pkl.person_id(dom, "AC/DC 100% .real", create=True)  # a name that is no safe folder
    (odd_face,) = pkl.add_faces(dom, MODEL, [NewFace(odd, np.eye(128, dtype=np.float32)[3],
                                                     (1, 2, 3, 4), None, b"\1" * 32)])
    path = pkl.store.root / "lfw" / FILE
    assert FILE == "ds_model_dlib_detector_dlib_aligned_normalization_base_expand_0.npz"
    assert deepface_pkl.model_from_filename(FILE) == "Dlib"
    # DeepFace's current datastore (npz: plain arrays, no pickle).
    rows = rows_of(path)
    assert isinstance(rows, list) and len(rows) == len(photos) + 1
    assert all(list(r) == list(deepface_pkl.KEYS) for r in rows)
    by_id = {}
    for r in rows:
        folder, _, file = r["identity"].rpartition("/")
        assert folder.rpartition("/")[0] == str(pkl.store.root / "lfw")
        assert file.startswith("facesearch-") and file.endswith(".jpg")
        assert isinstance(r["embedding"], list) and all(type(x) is float for x in r["embedding"])
        by_id[int(file[11:-4])] = r
    assert set(by_id) == {*photos, odd_face}
    for fid, photo in photos.items():
        face, sha = lfw_faces["faces"][photo]
        r = by_id[fid]
        assert folder_person(r["identity"].split("/")[-2]) == deepface_pkl.person_of(r["identity"])
        assert deepface_pkl.person_of(r["identity"]) == photo.parent.name
        assert r["hash"] == sha.hex()
        assert np.allclose(r["embedding"], face.embedding, atol=1e-6)
        assert (r["target_x"], r["target_y"], r["target_w"], r["target_h"]) == (
            face.box.x, face.box.y, face.box.w, face.box.h)
        assert pkl.face_thumbnail(dom, fid) == face.thumbnail
    odd_folder = by_id[odd_face]["identity"].split("/")[-2]
    assert odd_folder == person_folder("AC/DC 100% .real") == "AC%2FDC 100%25 .real"
    assert folder_person(odd_folder) == "AC/DC 100% .real"
    assert person_folder(".x") == "%2Ex" and folder_person("%2Ex") == ".x"
    # facesearch's own reader takes it as any DeepFace file: every face, person by folder.
    contents = deepface_pkl.read_pkl(path)
    assert contents.format == "npz" and contents.dim == 128 and len(contents.faces) == len(rows)
    assert contents.people == {p.parent.name for p in photos.values()} | {odd_folder}
    # And a second process sees the same gallery (the sidecar holds the rest).
    with BlockingPklGallery(pkl.store.root) as again:
        assert again.list_faces(again.get_domain("lfw")) == pkl.list_faces(dom)
        assert again.list_people(again.get_domain("lfw")) == pkl.list_people(dom)


def test_delete_removes_the_rows_from_the_file(lfw_faces: dict, pkl: BlockingPklGallery) -> None:
    dom, photos = fill(pkl, "deleting", lfw_faces)
    folder = pkl.store.root / "deleting"
    name, other = list(lfw_faces["enroll"])[:2]
    gone = {fid for fid, p in photos.items() if p.parent.name == name}
    face = next(fid for fid, p in photos.items() if p.parent.name == other)
    meta = meta_folder(pkl.store.root, "deleting")

    def stored(e: np.ndarray) -> float:  # the store keeps each embedding re-normalized
        v = np.asarray(e, dtype=np.float32)
        return float((v / float(np.linalg.norm(v)))[0])

    coordinates = [struct.pack("<d", stored(lfw_faces["faces"][photos[f]][0].embedding))
                   for f in [*gone, face]]
    data = (folder / FILE).read_bytes()
    assert all(c in data for c in coordinates)  # npz keeps each float64 as 8 little-endian bytes
    assert pkl.delete_person(dom, name) == len(gone)
    pkl.delete_face(dom, face)
    pkl.purge(dom)
    data = (folder / FILE).read_bytes()
    rows = rows_of(folder / FILE)
    assert len(rows) == len(photos) - len(gone) - 1
    assert not any(c in data for c in coordinates)  # not a trace of their embeddings
    assert not [r for r in rows if f"/{person_folder(name)}/" in r["identity"]]
    assert not any(f"facesearch-{f}.jpg" in r["identity"] for r in rows for f in [*gone, face])
    assert not (meta / THUMBNAILS / f"{face}.jpg").exists()
    # DeepFace's db_path holds its datastore only (no temporary file, no photo-like thumbnail).
    assert [p.name for p in folder.iterdir()] == [FILE]
    assert sorted(p.name for p in meta.iterdir()) == sorted([SIDECAR, THUMBNAILS, LAST_GOOD])
    assert not any(c in (meta / LAST_GOOD / FILE).read_bytes() for c in coordinates)
    assert name not in {p.name for p in pkl.list_people(dom)}
    with pytest.raises(NotFound):
        pkl.delete_face(dom, face)
    query = lfw_faces["faces"][lfw_faces["held_out"][name]][0].embedding
    assert all(m.person != name for m in pkl.search(dom, MODEL, [query], k=5, threshold=2.0)[0])


def test_a_change_of_the_files_from_outside_is_picked_up(lfw_faces: dict,
                                                         pkl: BlockingPklGallery) -> None:
    dom, _ = fill(pkl, "outside", lfw_faces)
    path = pkl.store.root / "outside" / FILE
    name = next(iter(lfw_faces["held_out"]))
    query = lfw_faces["faces"][lfw_faces["held_out"][name]][0].embedding
    assert pkl.search(dom, MODEL, [query], k=1, threshold=0.5)[0][0].person == name

    # Another process (another gallery: its own cache) enrolls a newcomer: seen at the next search.
    newcomer = np.eye(128, dtype=np.float32)[7]
    with BlockingPklGallery(pkl.store.root) as other:
        d = other.get_domain("outside")
        other.add_faces(d, MODEL, [NewFace(other.person_id(d, "Newcomer", create=True), newcomer,
                                           (0, 0, 9, 9), 1.0, b"\2" * 32)])
    assert pkl.search(dom, MODEL, [newcomer], k=1, threshold=0.01)[0][0].person == "Newcomer"

    # The file rewritten in place as DeepFace would: this person's rows dropped, a row of someone
    # new added under DeepFace's own naming.
    before = rows_of(path)
    rows = [r for r in before if f"/{name}/" not in r["identity"]]
    rows.append(deepface_pkl.deepface_row("/srv/db/Ana Novak/1.jpg", "ab" * 20, query, (5, 6, 7, 8)))
    write_in_place(path, rows)
    os.utime(path, ns=(1, 1))  # even with an old mtime: the size or inode tells
    found = pkl.search(dom, MODEL, [query], k=3, threshold=THRESHOLD)[0]
    assert found[0].person == "Ana Novak" and found[0].distance < 1e-5
    assert name not in [m.person for m in found]
    assert name in {p.name for p in pkl.list_people(dom)}  # the person stays, without faces
    assert pkl.get_person(dom, name).faces == 0
    # Noticed, and the file as facesearch last wrote it is kept.
    (rewrite,) = pkl.outside_rewrites(dom)
    assert (rewrite["file"], rewrite["dropped"]) == (FILE, len(before) - len(rows) + 1)
    assert rows_of(Path(rewrite["last_good"])) == before
    ana = pkl.list_faces(dom, "Ana Novak")
    assert [(f.box, f.photo_sha256) for f in ana] == [
        ((5, 6, 7, 8), deepface_pkl.photo_key("/srv/db/Ana Novak/1.jpg", "ab" * 20).hex())]
    # The next write keeps what was taken in, with its origin (export gives it back as it came).
    pkl.set_metadata(dom, "Ana Novak", {"from": "outside"})
    with BlockingPklGallery(pkl.store.root) as other:
        (exported,) = [f for f in other.export_faces(other.get_domain("outside"), MODEL)
                       if f.person == "Ana Novak"]
        assert exported.id == ana[0].id
        assert (exported.source, exported.source_hash) == ("/srv/db/Ana Novak/1.jpg", "ab" * 20)
    sidecar = json.loads((meta_folder(pkl.store.root, "outside") / SIDECAR).read_text())
    assert {f["id"] for f in sidecar["faces"]} == {
        int(r["identity"].rpartition("facesearch-")[2][:-4]) for r in rows_of(path)}
    # After that write the rewrite stays on record, its copy kept apart from the new last good one.
    (kept,) = sidecar["outside_rewrites"]
    assert ".before-" in kept["last_good"] and rows_of(Path(kept["last_good"])) == before
    assert pkl.outside_rewrites(dom) == [kept]


def test_the_domain_model_is_in_its_sidecar(pkl: BlockingPklGallery) -> None:
    """The domain's model is kept in its sidecar; a sidecar written before domains had one gives
    the domain the model most of its faces have, else dlib-resnet-v1. facesearch's own models keep
    their faces in a file of DeepFace's form under their own name, which DeepFace never reads."""
    root = pkl.store.root
    eye = np.eye(128, dtype=np.float32)

    def faces(dom, model: str, n: int) -> None:
        pid = pkl.person_id(dom, "P", create=True)
        pkl.add_faces(dom, model, [NewFace(pid, eye[i], (0, 0, 1, 1), None, bytes([i]) * 32)
                                   for i in range(n)])

    def sidecar(name: str) -> dict:
        return json.loads((meta_folder(root, name) / SIDECAR).read_text())

    mine = pkl.create_domain("mine", model=SFACE_MODEL)
    faces(mine, SFACE_MODEL, 2)
    own = model_file(SFACE_MODEL)
    assert own == "ds_model_sface-2021dec_detector_yunet_aligned_normalization_base_expand_0.npz"
    assert (root / "mine" / own).is_file() and deepface_pkl.model_from_filename(own) is None
    assert sidecar("mine")["domain"]["model"] == SFACE_MODEL
    faces(pkl.create_domain("mixed", model=MODEL), MODEL, 2)
    faces(pkl.get_domain("mixed"), SFACE_MODEL, 1)
    pkl.create_domain("empty", model=SFACE_MODEL)
    for name in ("mine", "mixed", "empty"):  # as the previous release wrote them
        meta = sidecar(name)
        del meta["domain"]["model"]
        (meta_folder(root, name) / SIDECAR).write_text(json.dumps(meta))
    with BlockingPklGallery(root) as old:
        assert {d.name: d.model for d in old.list_domains()} == {
            "mine": SFACE_MODEL, "mixed": MODEL, "empty": MODEL}
        assert old.search(old.get_domain("mine"), SFACE_MODEL, [eye[1]], k=1,
                          threshold=0.1)[0][0].person == "P"
        moved = old.set_domain_model("mixed", SFACE_MODEL)
        assert old.delete_model_faces(moved, MODEL) == 2
    assert sidecar("mixed")["domain"]["model"] == SFACE_MODEL
    assert pkl.get_domain("mixed").model == SFACE_MODEL
    assert pkl.domain_models() == sorted([SFACE_MODEL, MODEL])
    assert pkl.face_models(pkl.get_domain("mixed")) == {SFACE_MODEL: 1}
    assert not (root / "mixed" / FILE).exists()  # no face of dlib's left: no file


@pytest.mark.parametrize("gallery", STORES, indirect=True)
def test_a_transaction_writes_all_or_nothing(gallery) -> None:
    """What import-pkl relies on (``g.conn.transaction()``), in both stores."""
    dom = gallery.create_domain("parity-tx", model=MODEL)
    g = gallery.gallery
    # The model registered first, outside the transaction: Gallery.model() caches the id of a models
    # row it inserted in a transaction that may roll back (a fresh database would then fail).
    gallery.enrolled_hashes(dom, MODEL)

    async def store(fail: bool) -> None:
        async with g.conn.transaction():
            ids = await g.ensure_people(dom, ["A", "B"])
            await g.add_faces(dom, MODEL, [NewFace(ids["A"], np.eye(128, dtype=np.float32)[0],
                                                   (0, 0, 1, 1), None, b"\3" * 32)])
            if fail:
                raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        gallery.run(store(fail=True))
    assert gallery.list_people(dom) == [] and gallery.face_models(dom) == {}
    gallery.run(store(fail=False))
    assert [p.name for p in gallery.list_people(dom)] == ["A", "B"]
    assert gallery.face_models(dom) == {MODEL: 1}
    gallery.delete_domain("parity-tx")


@pytest.mark.parametrize("gallery", STORES, indirect=True)
def test_domains_people_and_keys(gallery) -> None:
    """The rest of the Gallery interface: the same answers and errors from both stores."""
    pkl = gallery
    dom = pkl.create_domain("parity", model=MODEL)
    with pytest.raises(Conflict):
        pkl.create_domain("parity", model=MODEL)
    with pytest.raises(InvalidName):
        pkl.create_domain("no spaces", model=MODEL)
    assert pkl.create_domain("parity", model=MODEL, exist_ok=True) == dom
    ana = pkl.create_person(dom, "Ana", {"team": "blue"})
    with pytest.raises(Conflict):
        pkl.create_person(dom, "Ana")
    pkl.create_person(dom, "Bojan")
    with pytest.raises(Conflict):
        pkl.rename_person(dom, "Bojan", "Ana")
    assert pkl.rename_person(dom, ana.id, "Ana Kovač").name == "Ana Kovač"
    assert [p.name for p in pkl.list_people(dom, search="KOV")] == ["Ana Kovač"]
    assert pkl.count_people(dom) == 2 and pkl.get_person(dom, ana.id).metadata == {"team": "blue"}
    with pytest.raises(NotFound):
        pkl.get_person(dom, "nobody")
    key, secret = pkl.create_key(dom, "app")
    assert pkl.key_domain(secret) == "parity" and pkl.key_domain(secret + "x") is None
    assert [k.id for k in pkl.list_keys(dom)] == [key.id]
    assert pkl.list_keys(dom)[0].last_used_at is not None
    info = pkl.delete_domain("parity")
    assert (info.name, info.people, info.faces) == ("parity", 2, 0)
    assert pkl.key_domain(secret) is None and "parity" not in {d.name for d in pkl.list_domains()}
    with pytest.raises(NotFound):
        pkl.get_domain("parity")


def test_cli_in_pkl_mode_starts_no_database(lfw_faces: dict, tmp_path: Path, cli) -> None:
    """enroll, recognize, export-pkl and import-pkl with FACESEARCH_STORE=pkl (or --store pkl): a
    database URL that nothing answers is never tried, and no PostgreSQL is made in the data
    directory."""
    home = tmp_path / "home"
    env = {"FACESEARCH_HOME": str(home)}
    root = tmp_path / "db_path"
    people = list(lfw_faces["held_out"])[:6]
    for name in people:
        (root / name).mkdir(parents=True)
        for p in lfw_faces["enroll"][name]:
            (root / name / p.name).symlink_to(p)
    nowhere = ("--database-url", UNREACHABLE_DB)
    summary = json.loads(cli(*nowhere, "enroll", root, "--domain", "cli-pkl", "--json",
                             env={**env, "FACESEARCH_STORE": "pkl"}).stdout)
    assert summary["enrolled"] == sum(len(lfw_faces["enroll"][n]) for n in people)
    out = cli(*nowhere, "--store", "pkl", "recognize",
              *[lfw_faces["held_out"][n] for n in people], "--domain", "cli-pkl", "--json", env=env).stdout
    results = [json.loads(line) for line in out.splitlines()]
    first = [r["faces"][0]["matches"][0]["person"] if r["faces"] and r["faces"][0]["matches"] else None
             for r in results]
    assert sum(a == b for a, b in zip(first, people, strict=True)) >= 5, first
    again = json.loads(cli(*nowhere, "--store", "pkl", "enroll", root, "--domain", "cli-pkl", "--json",
                           env=env).stdout)
    assert again["enrolled"] == 0 and again["already_enrolled"] == summary["enrolled"]

    exported = tmp_path / "ds_model_dlib_detector_opencv_aligned_normalization_base_expand_0.pkl"
    cli(*nowhere, "--store", "pkl", "export-pkl", "--domain", "cli-pkl", "--out", exported, env=env)
    imported = json.loads(cli(*nowhere, "--store", "pkl", "import-pkl", exported, "--domain", "copy",
                              "--json", env=env).stdout)
    assert imported["imported"] == summary["enrolled"] and imported["index"] == "none"
    listing = json.loads(cli(*nowhere, "--store", "pkl", "domains", "list", "--json", env=env).stdout)
    assert {(d["name"], d["faces"]) for d in listing} == {("cli-pkl", summary["enrolled"]),
                                                          ("copy", summary["enrolled"])}
    assert (home / "pkl" / "copy" / FILE).is_file()
    assert not (home / "pgdata").exists()


def test_a_bad_store_name_is_a_clear_error(cli, tmp_path: Path) -> None:
    proc = cli("domains", "list", check=False,
               env={"FACESEARCH_HOME": str(tmp_path), "FACESEARCH_STORE": "sqlite"})
    assert proc.returncode == 1 and "FACESEARCH_STORE must be 'pgvector' or 'deepface'" in proc.stderr
    assert not (tmp_path / "pgdata").exists()


def test_concurrent_writers_of_one_domain_lose_nothing(pkl: BlockingPklGallery) -> None:
    """Requests of a service enroll at once (one lock per domain): every face is kept."""
    dom = pkl.create_domain("busy", model=MODEL)
    g = pkl.gallery
    pid = pkl.person_id(dom, "P", create=True)
    rng = np.random.default_rng(1)

    async def enroll(i: int) -> list[int | None]:
        return await g.add_faces(dom, MODEL, [NewFace(pid, rng.normal(size=128).astype(np.float32),
                                                      (0, 0, 1, 1), None, bytes([i]) * 32)])

    async def all_at_once() -> list:
        return await asyncio.gather(*(enroll(i) for i in range(20)))

    ids = [i for r in pkl.run(all_at_once()) for i in r]
    assert sorted(ids) == list(range(1, 21))
    assert len(rows_of(pkl.store.root / "busy" / FILE)) == 20


def test_a_gallery_in_the_old_layout_is_moved_out_of_deepfaces_folder(pkl: BlockingPklGallery) -> None:
    """Before DeepFace-store mode the sidecar and thumbnails were in the domain's folder, where
    DeepFace.find took the thumbnails for photos: they move out on first use, nothing lost."""
    dom = pkl.create_domain("old-layout", model=MODEL)
    pid = pkl.person_id(dom, "P", create=True)
    (fid,) = pkl.add_faces(dom, MODEL, [NewFace(pid, np.eye(128, dtype=np.float32)[5], (0, 0, 9, 9),
                                                None, b"\7" * 32, b"\xff\xd8thumb")])
    root, meta = pkl.store.root, meta_folder(pkl.store.root, "old-layout")
    folder = root / "old-layout"
    os.replace(meta / SIDECAR, folder / SIDECAR)  # as the previous release laid it out
    os.replace(meta / THUMBNAILS, folder / THUMBNAILS)
    with BlockingPklGallery(root) as again:
        d = again.get_domain("old-layout")
        assert [f.id for f in again.list_faces(d)] == [fid]
        assert again.face_thumbnail(d, fid) == b"\xff\xd8thumb"
    assert sorted(p.name for p in folder.iterdir()) == [FILE]
    assert (meta / SIDECAR).is_file() and (meta / THUMBNAILS / f"{fid}.jpg").is_file()
