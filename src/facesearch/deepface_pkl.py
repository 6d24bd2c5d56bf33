"""DeepFace's pickled galleries: read them safely and check them (``import-pkl``), write them back
(``export-pkl``).

``DeepFace.find(img, db_path)`` embeds every photo of ``db_path/<person>/<photo>`` once and keeps
the embeddings in a PKL file in ``db_path``. Three generations of it exist:

1. up to about DeepFace 0.0.79: ``representations_<model>.pkl`` (model lowercased, ``-`` -> ``_``),
   a list of ``[identity, embedding]``;
2. about 0.0.80-0.0.85: the same name, rows ``[identity, embedding, x, y, w, h]``;
3. 0.0.86 on: ``ds_<model>_<detector>_v2.pkl``, later
   ``ds_model_<m>_detector_<d>_<aligned|unaligned>_normalization_<n>_expand_<e>.pkl`` (model
   lowercased, ``-`` removed): a list of dicts with the keys of :data:`KEYS`, ``embedding`` None
   for a photo without a face, one row per face of a photo.

``identity`` is the photo's path; the person is its folder. Embeddings are raw (not normalized).
This module needs no database: the CLI stores what :func:`read_pkl` returns.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import math
import os
import pickle
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import names
from .errors import FacesearchError, InvalidName
from .models import DEEPFACE_DIMS, DEEPFACE_PREFIX, DLIB_MODEL, MODEL_DIMS

KEYS = ("identity", "hash", "embedding", "target_x", "target_y", "target_w", "target_h")


class InvalidPkl(FacesearchError):
    """A PKL file we will not import: unsafe, malformed, or not the model it claims."""

    code = "invalid_pkl"
    status = 422


# -- safe unpickling -----------------------------------------------------------------------------

# Unpickling runs code: a pickle names any importable callable (os.system, subprocess.Popen,
# builtins.eval...) and pickle.load calls it. A PKL file from another machine or person is as
# dangerous as a script from them. DeepFace's files hold only lists, dicts, str, int, float, None
# and NumPy arrays/scalars, so the loader resolves nothing but the few harmless constructors those
# need; any other global in the stream is refused before anything is called.
_ALLOWED_GLOBALS = {
    # ndarray.__reduce__ across NumPy 1.x ("numpy.core") and 2.x ("numpy._core"); _frombuffer for
    # pickle protocol 5; scalar for NumPy scalars (e.g. a box coordinate that is an np.int64).
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                   "numpy._core.numeric")
    for name in ("_reconstruct", "scalar", "_frombuffer")
} | {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    # Protocols 0-2 pickle bytes (an array's raw data) as _codecs.encode(text, "latin1").
    ("_codecs", "encode"), ("builtins", "bytearray"), ("builtins", "set"), ("builtins", "frozenset"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise InvalidPkl(
            f"refused to load it: the file asks to run {module}.{name} when unpickled. DeepFace's "
            "PKL files hold only lists, dicts, text, numbers and NumPy arrays; unpickling anything "
            "else can execute code, so this file is not one of them or has been tampered with.")


def safe_load(data: bytes) -> Any:
    """Unpickle plain data only (see :data:`_ALLOWED_GLOBALS`)."""
    try:
        return _SafeUnpickler(io.BytesIO(data)).load()
    except InvalidPkl:
        raise
    except Exception as exc:  # truncated or not a pickle at all
        raise InvalidPkl(f"not a readable pickle file ({type(exc).__name__}: {exc})") from None


# -- models --------------------------------------------------------------------------------------

def _key(name: str) -> str:
    return re.sub(r"[-_\s]", "", name).lower()


_BY_KEY = {_key(name): name for name in DEEPFACE_DIMS}


def facesearch_model(deepface_name: str) -> str:
    """facesearch's model for a DeepFace model: ``Dlib`` is our dlib-resnet-v1, others deepface:X."""
    return DLIB_MODEL if deepface_name == "Dlib" else DEEPFACE_PREFIX + deepface_name


def deepface_model(name: str) -> str:
    """DeepFace's name for a model given as DeepFace names it (any case, with or without ``-``)
    or as facesearch does (``deepface:ArcFace``, ``dlib-resnet-v1``)."""
    if name == DLIB_MODEL:
        return "Dlib"
    bare = name.removeprefix(DEEPFACE_PREFIX)
    found = _BY_KEY.get(_key(bare))
    if found is None or (name.startswith(DEEPFACE_PREFIX) and found == "Dlib"):
        known = ", ".join(DEEPFACE_DIMS)
        raise InvalidPkl(f"unknown model {name!r}: DeepFace's models are {known}")
    return found


