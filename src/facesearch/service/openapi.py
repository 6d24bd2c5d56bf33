"""The OpenAPI document: every route's error answers and the two ways to send a key.

FastAPI documents only its own 422 (with a body shape facesearch never sends). Here each operation
gets the one error shape, ``ErrorBody``, under every status it can answer, with the codes of each
status listed (``x-error-codes`` too, for generators). The codes are derived from what a route
depends on (a key, the admin key, a domain, a photo upload, parameters), plus the few a route adds
of its own (``EXTRA``), so a new route is documented without being listed here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import fastapi.routing
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from .. import errors as e
from .schemas import ErrorBody
from .state import admin, caller, domain

SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "`Authorization: Bearer <key>`: the admin key or a domain key."},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "The same key in the `X-API-Key` header."},
}
SECURITY = [{"bearer": []}, {"apiKey": []}]

# (status, code, what it means)
Code = tuple[int, str, str]


def _c(error: type[e.FacesearchError], meaning: str) -> Code:
    return (error.status, error.code, meaning)


INTERNAL: Code = (500, "internal_error", "An unexpected server error (see the server log).")
INVALID_REQUEST: Code = (422, "invalid_request", "A parameter or the JSON body is invalid.")
KEY = [_c(e.Unauthorized, "No API key, or an unknown or revoked one."),
       _c(e.DatabaseUnavailable, "The database is unavailable; retry after Retry-After seconds "
          "(an enrollment can be re-sent as is)."),
       _c(e.StoreError, "The gallery store cannot be used (e.g. its files unreadable).")]
ADMIN = [_c(e.Forbidden, "This needs the admin key.")]
DOMAIN = [_c(e.Forbidden, "The key belongs to another domain."),
          _c(e.NotFound, "No such domain (or person, face, key of the path)."),
          _c(e.InvalidName, "The domain name is not valid.")]
PHOTO = [_c(e.BadRequest, "No photo, too many, or a malformed multipart body."),
         _c(e.UploadTooLarge, "The request body is over FACESEARCH_MAX_UPLOAD_MB."),
         _c(e.ImageTooLarge, "Over FACESEARCH_MAX_PIXELS, or a decompression bomb."),
         _c(e.UnsupportedMediaType, "Not multipart/form-data nor an image body."),
         _c(e.UnsupportedImage, "Not an image format facesearch reads."),
         _c(e.InvalidImage, "A corrupt or truncated image."),
         _c(e.ModelError, "The face model is loading or its worker stopped; retry.")]
CONFLICT = _c(e.Conflict, "The name is taken.")
NOT_FOUND = _c(e.NotFound, "No such domain, person, face or key.")
INVALID_NAME = _c(e.InvalidName, "The name is not valid.")

# What a route answers beyond what its dependencies imply, by endpoint function name.
EXTRA: dict[str, list[Code]] = {
    "create_domain": [CONFLICT, INVALID_NAME, _c(e.InvalidModel, "An unknown or unusable model.")],
    "delete_domain": [NOT_FOUND, INVALID_NAME],
    "revoke_key": [NOT_FOUND],
    "create_person": [CONFLICT, INVALID_NAME],
    "update_person": [CONFLICT, INVALID_NAME],
    "enroll_person": [_c(e.NothingEnrolled, "Every photo was refused (reasons in details).")],
    "enroll_by_name": [INVALID_NAME, _c(e.NothingEnrolled, "Every photo was refused (reasons in "
                                                           "details).")],
    "verify": [_c(e.NoFace, "No face in one of the photos."),
               _c(e.InvalidModel, "An unknown or unusable model."), *DOMAIN],
    "readyz": [(503, "not_ready", "The database or the model workers are not ready (the body also "
                                  "says which: database, workers).")],
}


def _calls(dependant: Dependant) -> set[Callable[..., Any]]:
    found: set[Callable[..., Any]] = set()
    for dep in dependant.dependencies:
        if dep.call is not None:
            found.add(dep.call)
        found |= _calls(dep)
    return found


def api_routes(app: FastAPI) -> Iterator[APIRoute]:
    """The app's API routes, those of included routers too (FastAPI >= 0.13x keeps those behind
    a wrapper in ``app.routes``)."""
    contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    routes = [c.original_route for c in contexts(app.routes)] if contexts else app.routes
    yield from (r for r in routes if isinstance(r, APIRoute))


def route_codes(route: APIRoute) -> list[Code]:
    """Every error a route can answer, from its dependencies and ``EXTRA``."""
    calls = _calls(route.dependant)
    codes: list[Code] = [INTERNAL]
    if calls & {caller, admin, domain}:
        codes += KEY
    if admin in calls:
        codes += ADMIN
    if domain in calls:
        codes += DOMAIN
    if "requestBody" in (route.openapi_extra or {}):
        codes += PHOTO
    d = route.dependant
    if d.path_params or d.query_params or d.body_params:
        codes.append(INVALID_REQUEST)
    codes += EXTRA.get(route.name, [])
    first = {(status, code): (status, code, meaning) for status, code, meaning in reversed(codes)}
    return sorted(first.values())


def _responses(codes: Iterable[Code]) -> dict[str, dict]:
    by_status: dict[int, list[Code]] = {}
    for code in codes:
        by_status.setdefault(code[0], []).append(code)
    out = {}
    for status in sorted(by_status):
        listed = by_status[status]
        out[str(status)] = {
            "description": "; ".join(f"`{c}`: {meaning}" for _, c, meaning in listed),
            "x-error-codes": [c for _, c, _ in listed],
            "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ErrorBody"},
                "examples": {c: {"summary": meaning,
                                 "value": {"error": {"code": c, "message": meaning}}}
                             for _, c, meaning in listed}}},
        }
    return out


def document_api(app: FastAPI) -> None:
    """Make ``app.openapi()`` describe the errors and the security schemes. Call it once the
    routes are added."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas.update(ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
                       .pop("$defs", {}))
        schemas["ErrorBody"] = ErrorBody.model_json_schema(
            ref_template="#/components/schemas/{model}")
        # FastAPI's own validation body: facesearch answers ErrorBody instead.
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        components["securitySchemes"] = SECURITY_SCHEMES
        for route in api_routes(app):
            if not route.include_in_schema:
                continue
            codes = route_codes(route)
            for method in route.methods:
                op = schema["paths"][route.path_format].get(method.lower())
                if op is None:
                    continue
                responses = op.setdefault("responses", {})
                responses.pop("422", None)
                responses.update(_responses(codes))
                if any(c == "unauthorized" for _, c, _ in codes):
                    op["security"] = SECURITY
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    # Built now, all routes being added: FastAPI's /openapi.json handler holds the original
    # method, which returns app.openapi_schema when set.
    openapi()


def documented_codes(schema: dict[str, Any], method: str, path: str) -> dict[int, list[str]]:
    """The error codes the document lists for one operation, by status (for tests and clients)."""
    op = schema["paths"][path][method.lower()]
    return {int(s): r["x-error-codes"] for s, r in op["responses"].items() if "x-error-codes" in r}
