"""A request's share of the model workers: its size caps, and dropping its work when its client
leaves.

The pool (:mod:`facesearch.inference.pool`) queues each domain's photos apart and serves the
domains round robin; here, a request is refused before it queues anything if it is too big
(photos, megapixels), and the photos it queued are cancelled if its client disconnects while
they wait, so a closed connection stops costing the workers (a photo already running finishes).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import warnings
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TypeVar

from PIL import Image
from starlette.requests import Request

from ..config import Settings
from ..errors import ClientGone, TooManyPhotos, TooManyPixels

T = TypeVar("T")


def photo_pixels(data: bytes) -> int:
    """Width x height from the image header (nothing decoded); 0 if unreadable (the worker then
    says what is wrong with it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except Exception:  # Pillow raises many types for malformed headers
        return 0
    return max(0, width) * max(0, height)


def check_request_size(photos: Sequence[bytes], settings: Settings) -> None:
    """Refuse (413) a request with more photos or megapixels than one request may use."""
    if len(photos) > settings.max_photos:
        raise TooManyPhotos(too_many_photos_message(settings.max_photos, len(photos)))
    total = sum(photo_pixels(data) for data in photos) / 1e6
    limit = settings.max_request_megapixels
    if total > limit:
        raise TooManyPixels(
            f"the photos of this request add up to {total:.0f} megapixels, over the {limit:g} "
            "one request may use (FACESEARCH_MAX_REQUEST_MEGAPIXELS): send smaller photos, or "
            "fewer per request")


def too_many_photos_message(limit: int, sent: int | None = None) -> str:
    got = f" (got {sent})" if sent is not None else ""
    return (f"at most {limit} photos per request{got}: send the others in further requests "
            "(the server's FACESEARCH_MAX_PHOTOS)")


async def _disconnected(request: Request) -> None:
    """Return when the client has closed the connection. Only once the body has been read: the
    next ASGI message is then ``http.disconnect``, sent when the connection drops."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def results_unless_gone(request: Request,
                              futures: list[Future[T]]) -> list[T | BaseException]:
    """The futures' results (or exceptions), awaited while watching the connection: if the client
    leaves first, the futures are cancelled (the pool drops those not started) and
    :class:`ClientGone` is raised (its 499 goes nowhere; it shows in the request log)."""
    gathered = asyncio.gather(*(asyncio.wrap_future(f) for f in futures), return_exceptions=True)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({gathered, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not gathered.done():
            raise ClientGone(f"the client closed the connection; {len(futures)} photo(s) dropped")
        return gathered.result()
    finally:
        watch.cancel()
        for future in futures:  # no-op for those done; drops the queued ones
            future.cancel()
        if not gathered.done():
            gathered.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gathered
