"""Grouping faces into candidate people: average-linkage agglomerative clustering with a distance
cut, in NumPy only (no model runtime: the API process runs it on embeddings from the database).

Why average linkage (docs/BENCHMARKS.md, "Clustering unknown faces"): on LFW with SFace it gave
the best pairwise F of the rules measured (single linkage chains look-alikes together; Immich's
DBSCAN-like rule leaves most people with few photos unclustered). Its distance between a face and
a cluster of unit vectors is ``1 - x . mean(cluster)``, so the incremental rule (a new face joins
the nearest cluster if under the cut; store/unknown.py computes it in SQL from each cluster's sum)
is the same rule as the full run, one step at a time.

The full run is the nearest-neighbour chain algorithm on the dense distance matrix: O(n^2) memory
(n = 5,000 faces: 100 MB) and time; average linkage never merges below a cluster's current nearest
distance, so a cluster whose nearest neighbour is over the cut is final and leaves the matrix.
"""

from __future__ import annotations

import numpy as np

# The cut for sface-2021dec (cosine distance), chosen on LFW by bench/bench_cluster.py: the best
# pairwise and BCubed F from 3,000 photos up to all 13,233 (0.5 splits people, 0.6 merges them).
# Other models: their verify threshold (a pair under it is "the same person" for verify).
CUTS: dict[str, float] = {"sface-2021dec": 0.55}


def cut_for(model: str) -> float:
    """The clustering distance cut of a model."""
    from .models import default_thresholds

    return CUTS.get(model, default_thresholds(model)[1])


def average_linkage(embeddings: np.ndarray, cut: float) -> np.ndarray:
    """Cluster labels (0..k-1, largest cluster first) of unit-norm ``embeddings`` (n, d): clusters
    are merged while their average pairwise cosine distance is under ``cut``."""
    x = np.asarray(embeddings, dtype=np.float32)
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    dist = x @ x.T
    np.subtract(1.0, dist, out=dist)  # in place: one n x n matrix, not two
    np.fill_diagonal(dist, np.inf)
    size = np.ones(n, dtype=np.float32)
    parent = np.arange(n)  # merged cluster -> the one it went into
    chain: list[int] = []
    alive = n
    start = 0
    while alive > 1:
        if not chain:
            while not np.isfinite(dist[start]).any() and start < n - 1:
                start += 1
            if not np.isfinite(dist[start]).any():
                break
            chain = [start]
        a = chain[-1]
        row = dist[a]
        b = int(np.argmin(row))
        d = row[b]
        if len(chain) > 1 and row[chain[-2]] <= d:
            b, d = chain[-2], row[chain[-2]]
        if not d < cut:  # a's nearest is over the cut: a is final
            dist[a, :] = np.inf
            dist[:, a] = np.inf
            chain = []
            alive -= 1
            continue
        if len(chain) > 1 and b == chain[-2]:  # reciprocal nearest neighbours: merge b into a
            merged = (size[a] * dist[a] + size[b] * dist[b]) / (size[a] + size[b])
            merged[a] = np.inf
            merged[b] = np.inf
            dist[a, :] = merged
            dist[:, a] = merged
            dist[b, :] = np.inf
            dist[:, b] = np.inf
            size[a] += size[b]
            parent[b] = a
            chain = chain[:-2]
            alive -= 1
        else:
            chain.append(b)
    return _relabel(_roots(parent))


def _roots(parent: np.ndarray) -> np.ndarray:
    roots = parent.copy()
    while True:
        nxt = roots[roots]
        if np.array_equal(nxt, roots):
            return roots
        roots = nxt


def _relabel(roots: np.ndarray) -> np.ndarray:
    """Labels 0..k-1 by decreasing cluster size (ties: first member first)."""
    uniq, first, inverse, counts = np.unique(roots, return_index=True, return_inverse=True,
                                             return_counts=True)
    order = np.lexsort((first, -counts))
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[order] = np.arange(len(uniq))
    return rank[inverse]


def cohesion(embeddings: np.ndarray) -> float | None:
    """Mean pairwise cosine distance within a cluster (lower is tighter); None for one face.
    For unit vectors it is ``1 - (|sum|^2 - n) / (n (n - 1))``: no pair loop."""
    n = len(embeddings)
    if n < 2:
        return None
    s = np.asarray(embeddings, dtype=np.float64).sum(axis=0)
    return float(1.0 - (s @ s - n) / (n * (n - 1)))


def dbscan_like(embeddings: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    """Immich's rule, for comparison in the bench: a face with ``min_samples`` faces (itself
    included) within ``eps`` is a core; connected cores form clusters, other faces within
    ``eps`` of a core join its cluster; the rest are noise (label -1)."""
    x = np.asarray(embeddings, dtype=np.float32)
    n = len(x)
    near = (1.0 - x @ x.T) < eps
    core = near.sum(axis=1) >= min_samples
    labels = np.full(n, -1, dtype=np.int64)
    k = 0
    for i in np.flatnonzero(core):
        if labels[i] >= 0:
            continue
        labels[i] = k
        stack = [i]
        while stack:
            j = stack.pop()
            for m in np.flatnonzero(near[j] & (labels < 0)):
                labels[m] = k
                if core[m]:
                    stack.append(m)
        k += 1
    return labels


def single_linkage(embeddings: np.ndarray, cut: float) -> np.ndarray:
    """Connected components of the graph of pairs under ``cut`` (for comparison in the bench)."""
    x = np.asarray(embeddings, dtype=np.float32)
    near = (1.0 - x @ x.T) < cut
    parent = np.arange(len(x))
    for i, j in zip(*np.nonzero(np.triu(near, 1)), strict=True):
        ri, rj = _find(parent, i), _find(parent, j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return _relabel(np.array([_find(parent, i) for i in range(len(x))]))


def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return int(i)
