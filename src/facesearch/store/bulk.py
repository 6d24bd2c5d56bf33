"""Bulk writes of faces (``Gallery.add_faces``): binary COPY rows made with one NumPy conversion,
and a first load into a domain copied straight into ``faces`` instead of through a staging table.

A first load (an ``import-pkl`` into a new domain, the first batch of an enrollment) has nothing
to conflict with: its rows go into ``faces`` with one COPY, in a savepoint. Only if one of them
conflicts after all (a row another writer committed in the meantime) is the savepoint rolled back
and the load staged as later batches are (``ON CONFLICT DO NOTHING``). Measured on 25,000 512-d
faces: the staging table's INSERT ... SELECT was ~0.7 s of a ~1.2 s write (docs/BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from .gallery import NewFace

# The COPY columns of a face, in order, and the types psycopg sends them as. The embedding goes as
# bytea: binary COPY carries no types, the server reads each field with its column's receive
# function, so bytes already in pgvector's binary format (vector_recv) arrive as a vector.
FACE_COLUMNS = ("id", "domain_id", "person_id", "model_id", "embedding", "box_x", "box_y", "box_w",
                "box_h", "det_score", "photo_sha256", "thumbnail", "source", "source_hash")
FACE_TYPES = ["bigint", "bigint", "bigint", "smallint", "bytea", "integer", "integer", "integer",
              "integer", "real", "bytea", "bytea", "text", "text"]
# Progress is reported every this many faces sent.
PROGRESS_EVERY = 500


def vector_payloads(embeddings: Sequence[np.ndarray], dim: int) -> list[bytes]:
    """Each embedding in pgvector's binary format (int16 dimensions, int16 0, big-endian float4s),
    made for all rows at once: pgvector's Python dumper packs each row on its own (~10 us a row,
    the client's biggest cost in a 25,000-face COPY)."""
    rows = np.empty((len(embeddings), 4 + 4 * dim), dtype=np.uint8)
    rows[:, :4] = np.frombuffer(dim.to_bytes(2, "big") + b"\0\0", dtype=np.uint8)
    rows[:, 4:] = np.asarray(embeddings, dtype=">f4").reshape(len(embeddings), dim).view(np.uint8)
    return [r.tobytes() for r in rows]


def first_of_each(faces: Sequence[NewFace]) -> list[bool]:
    """Whether each face is the first of its (person, photo) in ``faces``: later ones are what
    ``ON CONFLICT DO NOTHING`` would skip."""
    seen: set[tuple[int, bytes]] = set()
    first = []
    for f in faces:
        key = (f.person_id, bytes(f.photo_sha256))
        first.append(key not in seen)
        seen.add(key)
    return first


def face_rows(domain_id: int, model_id: int, faces: Sequence[NewFace], first_id: int,
              dim: int) -> list[tuple[Any, ...]]:
    """The COPY rows (:data:`FACE_COLUMNS`) of ``faces``: face i gets id ``first_id + i``."""
    vectors = vector_payloads([f.embedding for f in faces], dim)
    return [(first_id + i, domain_id, f.person_id, model_id, v, *f.box, f.score, f.photo_sha256,
             f.thumbnail, f.source, f.source_hash)
            for i, (f, v) in enumerate(zip(faces, vectors, strict=True))]


async def copy_rows(conn: psycopg.AsyncConnection[Any], statement: sql.Composable, types: list[str],
                    rows: Sequence[tuple[Any, ...]],
                    progress: Callable[[int], object] | None) -> None:
    """One binary COPY of ``rows``, telling ``progress`` every few hundred rows sent."""
    async with conn.cursor().copy(statement) as copy:
        copy.set_types(types)
        for i, row in enumerate(rows):
            await copy.write_row(row)
            if progress is not None and i % PROGRESS_EVERY == PROGRESS_EVERY - 1:
                progress(PROGRESS_EVERY)
    if progress is not None and len(rows) % PROGRESS_EVERY:
        progress(len(rows) % PROGRESS_EVERY)


async def copy_first_load(conn: psycopg.AsyncConnection[Any], rows: Sequence[tuple[Any, ...]],
                          keep: Sequence[bool],
                          progress: Callable[[int], object] | None) -> list[int | None] | None:
    """COPY the kept ``rows`` straight into ``faces``, in a savepoint. Returns each row's id
    (None where not kept), or None when a row conflicted with one already stored (nothing
    written then: stage the rows instead). Call inside a transaction."""
    statement = sql.SQL("COPY faces ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.SQL(", ").join(map(sql.Identifier, FACE_COLUMNS)))
    try:
        async with conn.transaction():
            await copy_rows(conn, statement, FACE_TYPES, [r for r, k in zip(rows, keep, strict=True)
                                                          if k], progress)
    except psycopg.errors.UniqueViolation:
        return None
    if progress is not None and not all(keep):
        progress(len(keep) - sum(keep))  # the repeats count as done
    return [r[0] if k else None for r, k in zip(rows, keep, strict=True)]