def model_from_filename(filename: str) -> str | None:
    """The DeepFace model a PKL file's name says (see the module docstring), or None."""
    stem = re.sub(r"\.(pkl|npz|feather|parquet)$", "", Path(filename).name.lower())
    for prefix in ("ds_model_", "ds_", "representations_"):
        if stem.startswith(prefix):
            tokens = stem[len(prefix):].split("_")
            break
    else:
        return None
    # The model is the first tokens: "vgg_face" (generation 1) is two, "vggface" (3) one.
    for n in range(1, len(tokens) + 1):
        if "".join(tokens[:n]) in _BY_KEY:
            return _BY_KEY["".join(tokens[:n])]
    return None


def resolve_model(path: Path, option: str | None) -> str:
    """The DeepFace model of a file: its name's and ``--model``'s, which must agree if both given."""
    from_name = model_from_filename(path.name)
    from_option = None if option is None else deepface_model(option)
    if from_name and from_option and from_name != from_option:
        raise InvalidPkl(f"{path.name} is named for DeepFace's {from_name} model but --model says "
                         f"{from_option}: rename the file or drop --model")
    model = from_option or from_name
    if model is None:
        raise InvalidPkl(f"cannot tell from its name which DeepFace model made {path.name}: give "
                         f"--model (one of {', '.join(DEEPFACE_DIMS)})")
    return model


def export_filename(model: str, detector: str = "opencv") -> str:
    """The name DeepFace (generation 3, current form) looks for in db_path, with its defaults."""
    return (f"ds_model_{_key(deepface_model(model))}_detector_{detector}_aligned_normalization_base"
            f"_expand_0.pkl")


# -- reading -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PklFace:
    """One face to import: the largest of its photo."""

    person: str
    identity: str
    embedding: np.ndarray  # float32, L2-normalized
    box: tuple[int, int, int, int]
    photo_key: bytes  # 32 bytes: the store's photo_sha256, see photo_key()
    source_hash: str | None  # DeepFace's own hash of the photo (generation 3)


@dataclass
class PklContents:
    generation: int
    rows: int
    faces: list[PklFace]
    dim: int | None  # None when no row has a face
    no_face: int = 0  # rows whose embedding is None (DeepFace found no face in the photo)
    several_faces: int = 0  # photos with several face rows: the largest is imported
    other_faces: int = 0  # the rows of those photos not imported
    format: str = "pkl"  # the file's format, from its bytes (see deepface_files.sniff)

    @property
    def people(self) -> set[str]:
        return {f.person for f in self.faces}


def photo_key(identity: str, deepface_hash: str | None) -> bytes:
    """The 32-byte photo key the store dedupes on (with person and model).

    Generation 3 rows carry DeepFace's hash of the photo. DeepFace computes it as a SHA-1 hex
    digest, at first of the file's bytes, later of "size-ctime-mtime" (serengil/deepface:
    deepface/commons/package_utils.py ``find_hash_of_file``, then commons/image_utils.py
    ``find_image_hash``), so it is not a SHA-256 of the photo: its own SHA-256 is the key. A
    64-hex-digit hash is taken as the SHA-256 of the photo it is (what ``facesearch enroll`` keys
    on). Generations 1-2 have no hash: the key is the SHA-256 of the identity path.
    """
    if deepface_hash is None:
        return hashlib.sha256(identity.encode("utf-8", "surrogatepass")).digest()
    if len(deepface_hash) == 64 and re.fullmatch(r"[0-9a-fA-F]{64}", deepface_hash):
        return bytes.fromhex(deepface_hash)
    return hashlib.sha256(deepface_hash.encode("utf-8", "surrogatepass")).digest()


def person_of(identity: str) -> str:
    """The person of a photo: its folder's name (``db_path/<person>/<photo>``), / or \\ paths."""
    parts = [p for p in re.split(r"[/\\]", identity) if p]
    if len(parts) < 2:
        raise ValueError(f"identity {identity!r} has no folder: DeepFace's db_path holds "
                         "<person>/<photo> and the folder is the person")
    return names.person_name(parts[-2])


def _row_error(index: int, row: Any, message: str) -> InvalidPkl:
    identity = None
    if isinstance(row, dict):
        identity = row.get("identity")
    elif isinstance(row, list | tuple) and row:
        identity = row[0]
    where = f"row {index}" + (f" ({identity})" if isinstance(identity, str) else "")
    return InvalidPkl(f"{where}: {message}; nothing was imported")


