"""Unassigned faces (faces recognize matched to nobody, kept by domains with ``keep_unknown``),
their clusters, and turning a cluster into a person. PostgreSQL only: in PKL mode every call is a
clear 400 (:class:`NotInPkl`).

Functions over a :class:`~facesearch.store.gallery.Gallery` (its connection and model cache), so
the gallery module stays as it is; naming a cluster enrolls its faces with ``Gallery.add_faces``.
The clustering itself (facesearch.clustering) is NumPy and runs in a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from psycopg import sql

from .. import clustering, names
from ..errors import BadRequest, FacesearchError, NotFound
from .gallery import Domain, Gallery, NewFace

_LOCK = 0x756E6B6E  # advisory lock (with the domain id): one writer of a domain's clusters at a time


class NotInPkl(FacesearchError):
    """Unknown faces, clusters and the audit's store need PostgreSQL."""

    code = "not_supported_in_pkl_mode"
    status = 400


@dataclass(frozen=True)
class UnknownFace:
    """An unmatched face to keep: its embedding, box, detector score, photo hash and thumbnail."""

    embedding: np.ndarray
    box: tuple[int, int, int, int]
    score: float | None
    photo_sha256: bytes
    thumbnail: bytes | None = None


@dataclass(frozen=True)
class UnassignedFace:
    id: int
    cluster_id: int
    box: tuple[int, int, int, int]
    score: float | None
    created_at: datetime
    has_thumbnail: bool


@dataclass(frozen=True)
class Cluster:
    id: int
    faces: list[UnassignedFace]
    cohesion: float | None  # mean pairwise cosine distance; None for a single face


def require_postgres(gallery: Any) -> Gallery:
    if not isinstance(gallery, Gallery):
        raise NotInPkl("unknown faces and clusters need the PostgreSQL store; this server runs in "
                       "PKL mode (FACESEARCH_STORE=pkl)")
    return gallery


async def set_keep_unknown(gallery: Any, name: str, keep: bool) -> None:
    """Turn a domain's keeping of unknown faces on or off (off deletes none: see discard)."""
    g = require_postgres(gallery)
    cur = await g.conn.execute("UPDATE domains SET keep_unknown = %s WHERE name = %s",
                               (bool(keep), names.domain_name(name)))
    if not cur.rowcount:
        raise NotFound(f"unknown domain {name!r}")


async def _next_ids(g: Gallery, domain: Domain, faces: int, clusters: int) -> tuple[int, int]:
    """Reserve ``faces`` face ids and ``clusters`` cluster ids of this domain; returns the last
    ids before them. Inside the caller's transaction: the row lock orders concurrent writers."""
    row = await g._one(
        "INSERT INTO unassigned_counters AS c (domain_id, last_face, last_cluster)"
        " VALUES (%(d)s, %(f)s, %(c)s) ON CONFLICT (domain_id) DO UPDATE"
        " SET last_face = c.last_face + %(f)s, last_cluster = c.last_cluster + %(c)s"
        " RETURNING last_face - %(f)s, last_cluster - %(c)s",
        {"d": domain.id, "f": faces, "c": clusters})
    return row[0], row[1]


async def _embeddings(g: Gallery, domain: Domain, model_id: int, dim: int,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(face ids, cluster ids, embeddings)`` of the domain's unassigned faces of one model."""
    async with g.conn.cursor(binary=True) as cur:
        await cur.execute("SELECT id, cluster_id, embedding FROM unassigned_faces"
                          " WHERE domain_id = %s AND model_id = %s ORDER BY id",
                          (domain.id, model_id))
        rows = await cur.fetchall()
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
    return (np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.int64),
            np.stack([r[2].to_numpy() for r in rows]).astype(np.float32))


async def add_unknown(gallery: Any, domain: Domain, faces: Sequence[UnknownFace], *,
                      max_faces: int, max_days: float) -> list[int]:
    """Keep unmatched faces: each joins the nearest cluster of the domain if its average-linkage
    distance is under the model's cut, else starts a cluster of its own. Then the retention
    limits delete the oldest (over ``max_faces``, or older than ``max_days``). Returns the new
    faces' ids (per domain)."""
    g = require_postgres(gallery)
    if not faces:
        return []
    model_id, dim = await g.model(domain.model)
    cut = clustering.cut_for(domain.model)
    ids = []
    async with g.conn.transaction():
        # One writer per domain at a time: the clusters read below are the ones written to.
        await g.conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK, domain.id))
        for f in faces:
            q = np.asarray(f.embedding, np.float32)
            if q.shape != (dim,) or not np.all(np.isfinite(q)):
                raise ValueError(f"embedding must be {dim} finite numbers for model {domain.model!r}")
            # Average linkage to each cluster, 1 - q . mean, in the server: sum(v) <#> q is -(S . q).
            row = await g._one(sql.SQL(
                "SELECT cluster_id, 1 + (sum(embedding::vector({dim})) <#> %(q)s) / count(*) AS d"
                " FROM unassigned_faces WHERE domain_id = %(d)s AND model_id = %(m)s"
                " GROUP BY cluster_id ORDER BY d LIMIT 1").format(dim=sql.Literal(dim)),
                {"q": q, "d": domain.id, "m": model_id})
            joins = row is not None and row[1] < cut
            last_face, last_cluster = await _next_ids(g, domain, 1, 0 if joins else 1)
            await g.conn.execute(
                "INSERT INTO unassigned_faces (domain_id, id, cluster_id, model_id, embedding, box_x,"
                " box_y, box_w, box_h, det_score, photo_sha256, thumbnail)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (domain.id, last_face + 1, row[0] if joins else last_cluster + 1, model_id, q, *f.box,
                 f.score, f.photo_sha256, f.thumbnail))
            ids.append(last_face + 1)
        await prune(g, domain, max_faces=max_faces, max_days=max_days)
    return ids


