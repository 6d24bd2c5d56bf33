"""A Python client for the facesearch HTTP API, sync and async.

    from facesearch.client import Client

    with Client("http://127.0.0.1:8000", key) as fs:
        fs.enroll("my-domain", "Ana Novak", ["ana1.jpg", "ana2.heic"])
        for face in fs.recognize("my-domain", "group.jpg").faces:
            print(face.box, [m.name for m in face.matches])

Every route has a typed method (the functions of :mod:`facesearch.client.calls` give their
signatures); answers are dataclasses (:mod:`facesearch.client.models`). Every failure raises
:class:`ApiError` with the API's ``code`` and ``message`` (``network_error`` when the server
cannot be reached). A 503 (database or model workers not ready) is retried, after the answer's
``Retry-After`` or an exponential backoff, ``retries`` times.

Only httpx: this module imports no model runtime and no database driver.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, ParamSpec, TypeVar

import httpx

from .. import __version__
from . import calls
from .calls import Call, PhotoInput
from .models import (
    ApiKey,
    Box,
    CreatedKey,
    DetectedFace,
    Detection,
    Domain,
    Enrollment,
    EnrollResult,
    ErrorInfo,
    Face,
    ImageSize,
    Match,
    PeoplePage,
    Person,
    Recognition,
    RecognizedFace,
    Verification,
    WhoAmI,
)

__all__ = [
    "ApiError",
    "ApiKey",
    "AsyncClient",
    "Box",
    "Client",
    "CreatedKey",
    "DetectedFace",
    "Detection",
    "Domain",
    "EnrollResult",
    "Enrollment",
    "ErrorInfo",
    "Face",
    "ImageSize",
    "Match",
    "PeoplePage",
    "Person",
    "PhotoInput",
    "Recognition",
    "RecognizedFace",
    "Verification",
    "WhoAmI",
]

P = ParamSpec("P")
T = TypeVar("T")
MAX_WAIT = 30.0  # seconds: the longest Retry-After honoured
# facesearch serve closes a connection idle for 5 s: keep idle ones for less, so that a request is
# never sent on a connection the server is closing at that moment (it would fail, unanswered).
KEEP_ALIVE = httpx.Limits(keepalive_expiry=2)


class ApiError(Exception):
    """An error answer of the API (``{"error": {"code", "message"}}``), or ``network_error``
    (``status`` 0) when the server could not be reached."""

    def __init__(self, status: int, code: str, message: str, details: Any = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.retry_after = retry_after

    @classmethod
    def from_response(cls, r: httpx.Response) -> ApiError:
        try:
            error = r.json()["error"]
            code, message, details = error["code"], error["message"], error.get("details")
        except (ValueError, KeyError, TypeError):  # not facesearch's JSON (a proxy's page, say)
            code, message, details = "http_error", f"HTTP {r.status_code}: {r.text[:200]}", None
        return cls(r.status_code, code, message, details, _retry_after(r))


def _retry_after(r: httpx.Response) -> float | None:
    value = r.headers.get("retry-after", "")
    try:
        return min(MAX_WAIT, max(0.0, float(value)))
    except ValueError:
        return None  # absent, or an HTTP date (not sent by facesearch)


class _Base:
    def __init__(self, url: str, key: str | None, retries: int, backoff: float) -> None:
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self._headers = {"User-Agent": f"facesearch-client/{__version__}"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"

    def _wait(self, error: ApiError, attempt: int) -> float | None:
        """Seconds before trying again, or None to give up: only 503s are retried."""
        if error.status != 503 or attempt >= self.retries:
            return None
        if error.retry_after is not None:
            return error.retry_after
        return min(MAX_WAIT, self.backoff * 2 ** attempt)

    @staticmethod
    def _read(call: Call[T], r: httpx.Response) -> T:
        if r.status_code >= 400:
            raise ApiError.from_response(r)
        return call.read(r)

    def _unreachable(self, exc: httpx.TransportError) -> ApiError:
        return ApiError(0, "network_error", f"cannot reach the facesearch server at {self.url} "
                        f"({type(exc).__name__}: {exc}); check that it is running")


class _Sync(Generic[P, T]):
    """A method of :class:`Client` made from a function of :mod:`.calls`."""

    def __init__(self, build: Callable[P, Call[T]]) -> None:
        self.build = build

    def __get__(self, client: Client, owner: type | None = None) -> Callable[P, T]:
        @functools.wraps(self.build)
        def method(*args: P.args, **kwargs: P.kwargs) -> T:
            return client.send(self.build(*args, **kwargs))
        return method


class _Async(Generic[P, T]):
    """A coroutine method of :class:`AsyncClient` made from a function of :mod:`.calls`."""

    def __init__(self, build: Callable[P, Call[T]]) -> None:
        self.build = build

    def __get__(self, client: AsyncClient, owner: type | None = None
                ) -> Callable[P, Awaitable[T]]:
        @functools.wraps(self.build)
        async def method(*args: P.args, **kwargs: P.kwargs) -> T:
            return await client.send(self.build(*args, **kwargs))
        return method


class Client(_Base):
    """The API over a blocking HTTP connection pool. ``key``: the admin key or a domain key."""

    def __init__(self, url: str, key: str | None = None, *, timeout: float = 120, retries: int = 3,
                 backoff: float = 0.5, **httpx_options: Any) -> None:
        super().__init__(url, key, retries, backoff)
        httpx_options.setdefault("limits", KEEP_ALIVE)
        self._http = httpx.Client(base_url=self.url, headers=self._headers, timeout=timeout,
                                  **httpx_options)

    def send(self, call: Call[T]) -> T:
        """Send one call, retrying 503s (see the module's doc)."""
        attempt = 0
        while True:
            try:
                r = self._http.request(call.method, call.path, params=call.query(), json=call.json,
                                       files=call.files, data=call.data)
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from exc
            try:
                return self._read(call, r)
            except ApiError as error:
                wait = self._wait(error, attempt)
                if wait is None:
                    raise
            time.sleep(wait)
            attempt += 1

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    whoami = _Sync(calls.whoami)
    health = _Sync(calls.health)
    ready = _Sync(calls.ready)
    metrics = _Sync(calls.metrics)
    list_domains = _Sync(calls.list_domains)
    create_domain = _Sync(calls.create_domain)
    get_domain = _Sync(calls.get_domain)
    delete_domain = _Sync(calls.delete_domain)
    create_key = _Sync(calls.create_key)
    list_keys = _Sync(calls.list_keys)
    revoke_key = _Sync(calls.revoke_key)
    create_person = _Sync(calls.create_person)
    list_people = _Sync(calls.list_people)
    get_person = _Sync(calls.get_person)
    update_person = _Sync(calls.update_person)
    delete_person = _Sync(calls.delete_person)
    list_faces = _Sync(calls.list_faces)
    delete_face = _Sync(calls.delete_face)
    face_thumbnail = _Sync(calls.face_thumbnail)
    enroll = _Sync(calls.enroll)
    enroll_person = _Sync(calls.enroll_person)
    recognize = _Sync(calls.recognize)
    verify = _Sync(calls.verify)
    detect = _Sync(calls.detect)


class AsyncClient(_Base):
    """The same methods as :class:`Client`, each a coroutine (``await fs.recognize(...)``)."""

    def __init__(self, url: str, key: str | None = None, *, timeout: float = 120, retries: int = 3,
                 backoff: float = 0.5, **httpx_options: Any) -> None:
        super().__init__(url, key, retries, backoff)
        httpx_options.setdefault("limits", KEEP_ALIVE)
        self._http = httpx.AsyncClient(base_url=self.url, headers=self._headers, timeout=timeout,
                                       **httpx_options)

    async def send(self, call: Call[T]) -> T:
        """Send one call, retrying 503s (see the module's doc)."""
        attempt = 0
        while True:
            try:
                r = await self._http.request(call.method, call.path, params=call.query(),
                                             json=call.json, files=call.files, data=call.data)
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from exc
            try:
                return self._read(call, r)
            except ApiError as error:
                wait = self._wait(error, attempt)
                if wait is None:
                    raise
            await asyncio.sleep(wait)
            attempt += 1

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    whoami = _Async(calls.whoami)
    health = _Async(calls.health)
    ready = _Async(calls.ready)
    metrics = _Async(calls.metrics)
    list_domains = _Async(calls.list_domains)
    create_domain = _Async(calls.create_domain)
    get_domain = _Async(calls.get_domain)
    delete_domain = _Async(calls.delete_domain)
    create_key = _Async(calls.create_key)
    list_keys = _Async(calls.list_keys)
    revoke_key = _Async(calls.revoke_key)
    create_person = _Async(calls.create_person)
    list_people = _Async(calls.list_people)
    get_person = _Async(calls.get_person)
    update_person = _Async(calls.update_person)
    delete_person = _Async(calls.delete_person)
    list_faces = _Async(calls.list_faces)
    delete_face = _Async(calls.delete_face)
    face_thumbnail = _Async(calls.face_thumbnail)
    enroll = _Async(calls.enroll)
    enroll_person = _Async(calls.enroll_person)
    recognize = _Async(calls.recognize)
    verify = _Async(calls.verify)
    detect = _Async(calls.detect)
