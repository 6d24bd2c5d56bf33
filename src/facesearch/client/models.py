"""What the API answers, as dataclasses (fields as in the OpenAPI document at /docs).

Built from the JSON by :func:`from_json`, which ignores fields it does not know, so a newer server
that adds fields still works with this client.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import datetime
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


@dataclass(frozen=True)
class WhoAmI:
    admin: bool
    domain: str | None = None  # the one domain of a domain key; None for the admin key


@dataclass(frozen=True)
class Domain:
    name: str
    model: str
    people: int
    faces: int
    created_at: datetime
    threshold: float | None = None  # the recognize threshold by default


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None = None


@dataclass(frozen=True)
class CreatedKey(ApiKey):
    key: str = ""  # the secret: shown only when created


@dataclass(frozen=True)
class Person:
    id: int
    name: str
    faces: int
    metadata: dict[str, Any]
    created_at: datetime
    thumbnail_face_id: int | None = None


@dataclass(frozen=True)
class PeoplePage:
    people: list[Person]
    total: int
    limit: int
    offset: int


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class Face:
    id: int
    person_id: int
    person: str
    model: str
    box: Box
    score: float | None
    photo_sha256: str
    created_at: datetime
    has_thumbnail: bool = False


@dataclass(frozen=True)
class ErrorInfo:
    code: str
    message: str
    details: Any = None


@dataclass(frozen=True)
class EnrollResult:
    photo: str | None
    status: str  # "enrolled", "already_enrolled" or "refused"
    face_id: int | None = None
    box: Box | None = None
    faces_found: int | None = None
    error: ErrorInfo | None = None


@dataclass(frozen=True)
class Enrollment:
    person: Person
    enrolled: int
    model: str
    results: list[EnrollResult]


@dataclass(frozen=True)
class DetectedFace:
    box: Box
    score: float
    landmarks: list[list[float]]


@dataclass(frozen=True)
class Match:
    person_id: int
    name: str
    face_id: int
    distance: float
    similarity: float


@dataclass(frozen=True)
class RecognizedFace(DetectedFace):
    matches: list[Match] = field(default_factory=list)  # best first; empty: nobody under threshold


@dataclass(frozen=True)
class ImageSize:
    width: int
    height: int


@dataclass(frozen=True)
class Recognition:
    faces: list[RecognizedFace]
    faces_found: int  # detected; only the largest max_faces are matched
    image: ImageSize
    model: str
    threshold: float
    top_k: int
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class Verification:
    same_person: bool
    distance: float
    similarity: float
    threshold: float
    model: str
    faces: list[DetectedFace]
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class Detection:
    faces: list[DetectedFace]
    faces_found: int
    image: ImageSize
    timings_ms: dict[str, float]


def from_json(cls: type[T], data: dict[str, Any]) -> T:
    """A dataclass from its JSON object: nested dataclasses, lists of them and datetimes are
    converted by the field's type; keys the class does not have are ignored."""
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: _convert(hints[k], v) for k, v in data.items() if k in known})


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        return _convert(options[0], value) if len(options) == 1 else value
    if origin is list:
        (item,) = get_args(tp)
        return [_convert(item, v) for v in value]
    if isinstance(tp, type) and is_dataclass(tp):
        return from_json(tp, value)
    if tp is datetime:
        return datetime.fromisoformat(value)
    return value
