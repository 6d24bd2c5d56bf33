"""Connection limits of ``facesearch serve``: how long a client may take to send a request, and
how many connections may be open at once.

Uvicorn closes idle keep-alive connections (``timeout_keep_alive``) and answers 503 over
``limit_concurrency`` connections or requests, but it has no timeout for a request still being
sent: a client trickling its headers a byte at a time (slowloris) held a connection for as long as
it liked. :class:`GuardedH11Protocol` adds two deadlines per request, counted from its first byte
(or from the connection's opening): the headers must be complete within FACESEARCH_HEADER_TIMEOUT
seconds and the body within FACESEARCH_BODY_TIMEOUT more; past either, the connection is closed.
h11 already refuses headers over ``h11_max_incomplete_event_size`` bytes (400).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..config import Settings

log = logging.getLogger("facesearch.service")

# Headers of a request, in bytes, before h11 answers 400 (h11's default is 16 KB).
MAX_HEADER_BYTES = 16 * 1024
# Seconds an idle keep-alive connection stays open between requests.
KEEP_ALIVE = 5


class GuardedH11Protocol(H11Protocol):
    """Uvicorn's h11 protocol with deadlines for a request's headers and body."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_for: object = None  # the h11 state the deadline is for

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._follow()  # a connection that sends nothing is cut off like a slow one

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]:
            self._disarm()  # idle between requests: uvicorn's keep-alive timeout applies
        else:
            self._follow()

    def _follow(self) -> None:
        """The deadline for what the client is sending now: headers (h11's IDLE), a body
        (SEND_BODY), or none (the request is in, the app is answering)."""
        state = self.conn.their_state
        if state is self._waiting_for:
            return  # that deadline is running
        self._disarm()
        if state is h11.IDLE:
            self._start(h11.IDLE, self.header_timeout, "headers")
        elif state is h11.SEND_BODY:
            self._start(h11.SEND_BODY, self.body_timeout, "body")

    def _start(self, state: object, seconds: float, what: str) -> None:
        self._waiting_for = state
        self._deadline = asyncio.get_running_loop().call_later(seconds, self._expired, what, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        self._waiting_for = None

    def _expired(self, what: str, seconds: float) -> None:
        self._deadline = None
        self._waiting_for = None
        if not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.warning("closed the connection of %s: its request %s took over %g s", client, what,
                        seconds)
            self.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What ``uvicorn.run`` is given for these settings (README "Limits")."""
    protocol = type("GuardedH11Protocol", (GuardedH11Protocol,), {
        "header_timeout": settings.header_timeout, "body_timeout": settings.body_timeout})
    return {"http": protocol, "limit_concurrency": settings.max_connections,
            "timeout_keep_alive": KEEP_ALIVE, "h11_max_incomplete_event_size": MAX_HEADER_BYTES}
