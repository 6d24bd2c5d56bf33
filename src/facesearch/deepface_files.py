"""DeepFace's datastore files in every format: which format a file is (from its bytes, never its
name), reading the array formats safely, writing each, and the file names DeepFace looks for.

DeepFace keeps the embeddings of ``db_path`` in one file whose rows (or columns) are always
``identity, hash, embedding, target_x, target_y, target_w, target_h``:

============  =========================================================  =====================
DeepFace      file name in db_path                                       format
============  =========================================================  =====================
<= 0.0.79     ``representations_<model>.pkl``, rows [identity, emb]      pickle (generation 1)
0.0.80-0.0.85 the same, rows [identity, emb, x, y, w, h]                 pickle (generation 2)
0.0.86-0.0.89 ``ds_<model>_<detector>_v2.pkl``, rows as dicts            pickle (generation 3)
0.0.90-0.0.101 ``ds_model_<m>_detector_<d>_<aligned>_normalization_<n>    pickle (generation 3)
              _expand_<e>.pkl``
>= 0.0.102    the same name ending ``.npz`` (default), ``.feather`` or   npz; Arrow (pyarrow)
              ``.parquet``; ``.pkl`` refused
============  =========================================================  =====================

(checked in each version's ``modules/recognition.py``). npz is read with ``allow_pickle=False``
after every member's header is checked, so no code can run and no declared shape is believed;
feather and parquet are read with pyarrow (the ``arrow`` extra) into plain columns, never through
pandas or pickled extension types.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from .deepface_pkl import KEYS, InvalidPkl, deepface_model

FORMATS = ("npz", "feather", "parquet", "pkl")
ARROW_FORMATS = ("feather", "parquet")
CURRENT_DEEPFACE = "0.0.103"  # the version the ``deepface`` extra pins
_STRINGS, _INTS = ("identity", "hash"), ("target_x", "target_y", "target_w", "target_h")
# A zip member is decompressed into memory: refuse what inflates beyond reason (a zip bomb).
MAX_NPZ_BYTES = 8 << 30
MAX_INFLATION = 50


# -- which DeepFace, which file ------------------------------------------------------------------

def parse_version(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.strip().split("."))
    except ValueError:
        raise InvalidPkl(f"--deepface-version {version!r} is not a version such as "
                         f"{CURRENT_DEEPFACE}") from None


def formats_read_by(version: str) -> tuple[str, ...]:
    """The formats DeepFace ``version`` reads, its default first."""
    return ("npz", "feather", "parquet") if parse_version(version) >= (0, 0, 102) else ("pkl",)


def generation_read_by(version: str) -> int:
    v = parse_version(version)
    return 1 if v <= (0, 0, 79) else 2 if v <= (0, 0, 85) else 3


@dataclass(frozen=True)
class DatastoreName:
    """What a datastore's file name says: DeepFace builds it from ``find()``'s arguments."""

    model: str  # DeepFace's model name, e.g. "ArcFace"
    detector: str | None = "opencv"  # None: a generation 1-2 name, which has no detector
    aligned: bool = True
    normalization: str = "base"
    expand: int = 0
    format: str = "npz"

    def filename(self, version: str = CURRENT_DEEPFACE) -> str:
        """The name DeepFace ``version`` looks for in db_path."""
        v = parse_version(version)
        if v <= (0, 0, 85):
            return f"representations_{self.model}.pkl".replace("-", "_").lower()
        if v <= (0, 0, 89):
            return f"ds_{self.model}_{self.detector or 'opencv'}_v2.pkl".replace("-", "").lower()
        parts = ["ds", "model", self.model, "detector", self.detector or "opencv",
                 "aligned" if self.aligned else "unaligned", "normalization", self.normalization,
                 "expand", str(self.expand)]
        return "_".join(parts).replace("-", "").lower() + "." + self.format


_CURRENT = re.compile(r"ds_model_(?P<model>.+?)_detector_(?P<detector>.+)_(?P<aligned>aligned|unaligned)"
                      r"_normalization_(?P<normalization>.+)_expand_(?P<expand>-?\d+)"
                      r"\.(?P<format>pkl|npz|feather|parquet)")
_V2 = re.compile(r"ds_(?P<model>.+)_(?P<detector>[^_]+)_v2\.pkl")


def parse_filename(filename: str) -> DatastoreName | None:
    """The options a DeepFace datastore's name records, or None for a name DeepFace never makes.
    (The model part is lowercased without '-'; :func:`deepface_model` maps it back.)"""
    from .deepface_pkl import model_from_filename

    name = filename.lower()
    if m := _CURRENT.fullmatch(name):
        model = _model_or_none(m["model"])
        if model is None:
            return None
        return DatastoreName(model, m["detector"], m["aligned"] == "aligned", m["normalization"],
                             int(m["expand"]), m["format"])
    if m := _V2.fullmatch(name):
        model = _model_or_none(m["model"])
        return None if model is None else DatastoreName(model, m["detector"], format="pkl")
    model = model_from_filename(name) if name.startswith("representations_") else None
    return None if model is None else DatastoreName(model, None, format="pkl")


def _model_or_none(token: str) -> str | None:
    try:
        return deepface_model(token)
    except InvalidPkl:
        return None


def sniff(data: bytes) -> str:
    """The datastore format of a file's bytes (its name may lie): npz is a zip archive, feather
    an Arrow IPC file, parquet starts with PAR1; anything else is tried as a pickle."""
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "npz"
    if data[:6] == b"ARROW1" or data[:4] == b"FEA1":
        return "feather"
    if data[:4] == b"PAR1":
        return "parquet"
    return "pkl"


# -- reading -------------------------------------------------------------------------------------

def read_rows(data: bytes, fmt: str, name: str) -> list[dict[str, Any]]:
    """The rows of an npz / feather / parquet datastore as DeepFace's dicts (``embedding`` None
    for a photo without a face), every column's type checked first."""
    columns = _read_npz(data, name) if fmt == "npz" else _read_arrow(data, fmt, name)
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise InvalidPkl(f"{name}: its columns have different lengths ({sorted(lengths)}); nothing "
                         "was imported")
    return [dict(zip(KEYS, row, strict=True)) for row in zip(*(columns[k] for k in KEYS),
                                                              strict=True)]


