"""PKL mode (``FACESEARCH_STORE=pkl``): galleries kept in DeepFace's own PKL files, no database.

Layout under ``<home>/pkl``::

    facesearch-store.json          domain and API key counters, the API keys (hashed)
    .lock, .locks/<domain>         lock files (fcntl.flock) shared by every facesearch process
    <domain>/
      ds_model_dlib_detector_dlib_aligned_normalization_base_expand_0.pkl   one file per model
      facesearch-domain.json       what DeepFace's rows cannot hold (see below)
      thumbnails/<face id>.jpg     the faces' small crops

Each model's file is DeepFace's current format (generation 3, what ``deepface_pkl`` reads and
``export-pkl`` writes): a list of dicts with exactly ``identity``, ``hash``, ``embedding``,
``target_x/y/w/h``. The identity of a face is ``<home>/pkl/<domain>/<person>/facesearch-<face
id>.jpg``: the person is the folder, as DeepFace has it, with ``%``, ``/``, ``\\`` and a leading
``.`` percent-encoded so that any valid name is one safe folder and reads back exactly; the face
id is the file name. ``hash`` is DeepFace's hash of an imported photo, else the photo's SHA-256.
The sidecar ``facesearch-domain.json`` holds the rest: the domain's id and counters, the people
(id, name, metadata) and per face its person, model, photo SHA-256, detector score, dates, origin.

The PKL files are authoritative for which faces exist: a face missing from its file is gone, and
a row the sidecar does not know (the file edited or replaced from outside) is taken in, its person
found (or created) by folder name. Every process sees the others' writes: a domain is loaded once
into an L2-normalized float32 matrix per model and reloaded when its files change (inode, mtime,
size). Writes rewrite the files atomically (temporary file + ``os.replace``) under an exclusive
lock; loads take it shared, so a reader never sees one file new and the other old.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import inspect
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

import numpy as np

from .. import deepface_files, deepface_pkl, names
from ..errors import Conflict, FacesearchError, InvalidName, NotFound, StoreError
from ..models import DEEPFACE_PREFIX, DLIB_MODEL, MODEL_DIMS, model_dim
from .gallery import (
    KEY_PREFIX,
    KEY_SHOWN,
    KEY_TOUCH_SECONDS,
    ApiKey,
    Domain,
    DomainInfo,
    ExportedFace,
    FaceRow,
    Match,
    NewFace,
    Person,
    _key_name,
    _no_person,
    _person_key,
    query_vectors,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

STORE_FILE = "facesearch-store.json"
SIDECAR = "facesearch-domain.json"
THUMBNAILS = "thumbnails"
LAST_GOOD = "last-good"
# What DeepFace must never see lives beside the domains' folders, not in them: DeepFace.find walks
# its db_path and takes every photo in it (thumbnails were once taken for people "thumbnails").
META = ".facesearch"
_FORMAT = 1
_OUTSIDE_KEPT = 20  # outside rewrites remembered per domain (doctor reports them)
# DeepFace names a file for the detector that found the faces: ours is dlib's (HOG or MMOD), and an
# imported deepface:<Name> gallery most likely came from DeepFace's default, opencv.
_OUR_DETECTOR = "dlib"
_FACE_FILE = re.compile(r"facesearch-(\d+)\.jpg")
# Similarity matrices of at most this many entries per step of a search (64 MB of float32).
_SEARCH_CHUNK = 16_000_000
# How long a write waits for another process's lock on the same files before giving up.
_LOCK_TIMEOUT = 120.0


def uses_pkl(store: str) -> bool:
    """Whether ``Settings.store`` names DeepFace-store mode ("deepface", or "pkl", its name from
    when DeepFace wrote only PKL); anything but those and pgvector is refused."""
    if store in ("deepface", "pkl"):
        return True
    if store == "pgvector":
        return False
    raise FacesearchError(f"FACESEARCH_STORE must be 'pgvector' or 'deepface' (alias 'pkl'), not "
                          f"{store!r}")


def meta_folder(root: Path, name: str) -> Path:
    """Where a domain's sidecar, thumbnails and last good copies are: outside its db_path."""
    return root / META / name


def _deepface_has(model: str) -> bool:
    """Whether DeepFace has this model (its Dlib is our dlib-resnet-v1)."""
    return model == DLIB_MODEL or model.startswith(DEEPFACE_PREFIX)


def model_file(model: str, fmt: str = "npz") -> str:
    """The file a model's faces are kept in: DeepFace's current name for it, in format ``fmt``.
    facesearch's own models that DeepFace lacks (sface-2021dec, sface-dlib-v1) get a name of the
    same form with facesearch's model name and its YuNet detector, which DeepFace never reads."""
    model_dim(model)
    if fmt not in DATASTORE_SUFFIXES:
        raise FacesearchError(f"FACESEARCH_DEEPFACE_FORMAT must be one of "
                              f"{', '.join(DATASTORE_SUFFIXES)}, not {fmt!r}")
    if not _deepface_has(model):
        return f"ds_model_{model}_detector_yunet_aligned_normalization_base_expand_0.{fmt}"
    return deepface_pkl.export_filename(
        model, detector=_OUR_DETECTOR if deepface_pkl.deepface_model(model) == "Dlib" else "opencv"
    ).removesuffix(".pkl") + "." + fmt


DATASTORE_SUFFIXES = ("npz", "feather", "parquet", "pkl")
# The files of facesearch's own models, by name without the format's suffix.
_OWN_FILES = {model_file(m).removesuffix(".npz"): m for m in MODEL_DIMS if not _deepface_has(m)}


def _file_model(file_name: str) -> str | None:
    """The model whose faces a domain folder's file holds, from its name (None: not ours)."""
    stem, _, suffix = file_name.rpartition(".")
    if suffix not in DATASTORE_SUFFIXES:
        return None
    if stem in _OWN_FILES:
        return _OWN_FILES[stem]
    deepface_name = deepface_pkl.model_from_filename(file_name)
    return None if deepface_name is None else deepface_pkl.facesearch_model(deepface_name)


def person_folder(name: str) -> str:
    """A person's name as one folder name that reads back exactly (:func:`folder_person`)."""
    part = name.replace("%", "%25").replace("/", "%2F").replace("\\", "%5C")
    return "%2E" + part[1:] if part.startswith(".") else part


def folder_person(folder: str) -> str:
    """The person a folder names (the inverse of :func:`person_folder`; a foreign folder that does
    not decode to a valid name is taken as it is)."""
    try:
        return names.person_name(unquote(folder, errors="strict"))
    except (InvalidName, UnicodeDecodeError):
        return names.person_name(folder)


# -- state ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _PersonRec:
    name: str
    metadata: dict
    created_at: datetime