def _box(row: Any, values: tuple[Any, ...], index: int) -> tuple[int, int, int, int]:
    if all(type(v) is int for v in values):
        return values  # type: ignore[return-value]
    box = []
    for value in values:
        try:
            number = float(value)  # int, float, or a NumPy scalar; not text
            if isinstance(value, str | bytes | bool) or not math.isfinite(number):
                raise ValueError
        except (TypeError, ValueError):
            raise _row_error(index, row, f"face box value {value!r} is not a number") from None
        box.append(round(number))
    return box[0], box[1], box[2], box[3]


def _matrix(embeddings: list[Any], rows: list[tuple[Any, ...]]) -> np.ndarray:
    """The embeddings as one float64 matrix. NumPy infers the type, so text or None anywhere makes
    it non-numeric; then the first offending row is found and named."""
    try:
        matrix = np.array(embeddings)
        if matrix.ndim == 2 and matrix.dtype.kind in "iuf":
            return matrix.astype(np.float64, copy=False)  # lists of floats are float64 already
    except (TypeError, ValueError):
        pass
    for (i, row, *_), embedding in zip(rows, embeddings, strict=True):
        vector = np.asarray(embedding, dtype=object)
        if vector.ndim != 1 or not all(
                isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)
                for x in vector):
            raise _row_error(i, row, "the embedding is not a list of numbers")
    raise InvalidPkl("the embeddings are not lists of numbers; nothing was imported")


def read_pkl(path: Path) -> PklContents:
    """Read and check a DeepFace datastore (pkl, npz, feather or parquet: told by its bytes)
    completely (nothing stored yet): every row must be the same generation and every face the
    same dimension, with finite numbers not all zero."""
    return read_datastore(path.read_bytes(), path)


def read_datastore(raw: bytes, path: Path) -> PklContents:
    """:func:`read_pkl` of a file's bytes already read (``path`` names it in messages)."""
    # The cyclic GC would scan the growing rows again and again while millions of floats and
    # thousands of lists are made (~40 % of the unpickling time of a 25,000-row file); the rows
    # hold no cycles.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _read_datastore(raw, path)
    finally:
        if enabled:
            gc.enable()


def _read_datastore(raw: bytes, path: Path) -> PklContents:
    from . import deepface_files

    fmt = deepface_files.sniff(raw)
    if fmt != "pkl":
        contents = _contents(deepface_files.read_rows(raw, fmt, path.name), path)
        contents.format = fmt
        return contents
    try:
        data = safe_load(raw)
    except InvalidPkl as exc:
        raise InvalidPkl(f"{path.name}: {exc.message}. DeepFace's datastores are pkl (up to "
                         "DeepFace 0.0.101), npz, feather or parquet (0.0.102 on); this file's "
                         "bytes are none of them") from None
    del raw
    if not isinstance(data, list):
        raise InvalidPkl(f"{path.name} holds a {type(data).__name__}, not DeepFace's list of rows")
    return _contents(data, path)


