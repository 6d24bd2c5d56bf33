"""Synthetic face embeddings for search tests and benchmarks (no photos needed at 25k-1M scale)."""

from __future__ import annotations

import numpy as np


def clustered(rng: np.random.Generator, people: int, per_person: int, dim: int = 128,
              mean: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors shaped like dlib's embeddings: all in one cone around ``mean`` (different people
    ~0.2 apart in cosine distance), each person's faces ~0.04 apart. Give several galleries the same
    ``mean`` to make them alike, as real faces of different tenants are.
    Returns (centres, faces[people, per, dim])."""
    if mean is None:
        mean = rng.normal(size=dim)
        mean /= np.linalg.norm(mean)
    centres = mean + 0.5 * rng.normal(size=(people, dim)) / np.sqrt(dim)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    faces = centres[:, None, :] + 0.2 * rng.normal(size=(people, per_person, dim)) / np.sqrt(dim)
    faces /= np.linalg.norm(faces, axis=2, keepdims=True)
    return centres, faces.astype(np.float32)


def near(rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """A new "photo" of each given person: a fresh sample around their centre."""
    q = centres + 0.2 * rng.normal(size=centres.shape) / np.sqrt(centres.shape[1])
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
