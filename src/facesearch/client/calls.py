"""One function per API route: it turns typed arguments into a :class:`Call` (the HTTP request and
how to read its answer). :class:`~facesearch.client.Client` and
:class:`~facesearch.client.AsyncClient` send them; these functions are their methods' signatures
and docs."""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from .models import (
    ApiKey,
    CreatedKey,
    Detection,
    Domain,
    Enrollment,
    Face,
    PeoplePage,
    Person,
    Recognition,
    Verification,
    WhoAmI,
    from_json,
)

T = TypeVar("T")

# A photo: a path, its bytes, or (file name, bytes).
PhotoInput = str | os.PathLike[str] | bytes | tuple[str, bytes]
FileField = tuple[str, tuple[str, bytes, str]]


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request, re-sendable as is (the photos are read into memory once)."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    files: list[FileField] | None = None
    data: dict[str, str] | None = None

    def query(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if v is not None}


def _seg(value: str | int) -> str:
    return quote(str(value), safe="")


def _dom(domain: str, rest: str = "") -> str:
    return f"/v1/domains/{_seg(domain)}{rest}"


def _as(cls: type[T]) -> Callable[[httpx.Response], T]:
    return lambda r: from_json(cls, r.json())


def _list_of(cls: type[T], key: str) -> Callable[[httpx.Response], list[T]]:
    return lambda r: [from_json(cls, item) for item in r.json()[key]]


def photo_field(name: str, photo: PhotoInput) -> FileField:
    """A multipart file field from a path, bytes, or (file name, bytes)."""
    if isinstance(photo, bytes):
        filename, data = "photo", photo
    elif isinstance(photo, tuple):
        filename, data = photo
    else:
        path = Path(photo)
        filename, data = path.name, path.read_bytes()
    ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    return (name, (filename, data, ctype))


# -- operations ----------------------------------------------------------------------------------

def whoami() -> Call[WhoAmI]:
    """What this client's key is: the admin key, or which domain's."""
    return Call("GET", "/v1/whoami", _as(WhoAmI))


def health() -> Call[dict[str, Any]]:
    """``GET /healthz``: the server is up."""
    return Call("GET", "/healthz", lambda r: r.json())


def ready() -> Call[dict[str, Any]]:
    """``GET /readyz``: the database answers and the model workers are loaded (retried while the
    server answers 503 with Retry-After, as while its workers load)."""
    return Call("GET", "/readyz", lambda r: r.json())


def metrics() -> Call[str]:
    """Prometheus metrics (admin key)."""
    return Call("GET", "/metrics", lambda r: r.text)


# -- domains and keys (admin key) ---------------------------------------------------------------

def list_domains() -> Call[list[Domain]]:
    return Call("GET", "/v1/domains", _list_of(Domain, "domains"))


def create_domain(name: str, model: str | None = None) -> Call[Domain]:
    """A new domain of ``model`` (default: the server's)."""
    return Call("POST", "/v1/domains", _as(Domain), json={"name": name, "model": model})


def get_domain(domain: str) -> Call[Domain]:
    return Call("GET", _dom(domain), _as(Domain))


def delete_domain(domain: str) -> Call[Domain]:
    """Delete a domain with its people, faces and keys; returns what was deleted."""
    return Call("DELETE", _dom(domain), _as(Domain))


def create_key(domain: str, name: str = "default") -> Call[CreatedKey]:
    """A new key for ``domain``; its secret (``.key``) is in this answer only."""
    return Call("POST", _dom(domain, "/keys"), _as(CreatedKey), json={"name": name})


def list_keys(domain: str) -> Call[list[ApiKey]]:
    return Call("GET", _dom(domain, "/keys"), _list_of(ApiKey, "keys"))


def revoke_key(domain: str, key_id: int) -> Call[ApiKey]:
    return Call("DELETE", _dom(domain, f"/keys/{key_id}"), _as(ApiKey))


# -- people and faces ----------------------------------------------------------------------------

