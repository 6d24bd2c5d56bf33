"""Photo uploads: a body-size limit at the ASGI level and an in-memory multipart parser.

Photos are biometric data: they are held in memory only, never spooled to temporary files, and
dropped when the request ends.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import BadRequest, UnsupportedMediaType, UploadTooLarge

MAX_PHOTOS = 32  # per request
# A client that keeps sending after the limit is cut off after this much more (not drained forever).
DRAIN_LIMIT = 64 * 1024 * 1024


@dataclass(frozen=True)
class Photo:
    field: str
    filename: str | None
    data: bytes


@dataclass(frozen=True)
class Upload:
    """A parsed request body: its photos and its text fields."""

    photos: list[Photo]
    fields: dict[str, str]

    def named(self, *names: str) -> list[Photo]:
        """Photos of the given fields, in field order then upload order."""
        return [p for name in names for p in self.photos if p.field == name]

    def one(self, name: str = "photo") -> Photo:
        """The single photo of a request (field ``name``, or the only file sent)."""
        chosen = self.named(name) or self.photos
        if not chosen:
            raise BadRequest(f"no photo in the request: send it as the file field {name!r}")
        if len(chosen) > 1:
            raise BadRequest(f"send one photo in the field {name!r}, not {len(chosen)}")
        return chosen[0]


def too_large_message(limit: int) -> str:
    return (f"the upload is over the {limit / 1024 / 1024:g} MB limit; send a smaller photo "
            "(or raise FACESEARCH_MAX_UPLOAD_MB on the server)")


def json_too_large_message(limit: int) -> str:
    return (f"the request body is over the {limit / 1024:g} KB limit of JSON requests (photos go "
            "to the upload routes; FACESEARCH_MAX_JSON_KB raises it)")


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413 (``json_limit`` on routes that take no
    photos, as the Guard middleware marks them), whether announced by Content-Length or streamed.
    The rest of the body is read and discarded first, so the client sees the 413 rather than a
    connection reset mid-upload."""

    def __init__(self, app: ASGIApp, limit: int, json_limit: int | None = None) -> None:
        self.app = app
        self.upload_limit = limit
        self.json_limit = limit if json_limit is None else json_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope.get("facesearch.upload", True)
        limit = self.upload_limit if upload else self.json_limit
        message_text = too_large_message(limit) if upload else json_too_large_message(limit)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _drain(receive, DRAIN_LIMIT)
            response = JSONResponse(
                {"error": {"code": UploadTooLarge.code, "message": message_text}},
                status_code=413, headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if message.get("more_body"):
                        await _drain(receive, DRAIN_LIMIT)
                    raise UploadTooLarge(message_text)
            return message

        await self.app(scope, limited, send)


async def _drain(receive: Receive, limit: int) -> None:
    seen = 0
    while seen < limit:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return
        seen += len(message.get("body", b""))


class _InMemoryParser(MultiPartParser):
    # Starlette spools file parts over 1 MB to disk; BodyLimit bounds the whole body, so parts can
    # stay in memory.
    spool_max_size = 1 << 40


async def read_upload(request: Request) -> Upload:
    """The photos of a request: every file part of a multipart/form-data body, or a raw
    ``image/*`` (or ``application/octet-stream``) body as one photo named ``photo``."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        return Upload([Photo("photo", None, await request.body())], {})
    if ctype != "multipart/form-data":
        raise UnsupportedMediaType(
            f"send photos as multipart/form-data file fields (e.g. curl -F photo=@face.jpg), "
            f"or one photo as the raw body with Content-Type image/jpeg; got {ctype or 'no type'!r}")
    parser = _InMemoryParser(request.headers, request.stream(), max_files=MAX_PHOTOS,
                             max_fields=100, max_part_size=64 * 1024)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadRequest(f"malformed multipart body: {exc}") from None
    photos, fields = [], {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                photos.append(Photo(key, value.filename, await value.read()))
            else:
                fields[key] = value
    finally:
        await form.close()
    return Upload(photos, fields)


def photo_body(*fields: str, multiple: bool = False, text: tuple[str, ...] = ()) -> dict:
    """OpenAPI description of a photo upload (the body is parsed by :func:`read_photos`, not by
    FastAPI, so that it stays in memory)."""
    props: dict[str, dict] = {}
    for name in fields:
        file_schema = {"type": "string", "format": "binary"}
        props[name] = {"type": "array", "items": file_schema} if multiple else file_schema
    for name in text:
        props[name] = {"type": "string"}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": props,
                                           "required": [*fields, *text]}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    }}}
