"""The FastAPI application: start-up and shutdown, error bodies, middleware, routes.

Start-up order matters (architecture rules 1 and 2): the database pool opens here, in the running
service, never at import; the model workers are *spawned* processes, so this process never loads
the model runtime and they never inherit a database connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import psycopg
import psycopg_pool
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .. import __version__
from ..config import Settings, private_home
from ..errors import DatabaseUnavailable, FacesearchError, ModelError, StoreError
from ..inference import ModelPool, ModelSpec
from ..models import check_model_files
from ..store import Gallery, database_url, open_pool, prepare
from ..store.pkl import PklGallery, PklStore, uses_pkl
from ..store.replicas import open_replicas
from ..store.resilience import RETRY_AFTER
from .auth import admin_key_digest
from .bounded import set_metadata_limit
from .docs import add_api_docs
from .guard import Guard
from .observability import Metrics, RequestLog
from .openapi import document_api
from .routes import clusters, domains, health, people, photos, shards, whoami
from .state import Service
from .uploads import BodyLimit
from .web import add_web_page

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("facesearch.service")

DESCRIPTION = """Face recognition against per-domain galleries.

Authenticate with `Authorization: Bearer <key>` (or `X-API-Key: <key>`): the admin key manages
domains and keys; a domain key reaches only its own domain. Photos are multipart file fields.
Every error is `{"error": {"code": ..., "message": ...}}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db: AsyncConnectionPool | PklStore
        private_home(settings.home)
        if uses_pkl(settings.store):  # DeepFace PKL files: no database started or contacted
            db = PklStore(settings.home / "pkl", settings.deepface_format)
            await db.open()
        else:
            url = await asyncio.to_thread(database_url, settings)  # starts the embedded server if needed
            await asyncio.to_thread(prepare, url)  # pgvector and migrations, once
            db = open_pool(url, max_size=max(4, settings.workers * 4))
            await db.open(wait=True, timeout=30)
        spec = ModelSpec(model=settings.model, models=await _preloaded(db, settings),
                         detector=settings.detector, runtime=settings.runtime,
                         cache_dir=str(settings.cache_dir), memory_mb=settings.worker_memory_mb)
        models = ModelPool(spec, workers=settings.workers, task_timeout=settings.task_timeout,
                           queue_limit=settings.queue_limit)
        svc = Service(settings=settings, db=db, models=models,
                      admin_digest=admin_key_digest(settings), metrics=metrics)
        if settings.read_database_urls and not isinstance(db, PklStore):
            svc.replicas = await open_replicas(settings, svc.cache)
        app.state.service = svc

        def load() -> None:
            try:
                models.start()
                log.info("model workers ready: %d x %s (%s, %s detector)", models.workers,
                         ", ".join(dict.fromkeys([spec.model, *spec.models])), settings.runtime,
                         settings.detector)
            except FacesearchError as exc:
                svc.models_error = exc.message
                log.error("model workers failed to start: %s", exc.message)

        # Workers load in the background: /healthz answers at once, /readyz once they are loaded.
        loading = asyncio.create_task(asyncio.to_thread(load))
        try:
            yield
        finally:
            # Uvicorn has drained the requests in flight by now (graceful shutdown).
            await loading
            await asyncio.to_thread(models.close)
            if svc.replicas is not None:
                await svc.replicas.close()
            await db.close()
            log.info("stopped")

    # No trailing-slash redirects: Starlette's would build the Location from the Host header.
    # docs_url/redoc_url None: FastAPI's pages load from a CDN; add_api_docs serves them offline.
    app = FastAPI(title="facesearch", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan, docs_url=None, redoc_url=None, redirect_slashes=False)
    set_metadata_limit(settings.max_metadata)
    _add_error_handlers(app)
    for module in (domains, people, photos, clusters, health, whoami, shards):
        app.include_router(module.router)
    add_web_page(app)
    add_api_docs(app)
    document_api(app)
    app.add_middleware(BodyLimit, limit=settings.max_upload, json_limit=settings.max_json)
    app.add_middleware(Guard, settings=settings)  # the key, before the body
    app.add_middleware(RequestLog, metrics=metrics)  # outermost: sees every response, 413s too
    return app


async def _preloaded(db: AsyncConnectionPool | PklStore, settings: Settings) -> tuple[str, ...]:
    """The models of the existing domains besides the default, which every worker loads at
    start-up (so no domain's first request waits for its model). A model that cannot load here
    (a DeepFace model whose weights are missing, or one this version does not know) is left out
    with a warning: its domains answer 503 until it can."""
    if isinstance(db, PklStore):
        in_use = await PklGallery(db).domain_models()
    else:
        async with db.connection() as conn:
            in_use = await Gallery(conn).domain_models()
    models = []
    for model in in_use:
        if model == settings.model:
            continue
        try:
            check_model_files(model)
        except ModelError as exc:
            log.warning("not loading model %s (of domains in use) in the workers: %s", model,
                        exc.message)
            continue
        models.append(model)
    return tuple(models)


def error_response(request: Request, status: int, code: str, message: str,
                   details: object = None, headers: dict[str, str] | None = None) -> JSONResponse:
    request.state.error = code
    error: dict = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    # A 503 is temporary (database or model workers): clients may retry, after the overload's own
    # estimate if it gave one, else a second.
    if status == 503:
        headers = {"Retry-After": RETRY_SOON, **(headers or {})}
    return JSONResponse({"error": error}, status_code=status, headers=headers)


RETRY_SOON = "1"  # seconds: a 503 that says no better (a worker died mid-request)

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "upload_too_large", 415: "unsupported_media_type"}


def _add_error_handlers(app: FastAPI) -> None:
    """One error body everywhere, and never a traceback in a response."""

    @app.exception_handler(FacesearchError)
    async def facesearch_error(request: Request, exc: FacesearchError) -> JSONResponse:
        retry = getattr(exc, "retry_after", None)  # Overloaded: when to try again
        if retry is None and isinstance(exc, StoreError):
            retry = RETRY_AFTER  # the database's: when a reconnect may have succeeded
        return error_response(request, exc.status, exc.code, exc.message, exc.details,
                              {"Retry-After": str(retry)} if retry else None)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such route: {request.method} {request.url.path} (see /docs)"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path} (see /docs)"
        return error_response(request, exc.status_code,
                              _HTTP_CODES.get(exc.status_code, "http_error"), message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return error_response(request, 422, "invalid_request", "; ".join(problems))

    # The database went away (stopped, restarting, backend killed, read-only after a failover):
    # 503 at once, within the bounds of store/resilience.py; the pool reconnects by itself.
    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(psycopg.errors.ReadOnlySqlTransaction)
    @app.exception_handler(psycopg_pool.PoolTimeout)
    async def database_down(request: Request, exc: Exception) -> JSONResponse:
        log.error("database unavailable: %s: %s", type(exc).__name__, str(exc).strip())
        return error_response(request, 503, DatabaseUnavailable.code,
                              "the database is unavailable; try again in a few seconds "
                              "(an enrollment that got this answer can be re-sent as is)",
                              headers={"Retry-After": str(RETRY_AFTER)})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = request.state.request_id if hasattr(request.state, "request_id") else "?"
        log.error("unexpected error in request %s", request_id, exc_info=exc)
        return error_response(request, 500, "internal_error",
                              f"unexpected server error (request {request_id}); see the server log")