@dataclass(frozen=True)
class _FaceRec:
    person_id: int
    model: str
    box: tuple[int, int, int, int]
    score: float | None
    photo_sha256: bytes
    created_at: datetime
    thumbnail: bool
    source: str | None = None  # imported faces: DeepFace's identity path and hash of the photo
    source_hash: str | None = None


@dataclass(frozen=True)
class _Vectors:
    """One model's faces of a domain: row i of ``matrix`` (L2-normalized) is face ``ids[i]``."""

    ids: np.ndarray  # int64
    matrix: np.ndarray  # float32, (n, dim)


@dataclass(frozen=True)
class _Index:
    """One model's faces grouped by person, for search: rows ``starts[p]:ends[p]`` are person p's."""

    matrix: np.ndarray
    face_ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    person_ids: np.ndarray
    names: list[str]


@dataclass
class _DomainState:
    """A domain as loaded from its files. A snapshot is never changed once published: writers edit
    a :meth:`copy` and publish it."""

    id: int
    name: str
    created_at: datetime
    next_person_id: int
    next_face_id: int
    people: dict[int, _PersonRec]
    faces: dict[int, _FaceRec]
    vectors: dict[str, _Vectors]
    files: dict[str, str]  # model -> its PKL file's name in the domain folder
    signature: tuple = ()
    model: str = DLIB_MODEL  # the domain's model: what it enrolls and searches with
    threshold: float | None = None  # its own recognize threshold; None: the model's
    stale: bool = False  # differs from the files (rows taken in, faces gone): rewrite on next write
    # The model files' SHA-256 and row count as facesearch last wrote them (file name -> record),
    # and the rewrites by something else that dropped rows: found now, and remembered ones.
    written: dict[str, dict[str, Any]] = field(default_factory=dict)
    outside: list[dict[str, Any]] = field(default_factory=list)
    remembered: list[dict[str, Any]] = field(default_factory=list)
    orphan_thumbnails: set[int] = field(default_factory=set)
    by_name: dict[str, int] = field(default_factory=dict)
    _index: dict[str, _Index] = field(default_factory=dict)
    _stats: dict[int, tuple[int, int | None]] | None = None  # person -> (faces, thumbnail face)

    def __post_init__(self) -> None:
        if not self.by_name:
            self.by_name = {p.name: pid for pid, p in self.people.items()}

    def copy(self) -> _DomainState:
        return replace(self, people=dict(self.people), faces=dict(self.faces),
                       vectors=dict(self.vectors), files=dict(self.files),
                       orphan_thumbnails=set(self.orphan_thumbnails), by_name=dict(self.by_name),
                       written=dict(self.written), outside=list(self.outside),
                       remembered=list(self.remembered), _index={}, _stats=None)

    def info(self) -> DomainInfo:
        return DomainInfo(self.name, len(self.people), len(self.faces), self.created_at, self.model,
                          threshold=self.threshold)

    def domain(self) -> Domain:
        return Domain(self.id, self.name, self.model, threshold=self.threshold)

    def stats(self, pid: int) -> tuple[int, int | None]:
        """A person's face count and smallest face id with a thumbnail (cached per snapshot)."""
        if self._stats is None:
            stats: dict[int, tuple[int, int | None]] = {}
            for fid in sorted(self.faces):
                rec = self.faces[fid]
                count, thumb = stats.get(rec.person_id, (0, None))
                stats[rec.person_id] = (count + 1, thumb if thumb is not None or not rec.thumbnail
                                        else fid)
            self._stats = stats
        return self._stats.get(pid, (0, None))

    def person(self, pid: int) -> Person:
        rec = self.people[pid]
        count, thumb = self.stats(pid)
        return Person(pid, rec.name, count, dict(rec.metadata), rec.created_at, thumb)

    def resolve(self, person: int | str) -> int:
        """A person's id, by id or name; NotFound if not in this domain."""
        column, value = _person_key(person)
        pid = value if column == "id" else self.by_name.get(value)  # type: ignore[arg-type]
        if pid not in self.people:
            raise _no_person(self.domain(), column, value)
        return pid  # type: ignore[return-value]

    def index(self, model: str) -> _Index | None:
        """The search index of one model, built on first use."""
        if model not in self._index:
            vectors = self.vectors.get(model)
            if vectors is None or not len(vectors.ids):
                return None
            owners = np.array([self.faces[int(f)].person_id for f in vectors.ids], dtype=np.int64)
            order = np.argsort(owners, kind="stable")
            owners = owners[order]
            starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
            ends = np.r_[starts[1:], len(owners)]
            person_ids = owners[starts]
            self._index[model] = _Index(
                np.ascontiguousarray(vectors.matrix[order]), vectors.ids[order], starts, ends,
                person_ids, [self.people[int(p)].name for p in person_ids])
        return self._index[model]


@dataclass
class _Work:
    """A writer's copy of a domain and what its commit must write."""

    st: _DomainState
    models: set[str] = field(default_factory=set)  # model files to rewrite
    changed: bool = False  # the sidecar must be written
    new_thumbnails: dict[int, bytes] = field(default_factory=dict)
    gone_thumbnails: set[int] = field(default_factory=set)

    def touch(self, models: Iterable[str] = ()) -> None:
        self.changed = True
        self.models.update(models)
        self.st._index.clear()
        self.st._stats = None

    def drop_faces(self, face_ids: set[int]) -> None:
        """Remove faces (and their rows, thumbnails) from the copy."""
        st = self.st
        models = {st.faces[f].model for f in face_ids}
        for fid in face_ids:
            if st.faces.pop(fid).thumbnail:
                self.gone_thumbnails.add(fid)
            self.new_thumbnails.pop(fid, None)
        for model in models:
            v = st.vectors[model]
            keep = ~np.isin(v.ids, np.fromiter(face_ids, dtype=np.int64))
            st.vectors[model] = _Vectors(v.ids[keep], v.matrix[keep])
        self.touch(models)


@dataclass
class _StoreState:
    """``facesearch-store.json``: counters and API keys."""

    next_domain_id: int = 1
    next_key_id: int = 1
    keys: list[dict] = field(default_factory=list)  # id, domain, name, prefix, sha256, dates
    signature: tuple = ()


# -- files ---------------------------------------------------------------------------------------