def create_person(domain: str, name: str, metadata: dict[str, Any] | None = None) -> Call[Person]:
    return Call("POST", _dom(domain, "/people"), _as(Person),
                json={"name": name, "metadata": metadata or {}})


def list_people(domain: str, q: str | None = None, limit: int = 100,
                offset: int = 0) -> Call[PeoplePage]:
    """One page of people, optionally those whose name contains ``q``."""
    return Call("GET", _dom(domain, "/people"), _as(PeoplePage),
                params={"q": q, "limit": limit, "offset": offset})


def get_person(domain: str, person_id: int) -> Call[Person]:
    return Call("GET", _dom(domain, f"/people/{person_id}"), _as(Person))


def update_person(domain: str, person_id: int, name: str | None = None,
                  metadata: dict[str, Any] | None = None) -> Call[Person]:
    """Rename a person and/or replace their metadata."""
    body = {k: v for k, v in (("name", name), ("metadata", metadata)) if v is not None}
    return Call("PATCH", _dom(domain, f"/people/{person_id}"), _as(Person), json=body)


def delete_person(domain: str, person_id: int) -> Call[Person]:
    """Delete a person and all their faces."""
    return Call("DELETE", _dom(domain, f"/people/{person_id}"), _as(Person))


def list_faces(domain: str, person_id: int) -> Call[list[Face]]:
    return Call("GET", _dom(domain, f"/people/{person_id}/faces"), _list_of(Face, "faces"))


def delete_face(domain: str, face_id: int) -> Call[None]:
    return Call("DELETE", _dom(domain, f"/faces/{face_id}"), lambda r: None)


def face_thumbnail(domain: str, face_id: int) -> Call[bytes]:
    """The face's JPEG thumbnail."""
    return Call("GET", _dom(domain, f"/faces/{face_id}/thumbnail"), lambda r: r.content)


def enroll(domain: str, name: str, photos: Sequence[PhotoInput],
           face: str | int | None = None) -> Call[Enrollment]:
    """Enroll photos of the person called ``name`` (created if new). ``face``: which face of a
    photo with several ("largest" or an index); unset, such photos are refused."""
    return Call("POST", _dom(domain, "/enroll"), _as(Enrollment), params={"face": face},
                files=[photo_field("photo", p) for p in photos], data={"name": name})


def enroll_person(domain: str, person_id: int, photos: Sequence[PhotoInput],
                  face: str | int | None = None) -> Call[Enrollment]:
    """Enroll photos of an existing person."""
    return Call("POST", _dom(domain, f"/people/{person_id}/faces"), _as(Enrollment),
                params={"face": face}, files=[photo_field("photo", p) for p in photos])


# -- recognition ---------------------------------------------------------------------------------

def recognize(domain: str, photo: PhotoInput, top_k: int | None = None,
              threshold: float | None = None, max_faces: int | None = None,
              min_face: int | None = None) -> Call[Recognition]:
    """Every face of the photo (largest first) with its best matches in ``domain``; unset
    options take the server's and the domain's defaults."""
    return Call("POST", _dom(domain, "/recognize"), _as(Recognition),
                params={"top_k": top_k, "threshold": threshold, "max_faces": max_faces,
                        "min_face": min_face},
                files=[photo_field("photo", photo)])


def verify(photo1: PhotoInput, photo2: PhotoInput, threshold: float | None = None,
           domain: str | None = None, model: str | None = None) -> Call[Verification]:
    """Are the largest faces of two photos the same person (with ``domain``'s model, or
    ``model``, or the server's)?"""
    return Call("POST", "/v1/verify", _as(Verification),
                params={"threshold": threshold, "domain": domain, "model": model},
                files=[photo_field("photo1", photo1), photo_field("photo2", photo2)])


def detect(photo: PhotoInput, min_face: int | None = None) -> Call[Detection]:
    """The faces of a photo: boxes, scores, landmarks (no recognition)."""
    return Call("POST", "/v1/detect", _as(Detection), params={"min_face": min_face},
                files=[photo_field("photo", photo)])
