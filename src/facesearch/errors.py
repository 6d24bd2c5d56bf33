"""Errors a user can act on. Each carries a stable code and the HTTP status it maps to.

They are raised in worker processes too, so they must pickle: keep the constructor to one message.
"""

from __future__ import annotations


class FacesearchError(Exception):
    """Base class: a clear message for the user; ``code`` and ``status`` for the API."""

    code = "error"
    status = 400
    details: object = None  # extra JSON for the API's error body (e.g. per-photo reasons)

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadRequest(FacesearchError):
    """A malformed request (e.g. a broken multipart body, a missing field)."""

    code = "bad_request"
    status = 400


class Unauthorized(FacesearchError):
    code = "unauthorized"
    status = 401


class Forbidden(FacesearchError):
    code = "forbidden"
    status = 403


class UploadTooLarge(FacesearchError):
    """The request body is over the upload limit."""

    code = "upload_too_large"
    status = 413


class UnsupportedMediaType(FacesearchError):
    """The request body is not multipart/form-data or an image."""

    code = "unsupported_media_type"
    status = 415


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


class SeveralFaces(FacesearchError):
    """Several faces where one was expected, and no say which."""

    code = "several_faces"
    status = 422


class NothingEnrolled(FacesearchError):
    """Every photo of an enrollment was refused (the reasons go in ``details``)."""

    code = "nothing_enrolled"
    status = 422


class InvalidName(FacesearchError):
    code = "invalid_name"
    status = 422


class InvalidModel(FacesearchError):
    """A model name facesearch does not know, or one that cannot load here (e.g. DeepFace's
    weights are missing): the message lists the models there are."""

    code = "invalid_model"
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


class DatabaseUnavailable(StoreError):
    """The database stopped answering mid-service (down, restarting, connection killed): retry
    after the ``Retry-After`` seconds (see store/resilience.py for the time bounds)."""

    code = "database_unavailable"
    status = 503


class ModelError(FacesearchError):
    """The face model could not be loaded or its worker died."""

    code = "model_unavailable"
    status = 503


# -- the model pool's admission and limits (inference/pool.py, service/limits.py) --------------

class TaskTimeout(ModelError):
    """A photo ran past FACESEARCH_TASK_TIMEOUT in a worker, which was killed and replaced."""

    code = "model_timeout"
    status = 504


class Overloaded(FacesearchError):
    """The domain's queue in front of the model workers is full: try again after ``retry_after``."""

    code = "overloaded"
    status = 503
    retry_after: int = 1  # seconds, sent as the Retry-After header


class PhotoRefused(FacesearchError):
    """A photo that stopped a model worker several times is not tried again."""

    code = "photo_refused"
    status = 422


class TooManyPhotos(FacesearchError):
    code = "too_many_photos"
    status = 413


class TooManyPixels(FacesearchError):
    """The photos of one request add up to more megapixels than one request may use."""

    code = "too_many_pixels"
    status = 413


class ClientGone(FacesearchError):
    """The client closed the connection before the answer: its queued work was dropped."""

    code = "client_closed_request"
    status = 499