def _read_npz(data: bytes, name: str) -> dict[str, list[Any]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = {i.filename.removesuffix(".npy"): i for i in archive.infolist()}
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise InvalidPkl(f"{name}: not a readable npz file ({exc}); nothing was imported") from None
    missing = [k for k in (*KEYS, "has_embedding") if k not in members]
    if missing:
        raise InvalidPkl(f"{name}: not a DeepFace npz datastore: no column(s) {', '.join(missing)}")
    wanted = [members[k] for k in (*KEYS, "has_embedding")]
    inflated = sum(i.file_size for i in wanted)
    if inflated > MAX_NPZ_BYTES or inflated > MAX_INFLATION * max(len(data), 1 << 20):
        raise InvalidPkl(f"{name}: its columns would take {inflated / 2**30:.1f} GiB unpacked from a "
                         f"{len(data) / 2**20:.1f} MiB file; refused")
    arrays = {}
    for key, info in zip((*KEYS, "has_embedding"), wanted, strict=True):
        try:
            with archive.open(info) as f:
                shape, dtype = _npy_header(f)
            _check_npz_column(key, shape, dtype, info.file_size, name)
            with archive.open(info) as f:  # read_array reads the header again
                arrays[key] = np.lib.format.read_array(f, allow_pickle=False)
        except InvalidPkl:
            raise
        except Exception as exc:  # truncated, or a header that lies about the data
            raise InvalidPkl(f"{name}: column {key} is unreadable ({type(exc).__name__}: {exc}); "
                             "nothing was imported") from None
    n = len(arrays["identity"])
    if arrays["embedding"].shape[0] != n:
        raise InvalidPkl(f"{name}: {arrays['embedding'].shape[0]} embeddings for {n} rows")
    columns: dict[str, list[Any]] = {k: arrays[k].tolist() for k in (*_STRINGS, *_INTS)}
    embeddings = arrays["embedding"]
    columns["embedding"] = [row if ok else None for row, ok
                            in zip(embeddings, arrays["has_embedding"].tolist(), strict=True)]
    return columns


def _npy_header(f: Any) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    else:  # 2.0 and 3.0 share the layout; 3.0's header may be UTF-8, which latin-1 also decodes
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    return shape, dtype


def _check_npz_column(key: str, shape: tuple[int, ...], dtype: np.dtype, size: int, name: str) -> None:
    kinds = {"embedding": "f", "has_embedding": "b", "identity": "U", "hash": "U"}
    kind = kinds.get(key, "iu")
    ndim = 2 if key == "embedding" else 1
    if dtype.hasobject or dtype.kind not in kind or len(shape) != ndim:
        raise InvalidPkl(f"{name}: column {key} is {dtype} with shape {shape}; DeepFace writes "
                         f"{'a float matrix' if ndim == 2 else 'a 1-D array'} of "
                         f"{ {'f': 'floats', 'b': 'booleans', 'U': 'text'}.get(kind, 'integers')}")
    if int(np.prod(shape, dtype=object)) * dtype.itemsize > size:
        raise InvalidPkl(f"{name}: column {key} declares shape {shape}, more than the file holds")


def _read_arrow(data: bytes, fmt: str, name: str) -> dict[str, list[Any]]:
    try:
        import pyarrow as pa
        from pyarrow import feather, parquet
    except ModuleNotFoundError:
        raise InvalidPkl(f"{name} is a {fmt} datastore: reading it needs pyarrow. Install "
                         "facesearch[arrow] (pip install 'facesearch[arrow]')") from None
    try:
        source = pa.BufferReader(data)
        table = feather.read_table(source) if fmt == "feather" else parquet.read_table(source)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError on truncated or corrupt files
        raise InvalidPkl(f"{name}: not a readable {fmt} file ({exc}); nothing was imported") from None
    missing = [k for k in KEYS if k not in table.column_names]
    if missing:
        raise InvalidPkl(f"{name}: not a DeepFace {fmt} datastore: no column(s) {', '.join(missing)}")
    types = pa.types
    for key in KEYS:
        t = table.schema.field(key).type
        ok = (types.is_string(t) or types.is_large_string(t) if key in _STRINGS
              else types.is_integer(t) if key in _INTS
              else (types.is_list(t) or types.is_large_list(t) or types.is_fixed_size_list(t))
              and types.is_floating(t.value_type))
        if not ok:
            raise InvalidPkl(f"{name}: column {key} is {t}, not what DeepFace writes")
    columns: dict[str, list[Any]] = {k: table.column(k).to_pylist() for k in (*_STRINGS, *_INTS)}
    columns["embedding"] = table.column("embedding").to_pylist()
    return columns


# -- writing -------------------------------------------------------------------------------------

def serialize(rows: list[dict[str, Any]], fmt: str) -> bytes:
    """DeepFace's own bytes for ``rows`` in ``fmt`` (as its ``__serialize_npz`` /
    ``__serialize_arrow`` write them: float64 embeddings, int64 boxes)."""
    if fmt == "pkl":
        import pickle

        return pickle.dumps(rows, protocol=4)
    if fmt == "npz":
        has = np.array([r["embedding"] is not None for r in rows], dtype=bool)
        valid = [r["embedding"] for r in rows if r["embedding"] is not None]
        matrix = np.zeros((len(rows), len(valid[0]) if valid else 0), dtype=np.float64)
        if valid:
            matrix[has] = np.array(valid, dtype=np.float64)
        arrays: dict[str, np.ndarray] = {"embedding": matrix, "has_embedding": has}
        for key in _STRINGS:
            arrays[key] = np.array([r[key] for r in rows], dtype=np.str_)
        for key in _INTS:
            arrays[key] = np.array([r[key] for r in rows], dtype=np.int64)
        sink = io.BytesIO()
        np.savez(sink, **arrays)  # type: ignore[arg-type]
        return sink.getvalue()
    try:
        import pyarrow as pa
        from pyarrow import feather, parquet
    except ModuleNotFoundError:
        raise InvalidPkl(f"writing {fmt} needs pyarrow: pip install 'facesearch[arrow]'") from None
    schema = pa.schema([(k, pa.string()) for k in _STRINGS] + [("embedding", pa.list_(pa.float64()))]
                       + [(k, pa.int64()) for k in _INTS])
    table = pa.Table.from_pydict({k: [r[k] for r in rows] for k in schema.names}, schema=schema)
    sink = pa.BufferOutputStream()
    if fmt == "feather":
        feather.write_feather(table, sink, compression="uncompressed")
    else:
        parquet.write_table(table, sink)
    return sink.getvalue().to_pybytes()
