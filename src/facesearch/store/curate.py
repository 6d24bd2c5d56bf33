"""Fixing a gallery, as the audit suggests: move an enrolled face to another person, merge two
people. PostgreSQL only (PKL mode: :class:`~facesearch.store.unknown.NotInPkl`)."""

from __future__ import annotations

from typing import Any

from ..errors import BadRequest, NotFound
from .gallery import Domain
from .unknown import require_postgres


async def move_face(gallery: Any, domain: Domain, face_id: int, person: int | str) -> int:
    """Move a face of this domain to another person of it (by id or name); returns the person's
    id. If that person already has a face of the same photo and model, this face is dropped."""
    g = require_postgres(gallery)
    async with g.conn.transaction():
        pid = await g.person_id(domain, person)
        row = await g._one("SELECT person_id, model_id, photo_sha256 FROM faces WHERE domain_id = %s"
                           " AND id = %s FOR UPDATE", (domain.id, face_id))
        if row is None:
            raise NotFound(f"no face {face_id} in domain {domain.name!r}")
        if row[0] == pid:
            return pid
        await _move(g, domain, pid, "id = %s", (face_id,))
    return pid


async def merge_people(gallery: Any, domain: Domain, into: int, other: int) -> int:
    """Move every face of person ``other`` to person ``into`` and delete ``other``; returns how
    many faces moved (a photo both had is kept once)."""
    g = require_postgres(gallery)
    if into == other:
        raise BadRequest("a person cannot be merged with themselves")
    async with g.conn.transaction():
        a = await g.person_id(domain, into)
        b = await g.person_id(domain, other)
        moved = await _move(g, domain, a, "person_id = %s", (b,))
        await g.conn.execute("DELETE FROM faces WHERE domain_id = %s AND person_id = %s", (domain.id, b))
        await g.conn.execute("DELETE FROM people WHERE domain_id = %s AND id = %s", (domain.id, b))
    return moved


async def _move(g: Any, domain: Domain, pid: int, where: str, params: tuple) -> int:
    """Give the faces ``where`` selects (in this domain) to person ``pid``, except a face whose
    photo and model that person already has (UNIQUE), which stays where it is."""
    cur = await g.conn.execute(
        f"UPDATE faces f SET person_id = %s WHERE f.domain_id = %s AND f.{where}"
        " AND NOT EXISTS (SELECT 1 FROM faces o WHERE o.domain_id = f.domain_id AND o.person_id = %s"
        " AND o.model_id = f.model_id AND o.photo_sha256 = f.photo_sha256)",
        (pid, domain.id, *params, pid))
    return cur.rowcount
