"""SFace (2021dec, OpenCV Zoo): a MobileFaceNet trained with the SFace loss, 128-d embeddings,
run by onnxruntime on the 112 x 112 crop OpenCV's ``FaceRecognizerSF.alignCrop`` cuts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Embedder, Face, l2_normalize
from .opencv_zoo import converted, session

WEIGHTS = "face_recognition_sface_2021dec_int8bq.onnx"
CROP = 112
# Where the 5 landmarks go in the crop (insightface's ArcFace template, as OpenCV uses it) and
# their mean, as OpenCV hard-codes it (modules/objdetect/src/face_recognize.cpp).
TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                     [41.5493, 92.3655], [70.7299, 92.2041]])
TEMPLATE_MEAN = np.array([56.0262, 71.9008])


def similarity_transform(points: np.ndarray) -> np.ndarray:
    """The 2 x 3 similarity (rotation, uniform scale, shift) taking 5 landmarks to
    :data:`TEMPLATE` in the least-squares sense (Umeyama), computed as OpenCV's
    ``getSimilarityTransformMatrix`` does, down to its float32 steps, so the crop is OpenCV's."""
    f32 = np.float32
    src = np.asarray(points, dtype=f32).reshape(5, 2)
    dst = TEMPLATE.astype(f32)
    src_mean = (src.sum(axis=0, dtype=f32) / f32(5)).astype(f32)
    src_demean = (src - src_mean).astype(f32)
    dst_demean = (dst - TEMPLATE_MEAN.astype(f32)).astype(f32)

    def mean_of_products(a: np.ndarray, b: np.ndarray) -> float:
        # float32 products, summed in float64 (C++: double += float * float)
        return float(np.sum((a * b).astype(f32), dtype=np.float64)) / 5

    a = np.array([[mean_of_products(dst_demean[:, i], src_demean[:, j]) for j in (0, 1)]
                  for i in (0, 1)])
    d = np.array([1.0, -1.0 if a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0] < 0 else 1.0])
    u, s, vt = np.linalg.svd(a)
    rank = int(np.sum(s > s.max() * 2 * np.finfo(f32).tiny))
    if rank == 0:
        raise ValueError("degenerate landmarks")
    if rank == 1:
        rot = u @ vt if np.linalg.det(u) * np.linalg.det(vt) > 0 else u @ np.diag([1.0, -1.0]) @ vt
    else:
        rot = u @ np.diag(d) @ vt
    var = mean_of_products(src_demean[:, 0], src_demean[:, 0]) + mean_of_products(
        src_demean[:, 1], src_demean[:, 1])
    scale = 1.0 / var * (s * d).sum()
    shift = TEMPLATE_MEAN.astype(f32).astype(np.float64) - scale * (rot @ src_mean.astype(np.float64))
    return np.column_stack([scale * rot, shift])


def align(image: np.ndarray, landmarks: list[tuple[float, float]]) -> np.ndarray:
    """The face's 112 x 112 crop, eyes and mouth on the template (OpenCV's ``alignCrop``)."""
    import cv2

    return cv2.warpAffine(image, similarity_transform(np.array(landmarks)), (CROP, CROP),
                          flags=cv2.INTER_LINEAR)


class SFace(Embedder):
    """``sface-2021dec``: 128-d, compared by cosine distance. Needs YuNet's landmark order."""

    name = "sface-2021dec"
    dim = 128

    def __init__(self, cache: Path, *, threads: int = 1) -> None:
        import cv2

        cv2.setNumThreads(1)  # only warpAffine on 112 px crops: no thread pool worth its start-up
        self._path = converted(WEIGHTS, cache, dynamic="batch")
        self._threads = max(1, threads)
        self._sessions = {self._threads: session(self._path, self._threads)}
        self._lend = 0

    def set_threads(self, threads: int) -> None:
        self._lend = threads

    def crops(self, items: list[tuple[np.ndarray, list[Face]]]) -> np.ndarray:
        """The aligned RGB crops of every face of ``items``: uint8 ``(n, 112, 112, 3)``."""
        return np.stack([align(image, face.landmarks) for image, faces in items for face in faces])

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """Embeddings of aligned crops (see :meth:`crops`), L2-normalized."""
        threads = self._lend or self._threads
        if threads not in self._sessions:  # a second session, made when first lent more cores
            self._sessions[threads] = session(self._path, threads)
        # The graph does SFace's own scaling; it takes RGB planes of 0..255, as OpenCV feeds it.
        blob = np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32)
        # One face a call: onnxruntime runs this network ~15 % slower per face in batches of 8.
        run = self._sessions[threads].run
        return l2_normalize(np.concatenate([run(None, {"data": blob[i:i + 1]})[0]
                                            for i in range(len(blob))]))

    def embed_batch(self, items: list[tuple[np.ndarray, list[Face]]]) -> np.ndarray:
        return self.embed_crops(self.crops(items))