def _contents(data: list[Any], path: Path) -> PklContents:
    """Check every row (see :func:`read_pkl`) and keep one face per person and photo."""
    contents = PklContents(generation=0, rows=len(data), faces=[], dim=None)
    rows = []  # (index, row, identity, hash, box, person) of the rows with a face
    embeddings: list[Any] = []
    person_by_folder: dict[str, str] = {}
    for i, row in enumerate(data):
        if isinstance(row, dict):
            gen = 3
            missing = [k for k in KEYS if k not in row]
            if missing:
                raise _row_error(i, row, f"missing key(s) {', '.join(missing)}")
            identity, deepface_hash, embedding = row["identity"], row["hash"], row["embedding"]
            if not isinstance(deepface_hash, str) or not deepface_hash:
                raise _row_error(i, row, f"hash {deepface_hash!r} is not DeepFace's hex digest")
            box_values: tuple[Any, ...] = (row["target_x"], row["target_y"], row["target_w"],
                                           row["target_h"])
        elif isinstance(row, list | tuple) and len(row) in (2, 6):
            gen = 1 if len(row) == 2 else 2
            identity, embedding, deepface_hash = row[0], row[1], None
            box_values = tuple(row[2:]) if gen == 2 else (0, 0, 0, 0)
        else:
            raise _row_error(i, row, "not a DeepFace row (a dict with keys " + ", ".join(KEYS)
                             + ", or a list [identity, embedding] or [identity, embedding, x, y, w, h])")
        if contents.generation and gen != contents.generation:
            raise _row_error(i, row, f"a generation-{gen} row in a generation-{contents.generation} file")
        contents.generation = gen
        if not isinstance(identity, str) or not identity:
            raise _row_error(i, row, f"identity {identity!r} is not a photo path")
        box = _box(row, box_values, i)
        if embedding is None:
            contents.no_face += 1
            continue
        if not isinstance(embedding, list | tuple | np.ndarray) or not len(embedding):
            raise _row_error(i, row, "the embedding is not a list of numbers")
        if contents.dim is None:
            contents.dim = len(embedding)
        elif len(embedding) != contents.dim:
            raise _row_error(i, row, f"the embedding has {len(embedding)} numbers, earlier rows "
                                     f"{contents.dim}")
        folder = identity.replace("\\", "/").rstrip("/").rpartition("/")[0]
        if folder not in person_by_folder:
            try:
                person_by_folder[folder] = person_of(identity)
            except (ValueError, InvalidName) as exc:
                raise _row_error(i, row, str(exc)) from None
        rows.append((i, row, identity, deepface_hash, box, person_by_folder[folder]))
        embeddings.append(embedding)
    contents.generation = contents.generation or 3
    if not embeddings:
        return contents

    matrix = _matrix(embeddings, rows)
    del embeddings
    finite = np.isfinite(matrix).all(axis=1)
    # Scale by the largest value first, so huge-but-finite embeddings do not overflow the norm.
    # (From each row's extremes: no temporary copies of a matrix that can be 100 MB.)
    peak = np.where(finite, np.maximum(matrix.max(axis=1), -matrix.min(axis=1)), 0)
    for bad, message in ((~finite, "the embedding has NaN or infinite numbers"),
                         (peak == 0, "the embedding is all zeros (no direction to compare)")):
        if bad.any():
            i, row = rows[int(np.argmax(bad))][:2]
            raise _row_error(i, row, message)
    matrix /= peak[:, None]
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    unit = matrix.astype(np.float32)

    # One face per (person, photo), as the store keeps it: a photo with several faces gives the
    # largest (what `facesearch enroll` keeps), the others are counted.
    best: dict[tuple[str, bytes], PklFace] = {}
    several: set[tuple[str, bytes]] = set()
    for (_, _, identity, deepface_hash, box, person), vector in zip(rows, unit, strict=True):
        face = PklFace(person, identity, vector, box, photo_key(identity, deepface_hash),
                       deepface_hash)
        key = (person, face.photo_key)
        kept = best.get(key)
        if kept is not None:
            several.add(key)
            contents.other_faces += 1
            if box[2] * box[3] <= kept.box[2] * kept.box[3]:
                continue
        best[key] = face
    contents.faces = list(best.values())
    contents.several_faces = len(several)
    return contents


def check_dimension(contents: PklContents, model: str, path: Path) -> None:
    """The rows must have the model's dimension: a mismatch means a wrong name or --model."""
    dim = MODEL_DIMS[facesearch_model(model)]
    if contents.dim is not None and contents.dim != dim:
        hint = (" (2622 numbers: VGG-Face embeddings from DeepFace before its 4096-d VGG-Face, "
                "which facesearch does not import)" if model == "VGG-Face" and contents.dim == 2622
                else "")
        raise InvalidPkl(f"{path.name}: the embeddings have {contents.dim} numbers but DeepFace's "
                         f"{model} gives {dim}{hint}: the file name or --model names the wrong "
                         "model; nothing was imported")


# -- writing -------------------------------------------------------------------------------------

def deepface_row(identity: str, photo_hash: str, embedding: np.ndarray,
                 box: tuple[int, int, int, int]) -> dict[str, Any]:
    """A generation-3 row, in plain Python types only (no NumPy needed to read it back)."""
    return {"identity": identity, "hash": photo_hash,
            "embedding": embedding.astype(np.float64).tolist(),
            "target_x": int(box[0]), "target_y": int(box[1]), "target_w": int(box[2]),
            "target_h": int(box[3])}


def path_part(person: str) -> str:
    """A person's name as one folder name (no separators, not . or ..)."""
    part = person.replace("/", "_").replace("\\", "_")
    return "_" + part if part in (".", "..") else part


def write_atomically(path: Path, rows: list[dict[str, Any]]) -> None:
    """Pickle rows to ``path`` atomically (:func:`write_bytes_atomically`). Protocol 4: every
    Python DeepFace runs on reads it."""
    write_bytes_atomically(path, pickle.dumps(rows, protocol=4))


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder and os.replace, so a reader (or a crash)
    never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
