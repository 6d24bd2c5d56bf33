"""Request and response bodies of the v1 API (they also make the OpenAPI docs at /docs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from .bounded import Metadata


class ErrorDetail(BaseModel):
    code: str = Field(examples=["no_face"])
    message: str
    details: Any | None = None


class ErrorBody(BaseModel):
    """Every error, on every route."""

    error: ErrorDetail


class DomainCreate(BaseModel):
    name: str = Field(examples=["slovenia"], description="Letters, digits, '.', '_', '-'; 1-63.")
    model: str | None = Field(None, examples=["sface-2021dec"], description=(
        "The model its faces are embedded and searched with; default: the server's "
        "FACESEARCH_MODEL. Photos are not kept, so changing it later means enrolling them again "
        "(facesearch domains set-model)."))
    keep_unknown: bool = Field(False, description=(
        "Keep faces recognize matches to nobody, to cluster and name later: biometric data of "
        "people never enrolled (README, 'Unknown faces')."))
    shard: str | None = Field(None, examples=["shard1"], description=(
        "Keep its faces on this shard (POST /v1/shards); default: on the primary."))


class DomainOut(BaseModel):
    name: str
    model: str = Field(description="What the domain enrolls and recognizes with.")
    people: int
    faces: int
    created_at: datetime
    keep_unknown: bool = False
    threshold: float | None = Field(None, description=(
        "The recognize threshold by default for the domain's model (a request's ?threshold= "
        "overrides it)."))
    shard: str | None = Field(None, description="The shard its faces are on; null: the primary.")


class DomainList(BaseModel):
    domains: list[DomainOut]


class KeyCreate(BaseModel):
    name: str = Field("default", max_length=100, description="A label to tell keys apart.")


class KeyOut(BaseModel):
    id: int
    name: str
    prefix: str = Field(description="The key's first characters, to recognize it.")
    created_at: datetime
    last_used_at: datetime | None = None


class KeyCreated(KeyOut):
    key: str = Field(description="The secret: shown only in this response.")


class KeyList(BaseModel):
    keys: list[KeyOut]


class PersonCreate(BaseModel):
    name: str = Field(examples=["Ana Novak"])
    metadata: Metadata = Field(default_factory=dict, description=(
        "A JSON object: at most FACESEARCH_MAX_METADATA_KB (16 KB), 8 levels, 256 keys."))


class PersonUpdate(BaseModel):
    name: str | None = None
    metadata: Metadata | None = Field(None, description="Replaces the stored metadata.")


class PersonOut(BaseModel):
    id: int
    name: str
    faces: int
    metadata: dict[str, Any]
    created_at: datetime
    thumbnail_face_id: int | None = Field(None, description=(
        "One of their faces that has a thumbnail (GET .../faces/{id}/thumbnail), or null."))


class PeoplePage(BaseModel):
    people: list[PersonOut]
    total: int
    limit: int
    offset: int
    next_offset: int | None = Field(None, description=(
        "The offset of the next page, null after the last. A page stops early when its people's "
        "JSON reaches FACESEARCH_MAX_PAGE_MB: page on from here, not from offset + limit."))


class Box(BaseModel):
    x: int
    y: int
    w: int
    h: int


class FaceOut(BaseModel):
    id: int
    person_id: int
    person: str
    model: str
    box: Box
    score: float | None
    photo_sha256: str
    created_at: datetime
    has_thumbnail: bool = Field(description="GET .../faces/{id}/thumbnail gives its JPEG crop.")


class FaceList(BaseModel):
    faces: list[FaceOut]


class EnrollResult(BaseModel):
    photo: str | None = Field(description="The uploaded file's name.")
    status: Literal["enrolled", "already_enrolled", "refused"]
    face_id: int | None = None
    box: Box | None = None
    faces_found: int | None = None
    error: ErrorDetail | None = None


class EnrollOut(BaseModel):
    person: PersonOut
    enrolled: int
    model: str = Field(description="The domain's model, which embedded the faces.")
    results: list[EnrollResult]


class DetectedFace(BaseModel):
    box: Box
    score: float
    landmarks: list[list[float]] = Field(description="5 points: eyes' corners and the nose base.")


class MatchOut(BaseModel):
    person_id: int
    name: str
    face_id: int
    distance: float = Field(description="Cosine distance; lower is closer.")
    similarity: float = Field(description="1 - distance.")


class RecognizedFace(DetectedFace):
    matches: list[MatchOut] = Field(description="Best first; empty when nobody is under the threshold.")
    unassigned_face_id: int | None = Field(None, description=(
        "Matched nobody and kept (the domain's keep_unknown): its id among the unassigned faces."))


class ImageSize(BaseModel):
    width: int
    height: int


class RecognizeOut(BaseModel):
    faces: list[RecognizedFace]
    faces_found: int = Field(description="Faces detected; only the largest max_faces are matched.")
    image: ImageSize
    model: str
    threshold: float
    top_k: int
    timings_ms: dict[str, float]


class VerifyOut(BaseModel):
    same_person: bool
    distance: float
    similarity: float
    threshold: float
    model: str
    faces: list[DetectedFace]
    timings_ms: dict[str, float]


class DetectOut(BaseModel):
    faces: list[DetectedFace]
    faces_found: int
    image: ImageSize
    timings_ms: dict[str, float]
