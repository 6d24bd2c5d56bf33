"""A recognize threshold for a gallery DeepFace embedded, queried with facesearch's embeddings.

DeepFace and facesearch run the same network (Dlib's ResNet) on differently cut faces: DeepFace
crops its detector's box (opencv's Haar cascade by default) and rotates it level; facesearch
aligns on dlib's five landmarks. One photo embedded both ways lands a small distance apart (the
*offset*, measured per photo), so a query from facesearch sits that much further from DeepFace's
gallery than from its own, and the model's threshold, set for one pipeline, names too few.

The threshold is re-set from the imported gallery itself: some of its photos, where they can still
be read, are embedded by facesearch; the distances between the two embeddings of each give the
offset, and the threshold becomes the model's plus the median offset, but no more than lets
``IMPOSTOR_QUANTILE`` of those photos find *someone else* in the gallery (each photo's nearest
other person stands for a stranger: facesearch's thresholds are set for a 1 % false-accept rate).
bench/bench_migrated.py measures it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_PHOTOS = 10  # fewer re-embedded photos than this: too few to tell the offset
IMPOSTOR_QUANTILE = 0.01


@dataclass(frozen=True)
class Calibration:
    photos: int  # gallery photos embedded by both pipelines
    offset_median: float
    offset_p90: float
    threshold: float  # the recognize threshold for the domain
    capped: bool  # the impostor distances held the threshold down


def calibrate(theirs: Sequence[np.ndarray], ours: Sequence[np.ndarray], gallery: np.ndarray,
              labels: np.ndarray, model_threshold: float) -> Calibration | None:
    """``theirs[i]`` and ``ours[i]``: one photo embedded by DeepFace and by facesearch (unit
    vectors); ``gallery`` / ``labels``: the imported faces and their people. None when fewer than
    :data:`MIN_PHOTOS` photos were embedded both ways."""
    if len(ours) < MIN_PHOTOS:
        return None
    a, b = np.stack(theirs).astype(np.float64), np.stack(ours).astype(np.float64)
    offsets = 1 - np.sum(a * b, axis=1)
    median, p90 = float(np.median(offsets)), float(np.quantile(offsets, 0.9))
    # Each of our embeddings against the gallery's faces of other people than its own photo's.
    own = np.array([labels[int(np.argmax(gallery @ v))] for v in a])  # the photo's own row's person
    distances = 1 - b @ gallery.T.astype(np.float64)
    distances[own[:, None] == labels[None, :]] = np.inf
    impostors = distances.min(axis=1)  # each photo's nearest other person: a stranger's answer
    impostors = impostors[np.isfinite(impostors)]
    threshold = model_threshold + median
    cap = float(np.quantile(impostors, IMPOSTOR_QUANTILE)) if impostors.size else threshold
    capped = cap < threshold
    threshold = round(max(model_threshold, min(threshold, cap)), 4)
    return Calibration(len(b), round(median, 4), round(p90, 4), threshold, capped)
