"""API keys: one admin key for the whole service, and revocable keys that reach one domain.

Keys are high-entropy random strings, so a plain SHA-256 is enough to store them: only digests
are kept (domain keys in the database, a generated admin key in the data directory). Keys are
never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request

from ..config import MIN_ADMIN_KEY, Settings
from ..errors import Forbidden, Unauthorized

ADMIN_KEY_FILE = "admin-key.sha256"

log = logging.getLogger("facesearch.service")


@dataclass(frozen=True)
class Caller:
    """Who is calling: the admin (every domain), or the holder of one domain's key."""

    admin: bool
    domain: str | None = None

    def check_domain(self, domain: str) -> None:
        if not self.admin and self.domain != domain:
            raise Forbidden("this API key belongs to another domain")

    def check_admin(self) -> None:
        if not self.admin:
            raise Forbidden("this needs the admin key (domain keys reach only their own domain)")


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def admin_key_digest(settings: Settings) -> bytes:
    """The admin key's digest: from FACESEARCH_ADMIN_KEY, else from the data directory, where a
    new key is generated (and printed, once) at first start."""
    if settings.admin_key:
        return digest(settings.admin_key)
    path = settings.home / ADMIN_KEY_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    except ValueError:
        raise SystemExit(f"error: {path} is damaged: delete it to generate a new admin key") from None
    key = "fsa_" + secrets.token_urlsafe(32)
    _write_private(path, digest(key).hex() + "\n")
    print(f"\nfacesearch: generated the admin key. It is shown only now (the data directory keeps\n"
          f"only its hash, in {path}):\n\n    {key}\n\n"
          f"Set FACESEARCH_ADMIN_KEY to choose your own; delete that file for a new one.\n",
          file=sys.stderr, flush=True)
    return digest(key)


def check_replica_key(settings: Settings) -> None:
    """On an external database (``settings.database_url`` as configured, before the embedded
    server's URL replaces it), refuse to start without FACESEARCH_ADMIN_KEY unless an earlier
    start left a key's hash in the data directory (then warn).

    Several replicas may share that database, each with its own data directory: a key generated
    by one would be unknown to the others, and each would print its own (rule 7: what a replica
    needs lives in PostgreSQL or its configuration). A shared key in the configuration is what a
    deployment of replicas has anyway (docs/DEPLOY.md), and it needs no schema change."""
    if settings.admin_key or not settings.database_url:
        return
    path = settings.home / ADMIN_KEY_FILE
    if path.exists():
        log.warning("the admin key is the one whose hash is in %s: replicas with another data "
                    "directory do not know it; set FACESEARCH_ADMIN_KEY on every replica", path)
        return
    raise SystemExit(
        "error: FACESEARCH_DATABASE_URL is set but FACESEARCH_ADMIN_KEY is not. On an external "
        "database every replica must be given the same admin key (one generated here would be "
        f"known to this replica only): set FACESEARCH_ADMIN_KEY (at least {MIN_ADMIN_KEY} "
        "characters, e.g. from python3 -c 'import secrets; print(\"fsa_\" + "
        "secrets.token_urlsafe(32))') on every replica; see docs/DEPLOY.md")


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def presented_key(request: Request) -> str:
    """The key of a request: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    key = value.strip() if scheme.lower() == "bearer" else request.headers.get("x-api-key", "")
    if not key:
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
    return key


def is_admin(key: str, admin_digest: bytes) -> bool:
    return hmac.compare_digest(digest(key), admin_digest)
