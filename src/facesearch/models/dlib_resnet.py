"""dlib's face pipeline: HOG (or MMOD CNN) detector, 5-point landmarks, ResNet-34 embedding.

Weights come from the ``face-recognition-models`` package (installed from PyPI with facesearch);
nothing is downloaded. The ResNet runs in dlib itself or, with ``runtime="onnx"``, as an ONNX graph
converted from the same weights file (see :mod:`facesearch.models.dlib_onnx`).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import dlib
import numpy as np
from PIL import Image

from ..errors import ModelError
from .base import MIN_FACE, Box, Detector, Embedder, Face, Pipeline, cache_path, l2_normalize

CHIP_SIZE = 150  # the ResNet's input, as in dlib's dnn_face_recognition_ex.cpp
CHIP_PADDING = 0.25

# dlib's detectors (HOG and MMOD) find faces of about 80 px and up. Finding smaller ones means
# upsampling the photo, each doubling costing ~4x the time (HOG on a 250 px photo: ~8 ms as it is,
# ~29 ms upsampled once), so a photo is upsampled only as far as ``min_face`` asks and the work
# image stays within DETECT_MAX_SIDE. Photos larger than that are searched on a copy scaled down
# to it (the boxes are mapped back), which keeps detection time bounded for 12+ MP uploads.
DETECTOR_MIN_FACE = 80
DETECT_MAX_SIDE = 1600


def upsampling(side: int, min_face: int) -> int:
    """How many times to double a photo whose longer side is ``side`` px so that faces of
    ``min_face`` px can be found, within DETECT_MAX_SIDE."""
    times = 0
    while DETECTOR_MIN_FACE / 2**times > min_face and side * 2 ** (times + 1) <= DETECT_MAX_SIDE:
        times += 1
    return times


class DlibDetector(Detector):
    """``hog`` or ``cnn``: dlib's HOG (or MMOD CNN) detector with its 5-point landmarks (the
    outer and inner corners of each eye, then under the nose)."""

    def __init__(self, detector: str, cache: Path) -> None:
        if detector == "hog":
            self._hog = frontal_face_detector(cache)
            self._cnn = None
        elif detector == "cnn":
            self._hog = None
            self._cnn = dlib.cnn_face_detection_model_v1(str(weights_file("mmod_human_face_detector")))
        else:
            raise ModelError(f"unknown detector {detector!r}: use 'hog' or 'cnn'")
        self.name = detector
        self._landmarks = landmark_predictor()

    def detect(self, image: np.ndarray, *, min_face: int = MIN_FACE,
               largest: bool = False) -> list[Face]:
        [(faces, _)] = self.detect_batch([image], min_face=min_face, largest=largest)
        return faces

    def detect_batch(self, images: list[np.ndarray], *, min_face: int = MIN_FACE,
                     largest: bool = False, max_faces: int | None = None,
                     ) -> list[tuple[list[Face], int]]:
        # Boxes of every image first, then landmarks of the faces kept: the landmark model (6 MB)
        # stays in the CPU cache across consecutive calls, each ~3x faster than after a HOG scan.
        found = [self._boxes(image, min_face, largest) for image in images]
        results = []
        for image, boxes in zip(images, found, strict=True):
            faces = [Face(box=box, score=score, landmarks=[
                (float(p.x), float(p.y)) for p in self._landmarks(image, rect).parts()])
                for rect, box, score in boxes[:max_faces]]
            results.append((faces, len(boxes)))
        return results

    def _boxes(self, image: np.ndarray, min_face: int,
               largest: bool) -> list[tuple[dlib.rectangle, Box, float]]:
        """The faces' rectangles in ``image`` (dlib's, and clipped to the image), largest first."""
        height, width = image.shape[:2]
        side = max(height, width)
        scale, upsample, work = 1.0, 0, image
        if side > DETECT_MAX_SIDE:
            scale = DETECT_MAX_SIDE / side
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            work = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        else:
            upsample = upsampling(side, min_face)

        rects: list[tuple[dlib.rectangle, float]] = []
        if largest and upsample:
            # Any face found without upsampling is larger than every face upsampling adds, so
            # the (4x dearer) small-face search runs only when there is no large face.
            rects = self._find(work, 0)
        if not rects:
            rects = self._find(work, upsample)

        boxes = []
        for rect, score in rects:
            if scale != 1.0:
                rect = dlib.rectangle(round(rect.left() / scale), round(rect.top() / scale),
                                      round(rect.right() / scale), round(rect.bottom() / scale))
            box = _clip(rect, width, height)
            if box.w >= 2 and box.h >= 2:
                boxes.append((rect, box, float(score)))
        boxes.sort(key=lambda b: b[1].area, reverse=True)
        return boxes

    def _find(self, work: np.ndarray, upsample: int) -> list[tuple[dlib.rectangle, float]]:
        if self._hog is not None:
            found, scores, _ = self._hog.run(work, upsample, 0.0)
            return list(zip(found, scores, strict=True))
        return [(d.rect, d.confidence) for d in self._cnn(work, upsample)]


class DlibResNetEmbedder(Embedder):
    """``dlib-resnet-v1``: dlib's ResNet-34 on a 150 px chip cut from dlib's 5-point landmarks;
    128-d, 99.38 % on LFW as published by dlib. ``own_landmarks``: the faces come from another
    detector, so dlib's landmarks are found first in each face's box."""

    name = "dlib-resnet-v1"
    dim = 128

    def __init__(self, cache: Path, *, runtime: str = "onnx", threads: int = 1,
                 own_landmarks: bool = False) -> None:
        weights = weights_file("dlib_face_recognition_resnet_model_v1")
        if runtime == "dlib":
            self._dlib_net = dlib.face_recognition_model_v1(str(weights))
            self._onnx = None
        elif runtime == "onnx":
            from .dlib_onnx import OnnxFaceEncoder

            self._dlib_net = None
            self._onnx = OnnxFaceEncoder(weights, cache, threads=threads)
        else:
            raise ModelError(f"unknown runtime {runtime!r}: use 'dlib' or 'onnx'")
        self._landmarks = landmark_predictor() if own_landmarks else None
        self._threads = 0  # set_threads: 0 = the encoder's own count

    def set_threads(self, threads: int) -> None:
        # Only the ONNX embedding runs threaded (dlib's HOG and landmarks are single-threaded).
        self._threads = threads

    def embed_batch(self, items: list[tuple[np.ndarray, list[Face]]]) -> np.ndarray:
        """One network call for the faces of all ``items`` (enrollment sends several photos)."""
        if self._landmarks is not None:
            items = [(image, [self._with_dlib_landmarks(image, f) for f in faces])
                     for image, faces in items]
        chips, _ = face_chips(items, CHIP_SIZE)
        if not chips:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._onnx is not None:
            vectors = self._onnx.embed(np.stack(chips), threads=self._threads)
        else:
            vectors = np.array(self._dlib_net.compute_face_descriptor(chips), dtype=np.float32)
        return l2_normalize(vectors)

    def _with_dlib_landmarks(self, image: np.ndarray, face: Face) -> Face:
        b = face.box
        rect = dlib.rectangle(b.x, b.y, b.x + b.w - 1, b.y + b.h - 1)
        points = [(float(p.x), float(p.y)) for p in self._landmarks(image, rect).parts()]
        return Face(box=b, score=face.score, landmarks=points)


class DlibResNet(Pipeline):
    """dlib's whole pipeline: :class:`DlibDetector` and :class:`DlibResNetEmbedder`."""

    name = "dlib-resnet-v1"
    dim = 128

    def __init__(self, *, detector: str = "hog", runtime: str = "onnx",
                 cache_dir: str | None = None, threads: int = 1) -> None:
        cache = cache_path(cache_dir)
        super().__init__(DlibDetector(detector, cache),
                         DlibResNetEmbedder(cache, runtime=runtime, threads=threads))