async def prune(gallery: Any, domain: Domain, *, max_faces: int, max_days: float) -> int:
    """Delete the domain's unassigned faces beyond the retention limits (the oldest first)."""
    g = require_postgres(gallery)
    cur = await g.conn.execute(
        "DELETE FROM unassigned_faces WHERE domain_id = %(d)s AND (created_at < now() -"
        " make_interval(secs => %(s)s) OR id IN (SELECT id FROM unassigned_faces"
        " WHERE domain_id = %(d)s ORDER BY id DESC OFFSET %(n)s))",
        {"d": domain.id, "s": float(max_days) * 86400, "n": int(max_faces)})
    return cur.rowcount


_FACE = ("id, cluster_id, box_x, box_y, box_w, box_h, det_score, created_at,"
         " thumbnail IS NOT NULL")


def _face(r: Sequence[Any]) -> UnassignedFace:
    return UnassignedFace(r[0], r[1], (r[2], r[3], r[4], r[5]), r[6], r[7], r[8])


async def list_clusters(gallery: Any, domain: Domain, *, min_faces: int = 2, limit: int = 100,
                        ) -> list[Cluster]:
    """The domain's clusters of at least ``min_faces`` faces, largest first (ties: oldest)."""
    g = require_postgres(gallery)
    model_id, dim = await g.model(domain.model)
    ids, cluster_ids, emb = await _embeddings(g, domain, model_id, dim)
    if not len(ids):
        return []
    labels, counts = np.unique(cluster_ids, return_counts=True)
    keep = [int(labels[i]) for i in np.lexsort((labels, -counts)) if counts[i] >= min_faces][:limit]
    rows = await g._all(f"SELECT {_FACE} FROM unassigned_faces WHERE domain_id = %s"
                        " AND cluster_id = ANY(%s) ORDER BY id", (domain.id, keep))
    by_cluster: dict[int, list[UnassignedFace]] = {c: [] for c in keep}
    for r in rows:
        by_cluster[r[1]].append(_face(r))
    return [Cluster(c, by_cluster[c], clustering.cohesion(emb[cluster_ids == c])) for c in keep]


async def get_cluster(gallery: Any, domain: Domain, cluster_id: int) -> Cluster:
    """One cluster of the domain, with its faces of the domain's model (a domain moved to
    another model keeps its older unassigned faces unclustered until discarded)."""
    g = require_postgres(gallery)
    model_id, _ = await g.model(domain.model)
    async with g.conn.cursor(binary=True) as cur:
        await cur.execute(f"SELECT {_FACE}, embedding FROM unassigned_faces WHERE domain_id = %s"
                          " AND cluster_id = %s AND model_id = %s ORDER BY id",
                          (domain.id, cluster_id, model_id))
        rows = await cur.fetchall()
    if not rows:
        raise NotFound(f"no cluster {cluster_id} in domain {domain.name!r}")
    emb = np.stack([r[9].to_numpy() for r in rows])
    return Cluster(cluster_id, [_face(r) for r in rows], clustering.cohesion(emb))


async def count_unassigned(gallery: Any, domain: Domain) -> int:
    g = require_postgres(gallery)
    return (await g._one("SELECT count(*) FROM unassigned_faces WHERE domain_id = %s",
                         (domain.id,)))[0]


async def recluster(gallery: Any, domain: Domain) -> int:
    """Cluster the domain's unassigned faces again from scratch (average linkage at the model's
    cut, in a thread); returns how many clusters there are now. New cluster ids."""
    g = require_postgres(gallery)
    model_id, dim = await g.model(domain.model)
    async with g.conn.transaction():
        await g.conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK, domain.id))
        ids, _, emb = await _embeddings(g, domain, model_id, dim)
        if not len(ids):
            return 0
        labels = await asyncio.to_thread(clustering.average_linkage, emb, clustering.cut_for(domain.model))
        k = int(labels.max()) + 1
        _, last_cluster = await _next_ids(g, domain, 0, k)
        await g.conn.execute(
            "UPDATE unassigned_faces u SET cluster_id = v.c FROM unnest(%s::bigint[], %s::bigint[])"
            " AS v(id, c) WHERE u.domain_id = %s AND u.id = v.id",
            (ids.tolist(), (labels + last_cluster + 1).tolist(), domain.id))
    return k


