"""What the calling key is: the admin key, or which domain's key (so a client, the page among
them, need not ask its holder for the domain)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from ..state import CallerDep

router = APIRouter(tags=["operations"])


class WhoAmI(BaseModel):
    admin: bool = Field(description="The admin key: every domain, and domain management.")
    domain: str | None = Field(None, description="The one domain a domain key reaches; null for "
                                                 "the admin key.")


@router.get("/v1/whoami", response_model=WhoAmI)
async def whoami(who: CallerDep) -> dict:
    """The key of this request: ``{"admin": true, "domain": null}`` or ``{"admin": false,
    "domain": "<its domain>"}``."""
    return {"admin": who.admin, "domain": who.domain}
