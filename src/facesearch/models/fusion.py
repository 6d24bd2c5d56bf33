"""Two embedders as one: each face's unit vectors concatenated and divided by sqrt(2), so the
result is a unit vector whose cosine distance to another is exactly the mean of the two models'
distances, and one HNSW index serves it."""

from __future__ import annotations

import math

import numpy as np

from .base import Embedder, Face


class Fusion(Embedder):
    def __init__(self, name: str, *parts: Embedder) -> None:
        self.name, self.parts = name, parts
        self.dim = sum(p.dim for p in parts)

    def embed_batch(self, items: list[tuple[np.ndarray, list[Face]]]) -> np.ndarray:
        vectors = np.concatenate([p.embed_batch(items) for p in self.parts], axis=1)
        return (vectors / math.sqrt(len(self.parts))).astype(np.float32)

    def set_threads(self, threads: int) -> None:
        for part in self.parts:
            part.set_threads(threads)