async def remove_face(gallery: Any, domain: Domain, cluster_id: int, face_id: int) -> int:
    """Take a face out of its cluster into a cluster of its own (it is not deleted); returns the
    face's new cluster id."""
    g = require_postgres(gallery)
    async with g.conn.transaction():
        row = await g._one("SELECT 1 FROM unassigned_faces WHERE domain_id = %s AND id = %s"
                           " AND cluster_id = %s FOR UPDATE", (domain.id, face_id, cluster_id))
        if row is None:
            raise NotFound(f"no face {face_id} in cluster {cluster_id} of domain {domain.name!r}")
        _, last = await _next_ids(g, domain, 0, 1)
        await g.conn.execute("UPDATE unassigned_faces SET cluster_id = %s WHERE domain_id = %s"
                             " AND id = %s", (last + 1, domain.id, face_id))
    return last + 1


async def merge_clusters(gallery: Any, domain: Domain, into: int, other: int) -> Cluster:
    """Move every face of cluster ``other`` into cluster ``into``."""
    g = require_postgres(gallery)
    if into == other:
        raise BadRequest("a cluster cannot be merged with itself")
    await get_cluster(g, domain, into)
    await get_cluster(g, domain, other)
    await g.conn.execute("UPDATE unassigned_faces SET cluster_id = %s WHERE domain_id = %s"
                         " AND cluster_id = %s", (into, domain.id, other))
    return await get_cluster(g, domain, into)


async def discard_cluster(gallery: Any, domain: Domain, cluster_id: int) -> int:
    """Delete a cluster's faces (embeddings and thumbnails); returns how many."""
    g = require_postgres(gallery)
    cur = await g.conn.execute("DELETE FROM unassigned_faces WHERE domain_id = %s AND cluster_id = %s",
                               (domain.id, cluster_id))
    if not cur.rowcount:
        raise NotFound(f"no cluster {cluster_id} in domain {domain.name!r}")
    return cur.rowcount


async def name_cluster(gallery: Any, domain: Domain, cluster_id: int, person: int | str, *,
                       create: bool) -> tuple[int, list[int | None]]:
    """Make a cluster's faces enrolled faces of a person (an id or name of this domain; a new
    name is created with ``create``), through ``Gallery.add_faces``; the unassigned rows go.
    Returns the person's id and the new face ids (None: that person already had that photo)."""
    g = require_postgres(gallery)
    model_id, _ = await g.model(domain.model)
    async with g.conn.transaction():
        async with g.conn.cursor(binary=True) as cur:
            await cur.execute(
                "DELETE FROM unassigned_faces WHERE domain_id = %s AND cluster_id = %s AND model_id = %s"
                " RETURNING id, embedding, box_x, box_y, box_w, box_h, det_score, photo_sha256, thumbnail",
                (domain.id, cluster_id, model_id))
            rows = sorted(await cur.fetchall())
        if not rows:
            raise NotFound(f"no cluster {cluster_id} in domain {domain.name!r}")
        pid = await g.person_id(domain, person, create=create)
        ids = await g.add_faces(domain, domain.model, [
            NewFace(person_id=pid, embedding=r[1].to_numpy().astype(np.float32),
                    box=(r[2], r[3], r[4], r[5]), score=r[6], photo_sha256=bytes(r[7]),
                    thumbnail=None if r[8] is None else bytes(r[8]))
            for r in rows])
    return pid, ids


async def unassigned_thumbnail(gallery: Any, domain: Domain, face_id: int) -> bytes:
    g = require_postgres(gallery)
    row = await g._one("SELECT thumbnail FROM unassigned_faces WHERE domain_id = %s AND id = %s",
                       (domain.id, face_id))
    if row is None or row[0] is None:
        raise NotFound(f"no unassigned face {face_id} with a thumbnail in domain {domain.name!r}")
    return bytes(row[0])


async def delete_unassigned(gallery: Any, domain: Domain, face_id: int) -> None:
    g = require_postgres(gallery)
    cur = await g.conn.execute("DELETE FROM unassigned_faces WHERE domain_id = %s AND id = %s",
                               (domain.id, face_id))
    if not cur.rowcount:
        raise NotFound(f"no unassigned face {face_id} in domain {domain.name!r}")


async def gallery_embeddings(gallery: Any, domain: Domain
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, str]]:
    """For the audit: ``(face ids, person ids, embeddings, person names)`` of the domain's
    enrolled faces of its model."""
    g = require_postgres(gallery)
    model_id, dim = await g.model(domain.model)
    async with g.conn.cursor(binary=True) as cur:
        await cur.execute("SELECT id, person_id, embedding FROM faces WHERE domain_id = %s"
                          " AND model_id = %s ORDER BY id", (domain.id, model_id))
        rows = await cur.fetchall()
    people = dict(await g._all("SELECT id, name FROM people WHERE domain_id = %s", (domain.id,)))
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, dim), np.float32), people
    return (np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.int64),
            np.stack([r[2].to_numpy() for r in rows]).astype(np.float32), people)
