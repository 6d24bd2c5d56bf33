"""The gallery audit, in NumPy (no model runtime, no database): given a domain's enrolled faces,
what is likely wrong with it.

- *outliers*: faces far from the rest of their person's faces, likely mislabeled. A face's score
  is its average-linkage distance to its person's other faces (``1 - x . mean(others)``); flagged
  over the model's clustering cut (the distance under which faces are grouped as one person).
  People with 2 faces: both faces score the same; the one nearer another person is listed first.
  Each outlier names the person it is nearest to instead, if any is under the cut (move it there).
- *duplicates*: pairs of people whose nearest faces are under the recognize threshold (likely
  the same person, or look-alikes recognize will confuse), most alike first (average linkage
  between their faces); under the clustering cut on average, they are "likely the same".
- *single_face*: people with one face (weak at recognition).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 2048  # faces compared at once (BLOCK x faces, BLOCK x people floats): bounded memory


@dataclass(frozen=True)
class Outlier:
    face_id: int
    person_id: int
    distance: float  # to the mean of the person's other faces
    nearest_person_id: int | None  # the person it is nearest to instead, if under the cut
    nearest_distance: float | None


@dataclass(frozen=True)
class Duplicate:
    person_a: int
    person_b: int
    distance: float  # average linkage between the two people's faces
    nearest_distance: float  # of their closest two faces
    face_a: int
    face_b: int


@dataclass(frozen=True)
class Audit:
    outliers: list[Outlier]
    duplicates: list[Duplicate]
    single_face: list[tuple[int, int]]  # (person id, face id)


def audit(face_ids: np.ndarray, person_ids: np.ndarray, embeddings: np.ndarray, *,
          outlier_cut: float, duplicate_threshold: float, limit: int = 100) -> Audit:
    """Audit faces (ids, their person ids, unit embeddings); up to ``limit`` of each finding."""
    x = np.asarray(embeddings, dtype=np.float32)
    n = len(x)
    if n == 0:
        return Audit([], [], [])
    people, inverse, counts = np.unique(person_ids, return_inverse=True, return_counts=True)
    sums = np.zeros((len(people), x.shape[1]), np.float32)
    np.add.at(sums, inverse, x)
    own_n = counts[inverse]
    # Leave-one-out distance to the person's other faces; inf for people with one face.
    with np.errstate(divide="ignore", invalid="ignore"):
        own = np.where(own_n > 1, 1.0 - np.einsum("ij,ij->i", x, sums[inverse] - x)
                       / np.maximum(own_n - 1, 1), -np.inf)
    # The other person each face is nearest to by average linkage (in blocks: faces x people).
    nearest_p = np.zeros(n, np.int64)
    nearest_d = np.full(n, np.inf, np.float32)
    if len(people) > 1:
        for start in range(0, n, BLOCK):
            block = 1.0 - (x[start:start + BLOCK] @ sums.T) / counts[None, :].astype(np.float32)
            rows = np.arange(block.shape[0])
            block[rows, inverse[start:start + BLOCK]] = np.inf  # not their own person
            nearest_p[start:start + BLOCK] = np.argmin(block, axis=1)
            nearest_d[start:start + BLOCK] = block[rows, nearest_p[start:start + BLOCK]]

    flagged = np.flatnonzero(own > outlier_cut)
    # Worst first; between equal scores (a person of two faces), the one nearer someone else.
    flagged = flagged[np.lexsort((nearest_d[flagged], -own[flagged]))]
    outliers = [Outlier(int(face_ids[i]), int(person_ids[i]), round(float(own[i]), 4),
                        int(people[nearest_p[i]]) if nearest_d[i] < outlier_cut else None,
                        round(float(nearest_d[i]), 4) if nearest_d[i] < outlier_cut else None)
                for i in flagged[:limit]]

    duplicates = _duplicates(face_ids, inverse, people, counts, sums, x, duplicate_threshold, limit)
    single = [(int(people[p]), int(face_ids[np.flatnonzero(inverse == p)[0]]))
              for p in np.flatnonzero(counts == 1)][:limit]
    return Audit(outliers, duplicates, single)


def _duplicates(face_ids: np.ndarray, inverse: np.ndarray, people: np.ndarray, counts: np.ndarray,
                sums: np.ndarray, x: np.ndarray, threshold: float, limit: int) -> list[Duplicate]:
    """Pairs of people with two faces under ``threshold``, by their average linkage."""
    closest: dict[tuple[int, int], tuple[float, int, int]] = {}
    for start in range(0, len(x), BLOCK):
        d = 1.0 - x[start:start + BLOCK] @ x.T
        d[inverse[start:start + BLOCK, None] == inverse[None, :]] = np.inf  # same person
        for i, j in zip(*np.nonzero(d < threshold), strict=True):
            a, b = inverse[start + i], inverse[j]
            key = (min(a, b), max(a, b))
            if key not in closest or d[i, j] < closest[key][0]:
                fa, fb = (start + i, j) if a < b else (j, start + i)
                closest[key] = (float(d[i, j]), int(face_ids[fa]), int(face_ids[fb]))
    found = []
    for (a, b), (near, fa, fb) in closest.items():
        avg = 1.0 - float(sums[a] @ sums[b]) / float(counts[a] * counts[b])
        found.append(Duplicate(int(people[a]), int(people[b]), round(avg, 4), round(near, 4), fa, fb))
    found.sort(key=lambda p: (p.distance, p.nearest_distance))
    return found[:limit]


def audit_report(face_ids: np.ndarray, person_ids: np.ndarray, emb: np.ndarray,
                 people: dict[int, str], model: str, threshold: float, limit: int) -> dict:
    """The audit of a domain's faces as the API (and ``facesearch audit --json``) gives it."""
    from .clustering import cut_for

    cut = cut_for(model)
    found = audit(face_ids, person_ids, emb, outlier_cut=cut, duplicate_threshold=threshold,
                  limit=limit)

    def who(pid: int | None) -> dict | None:
        return None if pid is None else {"id": pid, "name": people.get(pid)}

    return {
        "model": model, "faces": len(face_ids), "people": len(people),
        "outlier_cut": cut, "duplicate_threshold": threshold,
        "outliers": [{"face_id": o.face_id, "person": who(o.person_id), "distance": o.distance,
                      "nearest_person": who(o.nearest_person_id),
                      "nearest_distance": o.nearest_distance} for o in found.outliers],
        # likely_same: alike enough on average to be clustered as one person (else look-alikes).
        "duplicates": [{"people": [who(d.person_a), who(d.person_b)], "distance": d.distance,
                        "likely_same": bool(d.distance < cut),
                        "nearest_distance": d.nearest_distance, "face_ids": [d.face_a, d.face_b]}
                       for d in found.duplicates],
        "single_face": [{"person": who(p), "face_id": f} for p, f in found.single_face],
    }
