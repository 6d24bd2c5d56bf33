"""Validation of the names users give: domains (identifiers, used in URLs) and people (free text)."""

from __future__ import annotations

import re
import unicodedata

from .errors import InvalidName

DOMAIN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
PERSON_MAX = 200
# Bidirectional overrides and isolates can make a name display as something else ("Trojan Source").
_BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def domain_name(name: str) -> str:
    """A domain is an identifier: 1-63 of letters, digits, ``_ . -``, starting with a letter/digit."""
    if not isinstance(name, str) or not DOMAIN_RE.fullmatch(name):
        raise InvalidName(
            f"invalid domain name {name!r}: use 1-63 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def person_name(name: str) -> str:
    """A person's name is free text (any script), 1-200 characters, without control characters."""
    if not isinstance(name, str):
        raise InvalidName("a person's name must be text")
    name = unicodedata.normalize("NFC", name).strip()
    if not name:
        raise InvalidName("a person's name cannot be empty")
    if len(name) > PERSON_MAX:
        raise InvalidName(f"a person's name is at most {PERSON_MAX} characters, got {len(name)}")
    for ch in name:
        if unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn") or ch in _BIDI_CONTROLS:
            raise InvalidName(
                f"a person's name cannot contain the control character U+{ord(ch):04X}"
            )
    return name
