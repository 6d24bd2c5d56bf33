"""The web page at ``/``: plain files shipped in the package (``static/``), served as they are.

No build step at install time and nothing fetched from elsewhere at run time: the page is one HTML
file, one JavaScript module and one stylesheet. It talks to the v1 API with the user's key, which
it keeps in the browser tab's sessionStorage; the files themselves are public.
"""

from __future__ import annotations

from importlib import resources
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

# Everything from this origin only; images may also be blob: URLs (photos and thumbnails fetched
# with the key) and data: URLs. No inline script or style, no plugins, no framing, and forms never
# submit anywhere (the page handles them in JS: a form that posted would put the key in a URL).
CSP = "; ".join([
    "default-src 'self'", "img-src 'self' blob: data:", "script-src 'self'", "style-src 'self'",
    "connect-src 'self'", "object-src 'none'", "base-uri 'none'", "form-action 'none'",
    "frame-ancestors 'none'",
])
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class SecureStaticFiles(StaticFiles):
    """StaticFiles mounted at ``mount`` with the page's security headers (and ``headers``) on
    every file."""

    def __init__(self, mount: str, headers: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The request log and metrics label requests by their route's template (scope["route"],
        # which a mount does not set): one label for all the files, not "unmatched".
        self.route = SimpleNamespace(path=mount + "/{path}")
        self.headers = {**HEADERS, **(headers or {})}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route
        await super().__call__(scope, receive, send)

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(self.headers)
        return response


def add_web_page(app: FastAPI) -> None:
    """Serve ``/`` (the page) and ``/static/...`` (its script and style) from the package."""
    index = resources.files(__package__).joinpath("static", "index.html").read_bytes()

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> HTMLResponse:
        # no-cache: a browser revalidates, so an upgraded server's page is picked up at once.
        return HTMLResponse(index, headers={**HEADERS, "Cache-Control": "no-cache"})

    app.mount("/static", SecureStaticFiles("/static", packages=[(__package__, "static")]),
              name="static")
