"""Upload parsing: photos stay in memory however large (up to the body limit)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from facesearch.service import uploads


def multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, bytes]:
    boundary = b"facesearch-test-boundary"
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += b"--" + boundary + b"\r\nContent-Disposition: " + disposition.encode() + b"\r\n\r\n"
        body += data + b"\r\n"
    return body + b"--" + boundary + b"--\r\n", b"multipart/form-data; boundary=" + boundary


def request(body: bytes, content_type: bytes) -> Request:
    chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)]

    async def receive() -> dict:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [
        (b"content-type", content_type), (b"content-length", str(len(body)).encode())]}
    return Request(scope, receive)


def test_large_photos_are_never_spooled_to_disk() -> None:
    """Starlette spools file parts over 1 MB to a temporary file; ours must not."""
    big = bytes(range(256)) * (6 * 4096)  # 6 MB
    body, ctype = multipart([("photo", "a.jpg", big), ("name", None, b"Ana")])
    rolled = []

    async def run() -> uploads.Upload:
        raw = request(body, ctype)
        parser = uploads._InMemoryParser(raw.headers, raw.stream(), max_files=4, max_fields=4)
        form = await parser.parse()
        rolled.extend(f.file._rolled for _, f in form.multi_items() if hasattr(f, "file"))
        await form.close()
        return await uploads.read_upload(request(body, ctype))

    upload = asyncio.run(run())
    assert rolled == [False]
    assert upload.one("photo").data == big and upload.fields == {"name": "Ana"}
