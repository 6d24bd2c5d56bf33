"""The service's front door, before any route runs: who is calling, how often, and how much they
may send; and the headers every response carries.

The key is checked here, before a byte of the body is read: FastAPI parses a JSON body before a
route's dependencies run, so a request without a valid key could otherwise make the server parse
(and hold) a large body just to answer 401. Failed key attempts are counted per client address and,
once over FACESEARCH_AUTH_FAILURES, answered 429 with ``Retry-After`` whatever key they carry (so
guessing cannot go on); FACESEARCH_KEY_RATE optionally limits each key's requests. Counting is
the ``limits`` library's moving window, in memory by default (FACESEARCH_RATE_STORAGE can name a
shared store, e.g. ``redis://host``, so that replicas count together).
"""

from __future__ import annotations

import logging
import math
import re
import time
from types import SimpleNamespace

import psycopg
import psycopg_pool
from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import names
from ..config import Settings
from ..errors import DatabaseUnavailable, FacesearchError, Unauthorized
from ..store.resilience import RETRY_AFTER
from .auth import Caller, digest, is_admin, presented_key

log = logging.getLogger("facesearch.service")

# Headers of every response: never sniffed into another type; API answers (JSON of people, face
# thumbnails) are kept by no cache. The page and its files set their own caching.
NOSNIFF = (b"x-content-type-options", b"nosniff")
NO_STORE = (b"cache-control", b"no-store")


def _needs_key(path: str) -> bool:
    """Every route under /v1/ takes a key, and so does /metrics (the admin's)."""
    return path.startswith("/v1/") or path == "/metrics"


def _rate(text: str, setting: str) -> RateLimitItem:
    try:
        return parse(text)
    except ValueError:
        raise SystemExit(f"error: {setting} must be a rate such as '20/minute' or '5/second', "
                         f"not {text!r}") from None


class Limits:
    """The rate limits of one service: failed key attempts per address, requests per key."""

    def __init__(self, settings: Settings) -> None:
        self.failures = _rate(settings.auth_failures, "FACESEARCH_AUTH_FAILURES")
        self.per_key = None if settings.key_rate is None else _rate(settings.key_rate,
                                                                    "FACESEARCH_KEY_RATE")
        uri = settings.rate_storage
        self.uri = uri if uri.startswith("async+") else "async+" + uri
        self._limiter: MovingWindowRateLimiter | None = None

    @property
    def limiter(self) -> MovingWindowRateLimiter:
        if self._limiter is None:  # made in the running event loop (the storage may need one)
            store: Storage = storage_from_string(self.uri)
            self._limiter = MovingWindowRateLimiter(store)
        return self._limiter

    async def retry_after(self, item: RateLimitItem, *ids: str) -> int | None:
        """Seconds until ``ids`` may try again when over ``item`` now, else None."""
        if await self.limiter.test(item, *ids):
            return None
        stats = await self.limiter.get_window_stats(item, *ids)
        return max(1, math.ceil(stats.reset_time - time.time()))


class Guard:
    """ASGI middleware: authentication before the body, rate limits, the body limit's choice (JSON
    routes get FACESEARCH_MAX_JSON_KB, photo uploads FACESEARCH_MAX_UPLOAD_MB; see
    uploads.BodyLimit) and the security headers."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.limits = Limits(settings)
        self._routes: list[tuple[re.Pattern[str], SimpleNamespace, bool]] | None = None

    def _route(self, scope: Scope) -> tuple[SimpleNamespace, dict[str, str], bool] | None:
        """The route template a request goes to, its path parameters, and whether it takes
        photos (a multipart body in the OpenAPI document, which every photo route declares)."""
        if self._routes is None:
            self._routes = []
            for template, operations in scope["app"].openapi()["paths"].items():
                # re.escape turns "{domain}" into "\\{domain\\}": each becomes a named group.
                pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
                upload = any("multipart/form-data" in op.get("requestBody", {}).get("content", {})
                             for op in operations.values())
                self._routes.append((re.compile(pattern + "$"), SimpleNamespace(path=template),
                                     upload))
        for pattern, route, upload in self._routes:
            found = pattern.match(scope["path"])
            if found:
                return route, found.groupdict(), upload
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        api = not (path == "/" or path.startswith("/static/"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                if NOSNIFF[0] not in present:
                    headers.append(NOSNIFF)
                if api and b"cache-control" not in present:
                    headers.append(NO_STORE)
                message = {**message, "headers": headers}
            await send(message)

        matched = self._route(scope)
        if matched is not None:
            route, params, scope["facesearch.upload"] = matched
            # The request log's labels, for a request refused here too (the router sets them
            # again for the others).
            scope.setdefault("route", route)
            if names.DOMAIN_RE.fullmatch(params.get("domain", "")):
                scope.setdefault("state", {}).setdefault("domain", params["domain"])
        else:
            scope["facesearch.upload"] = False
        if _needs_key(path):
            try:
                caller = await self._authenticate(scope)
            except _Refused as refused:
                await refused.response(scope, receive, send_with_headers)
                return
            scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send_with_headers)

    async def _authenticate(self, scope: Scope) -> Caller:
        """The caller of a request, or _Refused (401, 429, 503) without reading its body."""
        request = Request(scope)  # its headers only: the body is never touched here
        address = scope["client"][0] if scope.get("client") else "unknown"
        try:
            key = presented_key(request)
        except Unauthorized as exc:
            raise _Refused(scope, 401, exc.code, exc.message) from None
        wait = await self.limits.retry_after(self.limits.failures, "auth-failures", address)
        if wait is not None:
            raise _Refused(scope, 429, "too_many_failed_keys",
                           f"too many requests with a wrong API key from this address; try again in "
                           f"{wait} s", retry_after=wait)
        svc = scope["app"].state.service
        if is_admin(key, svc.admin_digest):
            caller = Caller(admin=True)
        else:
            try:
                async with svc.gallery() as gallery:
                    domain = await gallery.key_domain(key)
            except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
                log.error("database unavailable: %s", str(exc).strip())
                raise _Refused(scope, 503, DatabaseUnavailable.code,
                               "the database is unavailable; try again in a few seconds",
                               retry_after=RETRY_AFTER) from None
            except FacesearchError as exc:  # e.g. the PKL store's files unreadable
                raise _Refused(scope, exc.status, exc.code, exc.message) from None
            if domain is None:
                await self.limits.limiter.hit(self.limits.failures, "auth-failures", address)
                raise _Refused(scope, 401, Unauthorized.code, "unknown or revoked API key")
            caller = Caller(admin=False, domain=domain)
        if self.limits.per_key is not None:
            ident = digest(key).hex()
            if not await self.limits.limiter.hit(self.limits.per_key, "key", ident):
                wait = await self.limits.retry_after(self.limits.per_key, "key", ident) or 1
                raise _Refused(scope, 429, "rate_limited",
                               f"this API key is over its limit of {self.limits.per_key} requests "
                               f"(FACESEARCH_KEY_RATE); try again in {wait} s", retry_after=wait)
        return caller


class _Refused(Exception):
    """A request refused before its route: the JSON error body, and Retry-After if there is one."""

    def __init__(self, scope: Scope, status: int, code: str, message: str,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        scope.setdefault("state", {})["error"] = code  # for the request log
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        self.response = JSONResponse({"error": {"code": code, "message": message}},
                                     status_code=status, headers=headers)
