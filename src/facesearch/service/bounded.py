"""Bounds on what the JSON API accepts: values PostgreSQL can store, metadata of a bounded size and
shape, and ids within PostgreSQL's bigint.

PostgreSQL's text and jsonb cannot hold U+0000, a lone UTF-16 surrogate (not UTF-8 at all), NaN or
an infinity (Python's JSON reader takes ``NaN``, ``Infinity`` and ``1e400`` for floats): each is
refused here as a 422 naming the field, rather than failing in the database as a 500.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import AfterValidator

# PostgreSQL's bigint: ids and offsets beyond it cannot be compared with a stored one.
MAX_BIGINT = 2**63 - 1
# A person's metadata: nested at most this deep, with at most this many keys (all levels).
METADATA_DEPTH = 8
METADATA_KEYS = 256
# Bytes of metadata allowed: set from FACESEARCH_MAX_METADATA_KB when the app is created.
_limits = {"metadata_bytes": 16 * 1024}


def set_metadata_limit(max_bytes: int) -> None:
    _limits["metadata_bytes"] = max_bytes


def storable_text(value: str, where: str = "") -> str:
    """``value`` if PostgreSQL's text can hold it; else ValueError saying what is wrong, and where."""
    at = f" (at {where})" if where else ""
    if "\x00" in value:
        raise ValueError(f"text cannot contain the NUL character U+0000{at}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text cannot contain a lone surrogate U+{ord(value[exc.start]):04X}{at}"
                         ) from None
    return value


def _check(value: Any, where: str, depth: int, keys: list[int]) -> None:
    """Check one value at ``depth`` (objects and arrays count, the top object is 1)."""
    if isinstance(value, dict | list) and depth > METADATA_DEPTH:
        raise ValueError(f"nested deeper than {METADATA_DEPTH} levels (at {where})")
    if isinstance(value, str):
        storable_text(value, where)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"numbers must be finite (NaN, Infinity and numbers out of range such as "
                             f"1e400 cannot be stored) (at {where})")
    elif isinstance(value, dict):
        keys[0] += len(value)
        if keys[0] > METADATA_KEYS:
            raise ValueError(f"more than {METADATA_KEYS} keys")
        for key, item in value.items():
            storable_text(key, f"{where} key {key[:40]!r}")
            _check(item, f"{where}.{key}", depth + 1, keys)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check(item, f"{where}[{i}]", depth + 1, keys)


def check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """A person's metadata, if storable and within the bounds (bytes, depth, keys)."""
    _check(value, "metadata", 1, [0])
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    if size > _limits["metadata_bytes"]:
        raise ValueError(f"{size} bytes of JSON, over the {_limits['metadata_bytes']} byte limit "
                         "(FACESEARCH_MAX_METADATA_KB)")
    return value


Metadata = Annotated[dict[str, Any], AfterValidator(check_metadata)]
StorableText = Annotated[str, AfterValidator(storable_text)]
# Ids in paths: a number out of bigint's range names nothing (and would not use the index).
PathId = Annotated[int, Path(ge=1, le=MAX_BIGINT)]
Offset = Annotated[int, Query(ge=0, le=MAX_BIGINT)]
