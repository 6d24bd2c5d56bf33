"""Errors a user can act on. Each carries a stable code and the HTTP status it maps to.

They are raised in worker processes too, so they must pickle: keep the constructor to one message.
"""

from __future__ import annotations


class FacesearchError(Exception):
    """Base class: a clear message for the user; ``code`` and ``status`` for the API."""

    code = "error"
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UnsupportedImage(FacesearchError):
    """The bytes are not an image format we read (text, PDF, empty...)."""

    code = "unsupported_image"
    status = 415


class InvalidImage(FacesearchError):
    """A known image format, but corrupt or truncated."""

    code = "invalid_image"
    status = 422


class ImageTooLarge(FacesearchError):
    """Over the pixel limit, or a decompression bomb."""

    code = "image_too_large"
    status = 413


class NoFace(FacesearchError):
    code = "no_face"
    status = 422


class InvalidName(FacesearchError):
    code = "invalid_name"
    status = 422


class NotFound(FacesearchError):
    code = "not_found"
    status = 404


class Conflict(FacesearchError):
    code = "conflict"
    status = 409


class StoreError(FacesearchError):
    """The database is unreachable or unusable (e.g. no pgvector)."""

    code = "store_unavailable"
    status = 503


class ModelError(FacesearchError):
    """The face model could not be loaded or its worker died."""

    code = "model_unavailable"
    status = 503
