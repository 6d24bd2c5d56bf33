"""YuNet (2023mar, libfacedetection / OpenCV Zoo): a 75k-parameter anchor-free face detector with
5 landmarks, run by onnxruntime. The decoding and NMS are OpenCV's ``FaceDetectorYN``'s
(modules/objdetect/src/face_detect.cpp), in NumPy, so the faces equal OpenCV's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .base import MIN_FACE, Box, Detector, Face
from .opencv_zoo import converted, session

WEIGHTS = "face_detection_yunet_2023mar_int8bq.onnx"
STRIDES = (8, 16, 32)
# Chosen on LFW (docs/BENCHMARKS.md): at 0.6 YuNet finds a face in every one of the 13,233 photos
# (at OpenCV's default 0.9 it misses 132); NMS as OpenCV's default.
SCORE_THRESHOLD = 0.6
NMS_THRESHOLD = 0.3
TOP_K = 5000
# Photos are searched at their own size up to this longer side, larger ones on a copy scaled down
# to it (boxes mapped back): YuNet's cost grows with the pixels (~2 ms at 250 px, ~25 ms at 1000),
# and at 1,600 px a 4,000 px photo's 100 px faces are still 40 px, which YuNet finds.
DETECT_MAX_SIDE = 1600
# A box may be this much narrower than ``min_face`` and still count (boxes of one face vary).
MIN_FACE_SLACK = 0.9
# With ``largest``, faces smaller than this share of the largest are not reported.
LARGEST_SHARE = 0.5


class YuNet(Detector):
    """``yunet``: boxes, scores and 5 landmarks (the eyes, the nose tip, the mouth's corners; the
    person's right eye first)."""

    name = "yunet"

    def __init__(self, cache: Path, *, threads: int = 1,
                 score_threshold: float = SCORE_THRESHOLD) -> None:
        self._path = converted(WEIGHTS, cache, dynamic="size")
        self._threads = max(1, threads)
        self._session = session(self._path, self._threads)
        self._score_threshold = score_threshold

    def detect(self, image: np.ndarray, *, min_face: int = MIN_FACE,
               largest: bool = False) -> list[Face]:
        height, width = image.shape[:2]
        side = max(height, width)
        scale, work = 1.0, image
        if side > DETECT_MAX_SIDE:
            scale = DETECT_MAX_SIDE / side
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            work = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        faces = []
        for row in self.raw(work):
            x, y, w, h = (float(v) / scale for v in row[:4])
            if max(w, h) < min_face * MIN_FACE_SLACK:
                continue
            box = _clip(x, y, w, h, width, height)
            if box.w < 2 or box.h < 2:
                continue
            points = [(float(row[4 + 2 * i]) / scale, float(row[5 + 2 * i]) / scale) for i in range(5)]
            faces.append(Face(box=box, score=float(row[14]), landmarks=points))
        faces.sort(key=lambda f: f.box.area, reverse=True)
        if largest and faces:
            # Only the largest face matters (enrollment, verify): faces under half its size are
            # bystanders, not a second candidate, as dlib's search for large faces first implies.
            big = max(faces[0].box.w, faces[0].box.h) * LARGEST_SHARE
            faces = [f for f in faces if max(f.box.w, f.box.h) >= big]
        return faces

    def raw(self, image: np.ndarray) -> np.ndarray:
        """OpenCV's ``FaceDetectorYN.detect`` rows for an RGB image at its own size: ``(n, 15)``
        float32 of x, y, w, h, 5 landmark (x, y) pairs and the score, best score first."""
        height, width = image.shape[:2]
        pad_h, pad_w = -(-height // 32) * 32, -(-width // 32) * 32
        blob = np.zeros((1, 3, pad_h, pad_w), dtype=np.float32)
        blob[0, :, :height, :width] = image[:, :, ::-1].transpose(2, 0, 1)  # BGR, as trained
        outputs = dict(zip([o.name for o in self._session.get_outputs()],
                           self._session.run(None, {"input": blob}), strict=True))
        rows = []
        for stride in STRIDES:
            cols = pad_w // stride
            cls = np.clip(outputs[f"cls_{stride}"][0, :, 0], 0, 1)
            obj = np.clip(outputs[f"obj_{stride}"][0, :, 0], 0, 1)
            score = np.sqrt(cls * obj)
            keep = np.flatnonzero(score >= self._score_threshold)
            if not keep.size:
                continue
            c = (keep % cols).astype(np.float32)
            r = (keep // cols).astype(np.float32)
            bbox = outputs[f"bbox_{stride}"][0, keep]
            kps = outputs[f"kps_{stride}"][0, keep]
            cx, cy = (c + bbox[:, 0]) * stride, (r + bbox[:, 1]) * stride
            w, h = np.exp(bbox[:, 2]) * stride, np.exp(bbox[:, 3]) * stride
            points = np.empty((keep.size, 10), dtype=np.float32)
            points[:, 0::2] = (kps[:, 0::2] + c[:, None]) * stride
            points[:, 1::2] = (kps[:, 1::2] + r[:, None]) * stride
            rows.append(np.column_stack([cx - w / 2, cy - h / 2, w, h, points, score[keep]]))
        if not rows:
            return np.zeros((0, 15), dtype=np.float32)
        found = np.concatenate(rows).astype(np.float32)
        return found[nms(found[:, :4], found[:, 14], NMS_THRESHOLD, TOP_K)]

    def set_threads(self, threads: int) -> None:
        # YuNet is small: a second thread saves little on one photo, so it keeps its own count.
        return None


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, top_k: int) -> list[int]:
    """Greedy non-maximum suppression as OpenCV's ``dnn::NMSBoxes`` (boxes x, y, w, h; IoU over
    ``threshold`` suppresses; best score first; at most ``top_k`` kept)."""
    order = np.argsort(-scores, kind="stable")
    x1, y1 = boxes[:, 0], boxes[:, 1]
    x2, y2 = x1 + boxes[:, 2], y1 + boxes[:, 3]
    areas = boxes[:, 2] * boxes[:, 3]
    kept: list[int] = []
    for i in order:
        if len(kept) >= top_k:
            break
        if kept:
            k = np.array(kept)
            iw = np.maximum(0, np.minimum(x2[i], x2[k]) - np.maximum(x1[i], x1[k]))
            ih = np.maximum(0, np.minimum(y2[i], y2[k]) - np.maximum(y1[i], y1[k]))
            inter = iw * ih
            if np.any(inter / (areas[i] + areas[k] - inter) > threshold):
                continue
        kept.append(int(i))
    return kept


def _clip(x: float, y: float, w: float, h: float, width: int, height: int) -> Box:
    left, top = max(0, round(x)), max(0, round(y))
    right, bottom = min(width, round(x + w)), min(height, round(y + h))
    return Box(x=left, y=top, w=max(0, right - left), h=max(0, bottom - top))
