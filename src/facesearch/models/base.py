"""The contracts of the model room. Each network is one class that loads its weights once (in
``__init__``, in a worker process, never downloading) and then predicts:

- a :class:`Detector` turns an RGB image into faces (box, score, 5 landmarks);
- an :class:`Embedder` turns an image and its faces into one L2-normalized vector per face,
  cutting each face's aligned crop itself from the landmarks;
- a :class:`Pipeline` composes a detector and an embedder into a :class:`FaceModel`, the one thing
  the workers run (as insightface's ``FaceAnalysis`` composes its ``model_zoo`` networks).

Plain data types (NumPy only) so results cross process boundaries by pickle.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Box:
    """A face rectangle in pixels of the (EXIF-rotated) image."""

    x: int
    y: int
    w: int
    h: int

    @property
    def area(self) -> int:
        return self.w * self.h

    def as_dict(self) -> dict[str, int]:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h}


@dataclass
class Face:
    """One detected face: where, how sure, its 5 landmarks and (optionally) its embedding and a
    small JPEG crop of it (made by the model worker when asked, for enrollment)."""

    box: Box
    score: float
    landmarks: list[tuple[float, float]]
    embedding: np.ndarray | None = None  # float32, L2-normalized
    thumbnail: bytes | None = None  # JPEG, see imaging.face_thumbnail

    def as_dict(self) -> dict[str, object]:
        return {
            "box": self.box.as_dict(),
            "score": round(self.score, 4),
            "landmarks": [[round(x, 1), round(y, 1)] for x, y in self.landmarks],
        }


@dataclass
class Analysis:
    """Everything the model found in one photo, largest face first."""

    width: int
    height: int
    faces: list[Face]
    faces_found: int  # before the max_faces cut
    timings_ms: dict[str, float] = field(default_factory=dict)


# The smallest face looked for by default, in pixels: faces in group photos are this small.
MIN_FACE = 40


class FaceModel(ABC):
    """One face model: ``name`` and ``dim`` identify its embeddings in the gallery.

    Subclasses load their weights in ``__init__`` (once per worker process) and must never download.
    """

    name: str
    dim: int

    @abstractmethod
    def detect(self, image: np.ndarray, *, min_face: int = MIN_FACE,
               largest: bool = False) -> list[Face]:
        """Faces of an RGB ``(h, w, 3)`` uint8 image, largest first, with boxes, scores and
        landmarks. ``min_face``: the smallest face (px) to look for. ``largest``: only the largest
        face matters (enrollment, verify), so a model may skip the costly search for small faces
        when it has found a large one."""

    def detect_batch(self, images: list[np.ndarray], *, min_face: int = MIN_FACE,
                     largest: bool = False, max_faces: int | None = None,
                     ) -> list[tuple[list[Face], int]]:
        """:meth:`detect` for several images: for each, its first ``max_faces`` faces and how many
        were found. Models override this to skip work on the faces not kept, or to run each stage
        over the whole batch."""
        found = [self.detect(image, min_face=min_face, largest=largest) for image in images]
        return [(faces[:max_faces], len(faces)) for faces in found]

    @abstractmethod
    def embed(self, image: np.ndarray, faces: list[Face]) -> None:
        """Fill ``face.embedding`` (L2-normalized float32 of length ``dim``) for each face."""

    def set_threads(self, threads: int) -> None:
        """How many native threads the next calls may use: the pool lends a task every core when
        no other task is running. 0: as many as the model was loaded with. Models that cannot
        change it ignore this."""
        return None

    def embed_batch(self, items: list[tuple[np.ndarray, list[Face]]]) -> None:
        """:meth:`embed` for the faces of several images; models that batch override this."""
        for image, faces in items:
            self.embed(image, faces)


class Detector(ABC):
    """Finds faces. ``name`` says which network (it does not name an embedding space)."""

    name: str

    @abstractmethod
    def detect(self, image: np.ndarray, *, min_face: int = MIN_FACE,
               largest: bool = False) -> list[Face]:
        """See :meth:`FaceModel.detect`."""

    def detect_batch(self, images: list[np.ndarray], *, min_face: int = MIN_FACE,
                     largest: bool = False, max_faces: int | None = None,
                     ) -> list[tuple[list[Face], int]]:
        """See :meth:`FaceModel.detect_batch`."""
        found = [self.detect(image, min_face=min_face, largest=largest) for image in images]
        return [(faces[:max_faces], len(faces)) for faces in found]

    def set_threads(self, threads: int) -> None:
        """See :meth:`FaceModel.set_threads`."""
        return None


class Embedder(ABC):
    """Turns faces into vectors: ``name`` and ``dim`` identify its embeddings in the gallery."""

    name: str
    dim: int

    @abstractmethod
    def embed_batch(self, items: list[tuple[np.ndarray, list[Face]]]) -> np.ndarray:
        """The ``(n, dim)`` float32 L2-normalized embeddings of every face of ``items`` (image,
        its faces), in order: one network call for all of them."""

    def set_threads(self, threads: int) -> None:
        """See :meth:`FaceModel.set_threads`."""
        return None


class Pipeline(FaceModel):
    """A detector and an embedder as one :class:`FaceModel` named after the embedder."""

    def __init__(self, detector: Detector, embedder: Embedder) -> None:
        self.detector, self.embedder = detector, embedder
        self.name, self.dim = embedder.name, embedder.dim

    def detect(self, image: np.ndarray, *, min_face: int = MIN_FACE,
               largest: bool = False) -> list[Face]:
        return self.detector.detect(image, min_face=min_face, largest=largest)

    def detect_batch(self, images: list[np.ndarray], *, min_face: int = MIN_FACE,
                     largest: bool = False, max_faces: int | None = None,
                     ) -> list[tuple[list[Face], int]]:
        return self.detector.detect_batch(images, min_face=min_face, largest=largest,
                                          max_faces=max_faces)

    def embed(self, image: np.ndarray, faces: list[Face]) -> None:
        self.embed_batch([(image, faces)])

    def embed_batch(self, items: list[tuple[np.ndarray, list[Face]]]) -> None:
        faces = [face for _, image_faces in items for face in image_faces]
        if not faces:
            return
        vectors = self.embedder.embed_batch([(image, fs) for image, fs in items if fs])
        for face, vector in zip(faces, vectors, strict=True):
            face.embedding = vector

    def set_threads(self, threads: int) -> None:
        self.detector.set_threads(threads)
        self.embedder.set_threads(threads)


def cache_path(cache_dir: str | Path | None) -> Path:
    """Where converted models are kept: ``cache_dir``, else the user's cache directory."""
    import platformdirs

    return Path(cache_dir or platformdirs.user_cache_dir("facesearch"))


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Row-wise unit length, so cosine distance is ``1 - dot``."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