def landmark_predictor() -> dlib.shape_predictor:
    return dlib.shape_predictor(str(weights_file("shape_predictor_5_face_landmarks")))


def face_chips(items: list[tuple[np.ndarray, list[Face]]], size: int,
               padding: float = CHIP_PADDING) -> tuple[list[np.ndarray], list[Face]]:
    """Each face of each image cut out upright and square (eyes level) at ``size`` px, by dlib
    from its 5 landmarks, with the faces in the same order."""
    chips: list[np.ndarray] = []
    faces: list[Face] = []
    for image, image_faces in items:
        if not image_faces:
            continue
        shapes = dlib.full_object_detections()
        for face in image_faces:
            shapes.append(_shape_from_landmarks(face))
        chips += [np.asarray(c) for c in dlib.get_face_chips(image, shapes, size=size, padding=padding)]
        faces += image_faces
    return chips, faces


def weights_file(name: str) -> Path:
    """``name``.dat of the ``face-recognition-models`` package, found without importing it (its
    ``pkg_resources`` import costs every worker ~0.2 s of start-up)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the face-recognition-models package is missing: "
                         "pip install face-recognition-models")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / f"{name}.dat"
    if not path.is_file():
        raise ModelError(f"{path} is missing: reinstall face-recognition-models")
    return path


def frontal_face_detector(cache: Path) -> dlib.fhog_object_detector:
    """dlib's HOG face detector. dlib builds it from text in ~0.9 s, so every worker start-up
    loads a saved copy instead (~4 ms, the same detector), saved on first use."""
    path = cache / f"dlib_{dlib.__version__}_frontal_face_detector.svm"
    if path.is_file():
        try:
            return dlib.fhog_object_detector(str(path))
        except RuntimeError:  # a damaged copy: made again below
            pass
    detector = dlib.get_frontal_face_detector()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        detector.save(str(tmp))
        os.replace(tmp, path)  # whole or absent, also with several workers starting at once
    except (OSError, RuntimeError):  # a read-only cache only costs start-up time
        tmp.unlink(missing_ok=True)
    return detector


def _clip(rect: dlib.rectangle, width: int, height: int) -> Box:
    left, top = max(0, rect.left()), max(0, rect.top())
    right, bottom = min(width, rect.right() + 1), min(height, rect.bottom() + 1)
    return Box(x=left, y=top, w=max(0, right - left), h=max(0, bottom - top))


def _shape_from_landmarks(face: Face) -> dlib.full_object_detection:
    """Rebuild dlib's shape from plain landmarks: the chip depends only on the landmark points,
    which are whole pixels in dlib, so this is exact and keeps the model stateless."""
    b = face.box
    rect = dlib.rectangle(b.x, b.y, b.x + b.w - 1, b.y + b.h - 1)
    points = dlib.points()
    for x, y in face.landmarks:
        points.append(dlib.point(round(x), round(y)))
    return dlib.full_object_detection(rect, points)
