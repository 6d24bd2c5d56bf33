"""The API's own documentation, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), with no network.

FastAPI's defaults load Swagger UI and ReDoc from a public CDN and run an inline script, so they are
blank offline and cannot run under the page's CSP. Here the assets come from the ``fastapi-offline``
wheel (Swagger UI 5 and ReDoc 2, one MIT package that depends only on FastAPI) and are served from
this origin; the start-up scripts are files of our own (``static/docs-*.js``), so script-src stays
``'self'``. ReDoc writes its styles into ``<style>`` elements at run time (styled-components): its
page allows those by a per-response nonce, never by ``'unsafe-inline'``. (Two small stylesheets its
bundle inserts as it loads, before it is given the nonce, are refused: perfect-scrollbar's, so its
menu scrolls natively; and its "by Redocly" logo, an image on a CDN, is never fetched.)
"""

from __future__ import annotations

import secrets
from html import escape
from importlib import resources

from fastapi import FastAPI
from starlette.responses import HTMLResponse

from .web import CSP, HEADERS, SecureStaticFiles

ASSETS = "/docs-assets"  # Swagger UI's and ReDoc's files, from the fastapi-offline wheel


def _assets_dir() -> str:
    return str(resources.files("fastapi_offline").joinpath("static"))


# Relative URLs throughout, so the pages also work behind a proxy that mounts facesearch on a
# sub-path (``/docs`` -> ``openapi.json`` is ``/openapi.json``).
_SWAGGER = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title} API (Swagger UI)</title>
  <link rel="icon" href="docs-assets/favicon.png">
  <link rel="stylesheet" href="docs-assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui" data-openapi="{openapi}"></div>
  <script src="docs-assets/swagger-ui-bundle.js"></script>
  <script src="static/docs-swagger.js"></script>
</body>
</html>
"""

_REDOC = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title} API (ReDoc)</title>
  <link rel="icon" href="docs-assets/favicon.png">
</head>
<body>
  <div id="redoc" data-openapi="{openapi}" data-nonce="{nonce}"></div>
  <script src="docs-assets/redoc.standalone.js"></script>
  <script src="static/docs-redoc.js"></script>
</body>
</html>
"""


def redoc_csp(nonce: str) -> str:
    """The page's CSP with one change: ``<style>`` elements carrying this response's nonce."""
    return CSP.replace("style-src 'self'", f"style-src 'self' 'nonce-{nonce}'")


def add_api_docs(app: FastAPI) -> None:
    """Serve ``/docs``, ``/redoc`` and their assets (the app is made with docs_url=None and
    redoc_url=None, so FastAPI's CDN pages are not)."""
    openapi = escape((app.openapi_url or "/openapi.json").lstrip("/"))
    title = escape(app.title)
    swagger = _SWAGGER.format(title=title, openapi=openapi).encode()

    @app.api_route("/docs", methods=["GET", "HEAD"], include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(swagger, headers={**HEADERS, "Cache-Control": "no-cache"})

    @app.api_route("/redoc", methods=["GET", "HEAD"], include_in_schema=False)
    async def redoc() -> HTMLResponse:
        nonce = secrets.token_urlsafe(18)
        body = _REDOC.format(title=title, openapi=openapi, nonce=nonce)
        return HTMLResponse(body, headers={**HEADERS, "Content-Security-Policy": redoc_csp(nonce),
                                           "Cache-Control": "no-store"})

    # The files change only with the package's version; the URLs carry no version, so a browser
    # revalidates (cheap: StaticFiles answers 304 to If-None-Match).
    assets = SecureStaticFiles(ASSETS, {"Cache-Control": "no-cache"}, directory=_assets_dir())
    app.mount(ASSETS, assets, name="docs-assets")