def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _signature(root: Path, name: str, files: Iterable[str]) -> tuple:
    """What tells a domain's files changed: the folder (files added, removed, replaced), the
    sidecar and each model file (written in place, as DeepFace does)."""
    folder = root / name
    return (_stat(folder), _stat(meta_folder(root, name) / SIDECAR),
            *(_stat(folder / f) for f in sorted(files)))


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def _date(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _unreadable(path: Path, why: object) -> StoreError:
    return StoreError(f"cannot read {path} ({why}): the PKL-mode gallery files were changed by "
                      "something else than facesearch; restore them or delete the domain's folder")


def _load_domain(root: Path, name: str) -> _DomainState | None:
    """A domain from its files (None if it has no sidecar). A pure function of the files, so that
    every process gives rows taken in from outside the same ids."""
    folder = root / name
    files: dict[str, str] = {}
    for path in sorted(folder.glob("ds_model_*.*")):
        model = _file_model(path.name)
        if model is None:
            continue
        if model in files:
            raise StoreError(f"domain {name!r} has two files of model {model}: {files[model]} and "
                             f"{path.name}; keep one")
        files[model] = path.name
    signature = _signature(root, name, files.values())
    sidecar = meta_folder(root, name) / SIDECAR
    try:
        meta = json.loads(sidecar.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise _unreadable(sidecar, exc) from None
    try:
        if meta.get("format") != _FORMAT or meta["domain"]["name"] != name:
            raise ValueError("not this domain's sidecar, or a newer format")
        people = {int(p["id"]): _PersonRec(p["name"], p["metadata"], _date(p["created_at"]))
                  for p in meta["people"]}
        known = {int(f["id"]): _FaceRec(
            int(f["person_id"]), f["model"], (0, 0, 0, 0), f["score"], bytes.fromhex(f["photo_sha256"]),
            _date(f["created_at"]), bool(f["thumbnail"]), f.get("source"), f.get("source_hash"))
            for f in meta["faces"]}
        st = _DomainState(int(meta["domain"]["id"]), name, _date(meta["domain"]["created_at"]),
                          int(meta["next_person_id"]), int(meta["next_face_id"]), people, {}, {}, files,
                          signature, written=dict(meta.get("files", {})),
                          remembered=list(meta.get("outside_rewrites", [])))
        if st.next_face_id <= max(known, default=0) or st.next_person_id <= max(people, default=0):
            raise ValueError("its id counters are behind its ids")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _unreadable(sidecar, exc) from None

    for model, file_name in sorted(files.items()):
        path = folder / file_name
        try:
            data = path.read_bytes()
            contents = deepface_pkl.read_datastore(data, path)
            if _deepface_has(model):
                deepface_pkl.check_dimension(contents, deepface_pkl.deepface_model(model), path)
            elif contents.dim is not None and contents.dim != model_dim(model):
                raise deepface_pkl.InvalidPkl(f"the embeddings have {contents.dim} numbers, "
                                              f"{model} gives {model_dim(model)}")
        except deepface_pkl.InvalidPkl as exc:
            raise _unreadable(path, exc.message) from None
        mtime = datetime.fromtimestamp(os.stat(path).st_mtime, UTC)
        ids, vectors, foreign = [], [], []
        taken: set[tuple[int, bytes]] = set()
        for face in contents.faces:  # the rows facesearch wrote first, then any others
            m = _FACE_FILE.fullmatch(re.split(r"[/\\]", face.identity)[-1])
            fid = int(m.group(1)) if m else 0
            rec = known.get(fid)
            if rec is None or rec.model != model or rec.person_id not in people or fid in st.faces:
                foreign.append(face)
                continue
            st.faces[fid] = replace(rec, box=face.box)
            taken.add((rec.person_id, rec.photo_sha256))
            ids.append(fid)
            vectors.append(face.embedding)
        for face in foreign:
            st.stale = True
            person = folder_person(re.split(r"[/\\]", face.identity)[-2])
            pid = st.by_name.get(person)
            if pid is None:
                pid = st.next_person_id
                st.next_person_id += 1
                st.people[pid] = _PersonRec(person, {}, mtime)
                st.by_name[person] = pid
            if (pid, face.photo_key) in taken:
                continue
            taken.add((pid, face.photo_key))
            fid = st.next_face_id
            st.next_face_id += 1
            st.faces[fid] = _FaceRec(pid, model, face.box, None, face.photo_key, mtime, False,
                                     face.identity, face.source_hash)
            ids.append(fid)
            vectors.append(face.embedding)
        if ids:
            st.vectors[model] = _Vectors(np.array(ids, dtype=np.int64),
                                         np.ascontiguousarray(np.stack(vectors), dtype=np.float32))
    # Sidecars from before domains had a model: the model most of its faces have, else
    # dlib-resnet-v1 (the only one that release enrolled with by default); written at next write.
    model = meta["domain"].get("model")
    if not isinstance(model, str) or not model:
        counts: dict[str, int] = {}
        for f in st.faces.values():
            counts[f.model] = counts.get(f.model, 0) + 1
        model = min(counts, key=lambda m: (-counts[m], m)) if counts else DLIB_MODEL
    st.model = model
    threshold = meta["domain"].get("threshold")
    st.threshold = float(threshold) if isinstance(threshold, int | float) else None
    gone = set(known) - set(st.faces)
    if gone:  # rows removed from a file: those faces are gone
        st.stale = True
        st.orphan_thumbnails = {f for f in gone if known[f].thumbnail}
        _note_outside_rewrites(st, root, {known[f].model for f in gone}, gone, known)
    return st


def _note_outside_rewrites(st: _DomainState, root: Path, models: set[str], gone: set[int],
                           known: dict[int, _FaceRec]) -> None:
    """Rows facesearch wrote are missing from a file it did not write as it is (e.g. DeepFace.find
    rewrote it for the photos it found in the folder): say so, and point to the copy of the file
    as facesearch last wrote it. The faces count as deleted (the files are authoritative)."""
    for model in sorted(models):
        file_name = st.files.get(model) or model_file(model)
        record = st.written.get(file_name)
        dropped = sum(1 for f in gone if known[f].model == model)
        incident = {"file": file_name, "dropped": dropped, "found_at": datetime.now(UTC).isoformat(),
                    "expected_rows": None if record is None else record.get("rows"),
                    "last_good": str(meta_folder(root, st.name) / LAST_GOOD / file_name)}
        st.outside.append(incident)
        log.warning("domain %s: %s was rewritten outside facesearch and lost %d of its faces; the "
                    "copy facesearch last wrote is %s (copy it back to restore them)", st.name,
                    file_name, dropped, incident["last_good"])


def _rows(st: _DomainState, model: str, folder: str) -> list[dict[str, Any]]:
    """A model's faces as DeepFace rows, by face id."""
    v = st.vectors.get(model)
    if v is None:
        return []
    rows = []
    for fid, vector in sorted(zip(v.ids.tolist(), v.matrix, strict=True), key=lambda r: r[0]):
        rec = st.faces[fid]
        identity = os.path.join(folder, person_folder(st.people[rec.person_id].name),
                                f"facesearch-{fid}.jpg")
        rows.append(deepface_pkl.deepface_row(identity, rec.source_hash or rec.photo_sha256.hex(),
                                              vector, rec.box))
    return rows


def _sidecar(st: _DomainState) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "domain": {"id": st.id, "name": st.name, "created_at": st.created_at.isoformat(),
                   "model": st.model, "threshold": st.threshold},
        "next_person_id": st.next_person_id, "next_face_id": st.next_face_id,
        "people": [{"id": pid, "name": p.name, "metadata": p.metadata,
                    "created_at": p.created_at.isoformat()} for pid, p in sorted(st.people.items())],
        "files": st.written, "outside_rewrites": st.remembered,
        "faces": [{"id": fid, "person_id": f.person_id, "model": f.model,
                   "photo_sha256": f.photo_sha256.hex(), "score": f.score,
                   "created_at": f.created_at.isoformat(), "thumbnail": f.thumbnail,
                   "source": f.source, "source_hash": f.source_hash}
                  for fid, f in sorted(st.faces.items())],
    }


def _persist(root: Path, work: _Work, fmt: str) -> tuple:
    """Write what a commit changed: thumbnails, model files (each also as a last good copy, in the
    meta folder), then the sidecar (a crash in between leaves files that load consistently: see
    :func:`_load_domain`). New model files are in format ``fmt``. Returns the new signature."""
    st = work.st
    folder, meta = root / st.name, meta_folder(root, st.name)
    folder.mkdir(parents=True, exist_ok=True)
    (meta / LAST_GOOD).mkdir(parents=True, exist_ok=True)
    if work.new_thumbnails:
        (meta / THUMBNAILS).mkdir(exist_ok=True)
    for fid, data in work.new_thumbnails.items():
        deepface_pkl.write_bytes_atomically(meta / THUMBNAILS / f"{fid}.jpg", data)
    if st.stale and st.outside:  # keep the copy from before the outside rewrite for good
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        for incident in st.outside:
            kept = meta / LAST_GOOD / f"{incident['file']}.before-{stamp}"
            with contextlib.suppress(FileNotFoundError):
                os.replace(meta / LAST_GOOD / incident["file"], kept)
                incident["last_good"] = str(kept)
        st.remembered = (st.remembered + st.outside)[-_OUTSIDE_KEPT:]
        st.outside = []
    models = set(work.models) | (set(st.vectors) | set(st.files) if st.stale else set())
    for model in sorted(models):
        rows = _rows(st, model, str(folder))
        if rows:
            name = st.files.setdefault(model, model_file(model, fmt))
            data = deepface_files.serialize(rows, name.rpartition(".")[2])
            deepface_pkl.write_bytes_atomically(folder / name, data)
            deepface_pkl.write_bytes_atomically(meta / LAST_GOOD / name, data)
            st.written[name] = {"sha256": hashlib.sha256(data).hexdigest(), "rows": len(rows)}
        else:  # no face of this model left: no file
            st.vectors.pop(model, None)
            name = st.files.pop(model, None)
            if name is not None:
                (folder / name).unlink(missing_ok=True)
                st.written.pop(name, None)
    deepface_pkl.write_bytes_atomically(meta / SIDECAR, _json_bytes(_sidecar(st)))
    for fid in work.gone_thumbnails | (st.orphan_thumbnails if st.stale else set()):
        (meta / THUMBNAILS / f"{fid}.jpg").unlink(missing_ok=True)
    st.stale = False
    st.orphan_thumbnails = set()
    return _signature(root, st.name, st.files.values())


def _move_old_layout(root: Path, name: str) -> None:
    """Galleries from before DeepFace-store mode kept the sidecar and thumbnails in the domain's
    folder, where DeepFace.find took the thumbnails for photos: move them out (once)."""
    folder, meta = root / name, meta_folder(root, name)
    if not (folder / SIDECAR).exists() or (meta / SIDECAR).exists():
        return
    meta.mkdir(parents=True, exist_ok=True)
    if (folder / THUMBNAILS).is_dir():
        os.replace(folder / THUMBNAILS, meta / THUMBNAILS)
    os.replace(folder / SIDECAR, meta / SIDECAR)  # last: its presence marks the move as done
    log.info("domain %s: moved its sidecar and thumbnails to %s, out of DeepFace's db_path",
             name, meta)


def _load_store(path: Path) -> _StoreState:
    signature = _stat(path)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return _StoreState(signature=signature)
    except (OSError, ValueError) as exc:
        raise _unreadable(path, exc) from None
    try:
        return _StoreState(int(data["next_domain_id"]), int(data["next_key_id"]), list(data["keys"]),
                           signature)
    except (KeyError, TypeError, ValueError) as exc:
        raise _unreadable(path, exc) from None


async def _flock(path: Path, exclusive: bool) -> int:
    """Take an flock on a lock file: returns its descriptor (close it to release). Polled without
    blocking, so a cancelled request never leaves a thread waiting on the lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    deadline = time.monotonic() + _LOCK_TIMEOUT
    delay = 0.001
    try:
        while True:
            try:
                fcntl.flock(fd, mode)
                return fd
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() > deadline:
                raise StoreError(f"{path.name}: the gallery files are locked by another process")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
    except BaseException:
        os.close(fd)
        raise


# -- the store (shared) and the gallery (per request) --------------------------------------------

class PklStore:
    """The PKL-mode files under one folder, as one process sees them: the loaded domains and the
    locks. Share one per event loop (the service makes one at start-up; a
    :class:`BlockingPklGallery` has its own); other processes are kept in step by file locks.
    It stands where the service keeps its database pool (``Service.db``)."""

    def __init__(self, root: Path, fmt: str = "npz") -> None:
        self.root = Path(root)
        self.format = fmt  # of new model files; existing ones keep theirs
        model_file(DLIB_MODEL, fmt)  # a bad format is refused at start
        self._domains: dict[str, _DomainState] = {}
        self._store: _StoreState | None = None
        self._locks: dict[str, asyncio.Lock] = {}

    async def open(self) -> None:
        """Create the folder (the service's start-up)."""
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)

    async def close(self) -> None:
        """Nothing is held open between calls."""
        self._domains.clear()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[_Probe]:
        """What a readiness probe asks of a pool (``async with db.connection() as c: await
        c.execute("SELECT 1")``): answers while the folder is usable."""
        yield _Probe(self.root)

    # locks: per domain and for the store file; the in-process asyncio lock first, then the flock.

    async def lock(self, key: str, *, exclusive: bool = True) -> Callable[[], None]:
        """Take a lock (``key``: a domain name, or "" for the store file); returns its release."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        await lock.acquire()
        try:
            path = self.root / ".lock" if not key else self.root / ".locks" / key
            fd = await _flock(path, exclusive)
        except BaseException:
            lock.release()
            raise

        def release() -> None:
            os.close(fd)
            lock.release()

        return release

    def _fresh(self, name: str) -> _DomainState | None:
        """The loaded snapshot of a domain if its files have not changed since."""
        st = self._domains.get(name)
        if st is not None and _signature(self.root, name, st.files.values()) == st.signature:
            return st
        return None

    async def domain(self, name: str, *, locked: bool = False) -> _DomainState | None:
        """A domain's current snapshot, (re)loaded if its files changed; None if there is none.
        ``locked``: the caller holds the domain's lock already."""
        st = self._fresh(name)
        if st is not None:
            return st
        cached, busy = self._domains.get(name), self._locks.get(name)
        if not locked and cached is not None and busy is not None and busy.locked():
            # Being written (or reloaded) in this process: read the last published state meanwhile,
            # as a database reads the last committed rows, instead of waiting for the write.
            return cached
        if (self.root / name / SIDECAR).exists():  # the layout before DeepFace-store mode
            release = None if locked else await self.lock(name)
            try:
                await asyncio.to_thread(_move_old_layout, self.root, name)
            finally:
                if release is not None:
                    release()
        if not (meta_folder(self.root, name) / SIDECAR).exists():
            self._domains.pop(name, None)
            return None
        release = None if locked else await self.lock(name, exclusive=False)
        try:
            st = self._fresh(name)
            if st is None:
                st = await asyncio.to_thread(_load_domain, self.root, name)
                if st is None:
                    self._domains.pop(name, None)
                else:
                    self._domains[name] = st
            return st
        finally:
            if release is not None:
                release()

    async def commit(self, work: _Work) -> None:
        """Write a changed copy of a domain and publish it. Caller holds the domain's lock."""
        if not work.changed and not work.models and not work.new_thumbnails:
            return
        work.st.signature = await asyncio.to_thread(_persist, self.root, work, self.format)
        work.st._index.clear()
        work.st._stats = None
        self._domains[work.st.name] = work.st

    def forget(self, name: str) -> None:
        self._domains.pop(name, None)

    async def store_state(self) -> _StoreState:
        """The store file's contents (keys, counters), reread when it changes."""
        path = self.root / STORE_FILE
        if self._store is None or self._store.signature != _stat(path):
            self._store = await asyncio.to_thread(_load_store, path)
        return self._store

    async def save_store(self, state: _StoreState) -> None:
        """Write the store file. Caller holds the store lock."""
        path = self.root / STORE_FILE

        def write() -> tuple:
            self.root.mkdir(parents=True, exist_ok=True)
            deepface_pkl.write_bytes_atomically(path, _json_bytes({
                "format": _FORMAT, "next_domain_id": state.next_domain_id,
                "next_key_id": state.next_key_id, "keys": state.keys}))
            return (_stat(path),)

        state.signature = (await asyncio.to_thread(write))[0]
        self._store = state


class _Probe:
    """The readiness probe's "connection" in PKL mode."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def execute(self, query: str, params: object = None) -> None:
        if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
            raise StoreError(f"the gallery folder {self.root} is missing or not writable")


def _api_key(k: dict) -> ApiKey:
    return ApiKey(k["id"], k["name"], k["prefix"], _date(k["created_at"]),
                  None if k["last_used_at"] is None else _date(k["last_used_at"]))


class PklGallery:
    """The :class:`~facesearch.store.gallery.Gallery` interface on DeepFace PKL files: the same
    methods, arguments, results and errors. Cheap to create: one per request on a shared
    :class:`PklStore`.

    ``transaction()`` groups writes as a database transaction would: the domains written inside
    it are locked until the end, then written once (nothing, if the block raises). Creating or
    deleting a domain and API keys take effect at once."""

    def __init__(self, store: PklStore) -> None:
        self.store = store
        self._tx: dict[str, _Work] | None = None
        self._tx_releases: list[Callable[[], None]] = []

    @property
    def conn(self) -> PklGallery:
        """What callers of a Gallery use its connection for: ``transaction()``."""
        return self

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        if self._tx is not None:  # nested: part of the outer one
            yield
            return
        self._tx, self._tx_releases = {}, []
        try:
            yield
            for work in self._tx.values():
                await self.store.commit(work)
        finally:
            releases, self._tx = self._tx_releases, None
            for release in reversed(releases):
                release()

    async def _view(self, domain: Domain) -> _DomainState:
        """The domain to read: this transaction's copy, or the current snapshot."""
        if self._tx is not None and domain.name in self._tx:
            return self._tx[domain.name].st
        st = await self.store.domain(domain.name)
        if st is None or st.id != domain.id:
            raise NotFound(f"unknown domain {domain.name!r}")
        return st

    @contextlib.asynccontextmanager
    async def _edit(self, domain: Domain) -> AsyncIterator[_Work]:
        """A locked, fresh copy of the domain to change; committed at the end (of the transaction,
        if one is open), discarded if the block raises."""
        if self._tx is not None and domain.name in self._tx:
            yield self._tx[domain.name]
            return
        release: Callable[[], None] | None = await self.store.lock(domain.name)
        try:
            st = await self.store.domain(domain.name, locked=True)
            if st is None or st.id != domain.id:
                raise NotFound(f"unknown domain {domain.name!r}")
            work = _Work(st.copy())
            if self._tx is not None:
                self._tx[domain.name] = work
                self._tx_releases.append(release)  # type: ignore[arg-type]
                release = None
                yield work
                return
            yield work
            await self.store.commit(work)
        finally:
            if release is not None:
                release()

    # -- models ----------------------------------------------------------------------------------

    async def model(self, name: str) -> tuple[int, int]:
        """``(model_id, dim)`` of a model (ids are the models' places in facesearch's list)."""
        dim = model_dim(name)
        return list(MODEL_DIMS).index(name) + 1, dim

    # -- domains ---------------------------------------------------------------------------------

    async def get_domain(self, name: str) -> Domain:
        st = await self.store.domain(names.domain_name(name))
        if st is None:
            raise NotFound(f"unknown domain {name!r}: create it first (or enroll into it)")
        return st.domain()

    async def lock_domain(self, domain: Domain) -> None:
        """Gallery.lock_domain's check (one process, no row to lock): NotFound if it is gone."""
        if await self.store.domain(domain.name) is None:
            raise NotFound(f"domain {domain.name!r} was deleted meanwhile")

    async def create_domain(self, name: str, *, model: str, exist_ok: bool = False) -> Domain:
        """Create a domain of ``model``: its folder and sidecar (no model file until it has faces).
        With ``exist_ok``, an existing domain is returned as it is (with its own model)."""
        name = names.domain_name(name)
        model_dim(model)
        release = await self.store.lock("")
        try:
            st = await self.store.domain(name)
            if st is not None:
                if not exist_ok:
                    raise Conflict(f"domain {name!r} already exists")
                return st.domain()
            state = await self.store.store_state()
            domain_id = state.next_domain_id
            await self.store.save_store(replace(state, next_domain_id=domain_id + 1))
            release_domain = await self.store.lock(name)
            try:
                work = _Work(_DomainState(domain_id, name, datetime.now(UTC), 1, 1, {}, {}, {}, {},
                                          model=model))
                work.touch()
                await self.store.commit(work)
            finally:
                release_domain()
        finally:
            release()
        return Domain(domain_id, name, model)

    async def set_domain_model(self, name: str, model: str) -> Domain:
        """Switch a domain to another model: from now on it enrolls and searches with ``model``.
        Its faces of other models stay (unsearched) until :meth:`delete_model_faces`."""
        model_dim(model)
        domain = await self.get_domain(name)
        async with self._edit(domain) as work:
            if work.st.model != model:
                work.st.threshold = None  # a threshold belongs to one model's distances
            work.st.model = model
            work.touch()
        return work.st.domain()

    async def set_domain_threshold(self, name: str, threshold: float | None) -> Domain:
        """Give a domain its own recognize threshold (None: back to its model's)."""
        domain = await self.get_domain(name)
        async with self._edit(domain) as work:
            work.st.threshold = threshold
            work.touch()
        return work.st.domain()

    async def domain_models(self) -> list[str]:
        """The models of the domains, each once (what the model workers should preload)."""
        return sorted({d.model for d in await self.list_domains()})

    async def list_domains(self) -> list[DomainInfo]:
        found = []
        folders = await asyncio.to_thread(
            lambda: sorted(p.name for p in self.store.root.iterdir() if p.is_dir())
            if self.store.root.is_dir() else [])
        for name in folders:
            if names.DOMAIN_RE.fullmatch(name):
                st = await self.store.domain(name)
                if st is not None:
                    found.append(st.info())
        return found

    async def domain_info(self, name: str) -> DomainInfo:
        st = await self.store.domain(names.domain_name(name))
        if st is None:
            raise NotFound(f"unknown domain {name!r}")
        return st.info()

    async def delete_domain(self, name: str) -> DomainInfo:
        """Delete a domain with all its people, faces and API keys: its folder goes (moved aside
        at once, then removed) with every file of it."""
        domain = await self.get_domain(name)
        release = await self.store.lock("")
        try:
            release_domain = await self.store.lock(domain.name)
            try:
                st = await self.store.domain(domain.name, locked=True)
                if st is None or st.id != domain.id:
                    raise NotFound(f"unknown domain {name!r}")
                state = await self.store.store_state()
                keys = [k for k in state.keys if k["domain"] != domain.name]
                if len(keys) != len(state.keys):
                    await self.store.save_store(replace(state, keys=keys))
                root = self.store.root
                folder, meta = root / domain.name, meta_folder(root, domain.name)
                doomed = root / f".deleted-{domain.name}-{secrets.token_hex(4)}"

                def remove() -> None:
                    os.replace(meta, doomed)  # the sidecar first: the domain is gone at once
                    shutil.rmtree(doomed)
                    if folder.exists():
                        os.replace(folder, doomed)
                        shutil.rmtree(doomed)

                await asyncio.to_thread(remove)
                self.store.forget(domain.name)
            finally:
                release_domain()
        finally:
            release()
        return st.info()

    # -- people ----------------------------------------------------------------------------------

    async def person_id(self, domain: Domain, person: int | str, *, create: bool = False) -> int:
        """The id of a person of this domain, by id or name (NotFound if not in *this* domain);
        with ``create``, a name is created if missing."""
        column, value = _person_key(person)
        st = await self._view(domain)
        if not (create and column == "name") or value in st.by_name:
            return st.resolve(person)
        return (await self.ensure_people(domain, [str(value)]))[str(value)]

    async def ensure_people(self, domain: Domain, people: Iterable[str]) -> dict[str, int]:
        """Ids of these people, creating the missing ones (one write)."""
        wanted = sorted({names.person_name(p) for p in people})
        st = await self._view(domain)
        if all(p in st.by_name for p in wanted):
            return {p: st.by_name[p] for p in wanted}
        async with self._edit(domain) as work:
            for p in wanted:
                if p not in work.st.by_name:
                    self._add_person(work, p, {})
            return {p: work.st.by_name[p] for p in wanted}

    @staticmethod
    def _add_person(work: _Work, name: str, metadata: dict) -> int:
        st = work.st
        pid = st.next_person_id
        st.next_person_id += 1
        st.people[pid] = _PersonRec(name, metadata, datetime.now(UTC))
        st.by_name[name] = pid
        work.touch()
        return pid

    async def create_person(self, domain: Domain, name: str, metadata: dict | None = None) -> Person:
        name = names.person_name(name)
        metadata = json.loads(json.dumps(metadata or {}))  # a JSON object, as the database keeps it
        async with self._edit(domain) as work:
            if name in work.st.by_name:
                raise Conflict(f"domain {domain.name!r} already has a person named {name!r}")
            pid = self._add_person(work, name, metadata)
        return work.st.person(pid)

    async def get_person(self, domain: Domain, person: int | str) -> Person:
        """A person of this domain by id or name; another domain's person is NotFound."""
        st = await self._view(domain)
        return st.person(st.resolve(person))

    @staticmethod
    def _matching(st: _DomainState, search: str | None) -> list[tuple[str, int]]:
        """(name, id) of the people, by name; ``search`` keeps names containing it (any case)."""
        found = sorted((p.name, pid) for pid, p in st.people.items())
        if search is None:
            return found
        needle = search.casefold()
        return [(n, pid) for n, pid in found if needle in n.casefold()]

    async def list_people(self, domain: Domain, *, search: str | None = None, limit: int = 1000,
                          offset: int = 0) -> list[Person]:
        """People by name; ``search`` keeps names containing it (case-insensitive)."""
        st = await self._view(domain)
        return [st.person(pid) for _, pid in self._matching(st, search)[offset:offset + limit]]

    async def count_people(self, domain: Domain, search: str | None = None) -> int:
        """How many people :meth:`list_people` would list without a limit."""
        return len(self._matching(await self._view(domain), search))

    async def rename_person(self, domain: Domain, person: int | str, new: str) -> Person:
        """Rename a person: their faces' identity paths (the folder is the person) are rewritten."""
        new = names.person_name(new)
        async with self._edit(domain) as work:
            st = work.st
            pid = st.resolve(person)
            owner = st.by_name.get(new)
            if owner is not None and owner != pid:
                raise Conflict(f"domain {domain.name!r} already has a person named {new!r}")
            del st.by_name[st.people[pid].name]
            st.people[pid] = replace(st.people[pid], name=new)
            st.by_name[new] = pid
            work.touch({f.model for f in st.faces.values() if f.person_id == pid})
        return work.st.person(pid)

    async def set_metadata(self, domain: Domain, person: int | str, metadata: dict) -> Person:
        """Replace a person's metadata (a JSON object)."""
        metadata = json.loads(json.dumps(metadata))
        async with self._edit(domain) as work:
            pid = work.st.resolve(person)
            work.st.people[pid] = replace(work.st.people[pid], metadata=metadata)
            work.touch()
        return work.st.person(pid)

    async def delete_person(self, domain: Domain, person: int | str) -> int:
        """Delete a person and their faces (their rows leave the files); returns how many faces."""
        async with self._edit(domain) as work:
            st = work.st
            pid = st.resolve(person)
            faces = {fid for fid, f in st.faces.items() if f.person_id == pid}
            if faces:
                work.drop_faces(faces)
            del st.by_name[st.people.pop(pid).name]
            work.touch()
        return len(faces)

    async def purge(self, domain: Domain) -> None:
        """Nothing to do: deleting rewrote the files without the deleted rows already."""
        await self._view(domain)

    # -- faces -----------------------------------------------------------------------------------

    async def enrolled_hashes(self, domain: Domain, model: str) -> set[tuple[int, bytes]]:
        """``(person_id, photo_sha256)`` already enrolled with this model: lets a re-run skip
        photos before they reach the model."""
        model_dim(model)
        st = await self._view(domain)
        return {(f.person_id, f.photo_sha256) for f in st.faces.values() if f.model == model}

    async def add_faces(self, domain: Domain, model: str, faces: Sequence[NewFace], *,
                        progress: Callable[[int], object] | None = None) -> list[int | None]:
        """Store faces (one write). Returns each face's new id, in order; None for a face already
        stored (same person, model and photo), or given twice in ``faces``."""
        if not faces:
            return []
        _, dim = await self.model(model)
        vectors = []
        for f in faces:
            v = np.asarray(f.embedding, dtype=np.float32)
            if v.shape != (dim,) or not np.all(np.isfinite(v)):
                raise ValueError(f"embedding must be {dim} finite numbers for model {model!r}")
            norm = float(np.linalg.norm(v))
            if norm == 0:  # no direction: DeepFace's reader (and cosine distance) refuse it
                raise ValueError(f"embedding of model {model!r} is all zeros")
            vectors.append(v / norm)
        async with self._edit(domain) as work:
            st = work.st
            for f in faces:
                if f.person_id not in st.people:
                    raise NotFound(f"no person with id {f.person_id} in domain {domain.name!r}")
            seen = {(r.person_id, r.photo_sha256) for r in st.faces.values() if r.model == model}
            now = datetime.now(UTC)
            ids: list[int | None] = []
            new_ids, new_vectors = [], []
            for f, v in zip(faces, vectors, strict=True):
                key = (f.person_id, bytes(f.photo_sha256))
                if key in seen:
                    ids.append(None)
                    continue
                seen.add(key)
                fid = st.next_face_id
                st.next_face_id += 1
                st.faces[fid] = _FaceRec(
                    f.person_id, model, tuple(int(b) for b in f.box),  # type: ignore[arg-type]
                    None if f.score is None else float(f.score), key[1], now,
                    f.thumbnail is not None, f.source, f.source_hash)
                if f.thumbnail is not None:
                    work.new_thumbnails[fid] = bytes(f.thumbnail)
                ids.append(fid)
                new_ids.append(fid)
                new_vectors.append(v)
            if new_ids:
                old = st.vectors.get(model)
                add = _Vectors(np.array(new_ids, dtype=np.int64), np.stack(new_vectors))
                st.vectors[model] = add if old is None else _Vectors(
                    np.concatenate([old.ids, add.ids]), np.concatenate([old.matrix, add.matrix]))
                work.touch({model})
        if progress is not None:
            for start in range(0, len(faces), 500):
                progress(min(500, len(faces) - start))
        return ids

    async def list_faces(self, domain: Domain, person: int | str | None = None) -> list[FaceRow]:
        st = await self._view(domain)
        pid = None if person is None else st.resolve(person)
        return [FaceRow(fid, f.person_id, st.people[f.person_id].name, f.model, f.box, f.score,
                        f.photo_sha256.hex(), f.created_at, f.thumbnail)
                for fid, f in sorted(st.faces.items()) if pid is None or f.person_id == pid]

    async def face_thumbnail(self, domain: Domain, face_id: int) -> bytes:
        """The JPEG thumbnail of a face of this domain; NotFound if there is no such face or it
        has no thumbnail (thumbnails off, or enrolled before they existed)."""
        st = await self._view(domain)
        rec = st.faces.get(face_id)
        if rec is None:
            raise NotFound(f"no face {face_id} in domain {domain.name!r}")
        try:
            if rec.thumbnail:
                return await asyncio.to_thread(
                    (meta_folder(self.store.root, domain.name) / THUMBNAILS
                     / f"{int(face_id)}.jpg").read_bytes)
        except FileNotFoundError:
            pass
        raise NotFound(f"face {face_id} has no thumbnail (thumbnails were off when it was enrolled)")

    async def outside_rewrites(self, domain: Domain) -> list[dict[str, Any]]:
        """Rewrites of this domain's files by something other than facesearch that dropped rows
        (e.g. DeepFace.find run over a folder with photos in it): each with the file, the faces
        lost, when it was found and the copy facesearch last wrote (``last_good``)."""
        st = await self._view(domain)
        return [dict(i) for i in st.remembered + st.outside]

    async def face_models(self, domain: Domain) -> dict[str, int]:
        """How many faces of this domain each model has."""
        st = await self._view(domain)
        counts: dict[str, int] = {}
        for f in st.faces.values():
            counts[f.model] = counts.get(f.model, 0) + 1
        return dict(sorted(counts.items()))

    async def delete_model_faces(self, domain: Domain, model: str) -> int:
        """Delete this domain's faces of one model (its file goes); returns how many."""
        model_dim(model)
        async with self._edit(domain) as work:
            doomed = {fid for fid, f in work.st.faces.items() if f.model == model}
            if doomed:
                work.drop_faces(doomed)
        return len(doomed)

    async def export_faces(self, domain: Domain, model: str) -> list[ExportedFace]:
        """Every face of one model in this domain with its embedding, by person then id."""
        model_dim(model)
        st = await self._view(domain)
        v = st.vectors.get(model)
        if v is None:
            return []
        rows = {fid: vector for fid, vector in zip(v.ids.tolist(), v.matrix, strict=True)}
        faces = sorted(rows, key=lambda fid: (st.people[st.faces[fid].person_id].name, fid))
        return [ExportedFace(fid, st.people[st.faces[fid].person_id].name, rows[fid].copy(),
                             st.faces[fid].box, st.faces[fid].photo_sha256.hex(), st.faces[fid].source,
                             st.faces[fid].source_hash) for fid in faces]

    async def delete_face(self, domain: Domain, face_id: int) -> None:
        """Delete one face: its row leaves its file."""
        async with self._edit(domain) as work:
            if face_id not in work.st.faces:
                raise NotFound(f"no face {face_id} in domain {domain.name!r}")
            work.drop_faces({face_id})

    # -- search ----------------------------------------------------------------------------------

    async def search_sql(self, model: str) -> Any:
        raise FacesearchError("PKL mode (FACESEARCH_STORE=pkl) has no SQL: the search is a matrix "
                              "product over the domain's PKL file")

    async def search(self, domain: Domain, model: str, embeddings: Iterable[np.ndarray], *, k: int,
                     threshold: float) -> list[list[Match]]:
        """For each query embedding: up to ``k`` people, best face each, cosine distance (1 -
        cosine similarity, as pgvector's ``<=>``) < threshold, nearest first. Exact: one matrix
        product against the domain's faces of this model."""
        _, dim = await self.model(model)
        queries = query_vectors(embeddings, dim, model)
        if not queries:
            return []
        index = (await self._view(domain)).index(model)
        if index is None:
            return [[] for _ in queries]
        if k < 1:
            return [[] for _ in queries]
        q = np.stack(queries)
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        q = np.divide(q, norms, out=np.zeros_like(q), where=norms > 0)
        step = max(1, _SEARCH_CHUNK // len(index.face_ids))
        results = []
        for start in range(0, len(q), step):
            results += _top_people(index, q[start:start + step], norms[start:start + step, 0] > 0,
                                   k, threshold)
        return results

    # -- API keys --------------------------------------------------------------------------------

    async def create_key(self, domain: Domain, name: str) -> tuple[ApiKey, str]:
        """A new key for this domain: the listing's record and the secret, which is shown once
        and stored only as its SHA-256."""
        name = _key_name(name)
        await self._view(domain)
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        release = await self.store.lock("")
        try:
            if await self.store.domain(domain.name) is None:
                raise NotFound(f"unknown domain {domain.name!r}")
            state = await self.store.store_state()
            key = {"id": state.next_key_id, "domain": domain.name, "name": name,
                   "prefix": secret[:KEY_SHOWN], "sha256": hashlib.sha256(secret.encode()).hexdigest(),
                   "created_at": datetime.now(UTC).isoformat(), "last_used_at": None}
            await self.store.save_store(replace(state, next_key_id=state.next_key_id + 1,
                                                keys=[*state.keys, key]))
        finally:
            release()
        return _api_key(key), secret

    async def list_keys(self, domain: Domain) -> list[ApiKey]:
        state = await self.store.store_state()
        return sorted((_api_key(k) for k in state.keys if k["domain"] == domain.name),
                      key=lambda k: k.id)

    async def revoke_key(self, domain: Domain, key_id: int) -> None:
        """Delete one of this domain's keys (another domain's key id is NotFound)."""
        release = await self.store.lock("")
        try:
            state = await self.store.store_state()
            keys = [k for k in state.keys if not (k["id"] == key_id and k["domain"] == domain.name)]
            if len(keys) == len(state.keys):
                raise NotFound(f"no API key {key_id} in domain {domain.name!r}")
            await self.store.save_store(replace(state, keys=keys))
        finally:
            release()

    async def key_domain(self, secret: str) -> str | None:
        """The name of the domain a key belongs to, None for an unknown or revoked key. Records
        its use, at most once a minute."""
        if not isinstance(secret, str) or not secret.startswith(KEY_PREFIX) or len(secret) > 200:
            return None
        digest = hashlib.sha256(secret.encode()).hexdigest()
        state = await self.store.store_state()
        key = next((k for k in state.keys if secrets.compare_digest(k["sha256"], digest)), None)
        if key is None:
            return None
        now = datetime.now(UTC)
        used = key["last_used_at"]
        if used is None or (now - _date(used)).total_seconds() > KEY_TOUCH_SECONDS:
            release = await self.store.lock("")
            try:
                state = await self.store.store_state()
                keys = [{**k, "last_used_at": now.isoformat()} if k["id"] == key["id"] else k
                        for k in state.keys]
                await self.store.save_store(replace(state, keys=keys))
            finally:
                release()
        return key["domain"]


def _top_people(index: _Index, q: np.ndarray, valid: np.ndarray, k: int,
                threshold: float) -> list[list[Match]]:
    """The search proper for a block of unit queries: one matrix product, the best face of each
    person (a max over each person's rows), then the k nearest people by argpartition."""
    sims = q @ index.matrix.T  # (queries, faces)
    best = np.maximum.reduceat(sims, index.starts, axis=1)  # (queries, people)
    people = best.shape[1]
    kk = min(k, people)
    results = []
    for i in range(len(q)):
        if not valid[i]:  # a zero query has no direction: nothing is near it
            results.append([])
            continue
        row = best[i]
        top = np.argpartition(-row, kk - 1)[:kk] if kk < people else np.arange(people)
        # Nearest first; equal distances by person id, so the order is stable.
        top = top[np.lexsort((index.person_ids[top], -row[top]))]
        matches = []
        for p in top:
            distance = 1.0 - min(max(float(row[p]), -1.0), 1.0)
            if not distance < threshold:
                break
            s, e = index.starts[p], index.ends[p]
            face = int(index.face_ids[s + int(np.argmax(sims[i, s:e]))])
            matches.append(Match(int(index.person_ids[p]), index.names[p], face, distance))
        results.append(matches)
    return results


class BlockingPklGallery:
    """:class:`PklGallery` behind blocking calls (what :class:`~facesearch.store.BlockingGallery`
    is to Gallery), for the CLI and tests: owns its event loop and its :class:`PklStore`."""

    def __init__(self, root: Path, fmt: str = "npz") -> None:
        self.store = PklStore(root, fmt)
        self._runner = asyncio.Runner()
        self.gallery = PklGallery(self.store)

    @property
    def conn(self) -> PklGallery:
        return self.gallery

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on this gallery's loop."""
        return self._runner.get_loop().run_until_complete(coro)

    def close(self) -> None:
        self._runner.close()

    def __enter__(self) -> BlockingPklGallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    if TYPE_CHECKING:
        def __getattr__(self, name: str) -> Callable[..., Any]: ...


def _blocking(name: str) -> Callable[..., Any]:
    method = getattr(PklGallery, name)

    def call(self: BlockingPklGallery, *args: Any, **kwargs: Any) -> Any:
        return self.run(method(self.gallery, *args, **kwargs))

    call.__name__, call.__doc__ = name, method.__doc__
    call.__signature__ = inspect.signature(method)  # type: ignore[attr-defined]
    return call


for _name, _ in inspect.getmembers(PklGallery, inspect.iscoroutinefunction):
    if not _name.startswith("_"):
        setattr(BlockingPklGallery, _name, _blocking(_name))
del _name
