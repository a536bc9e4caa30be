"""Resumable paging through all Efficy contacts: the page object and the opaque position string.

Efficy's JSON-RPC has no offset or cursor paging (research §1.8), so the client pages by key:
``K_CONTACT > :last order by K_CONTACT``. That order is stable under concurrent edits: contacts created
during a full sync get higher keys and show up on a later page, deleted ones simply vanish, and nothing is
returned twice. The position is the last key seen, wrapped in a versioned opaque string so callers persist
it without depending on its meaning (and so a future scheme can be told apart).
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from crmsync.connectors.efficy.records import EfficyContact

log = structlog.get_logger("crmsync.connectors.efficy.paging")

_PREFIX = "efficy-k1:"


@dataclass(frozen=True)
class ContactPage:
    """One page of contacts.

    ``next_position`` is ``None`` on the last page; ``total`` is the number of contacts in Efficy when it was
    asked for (on the first page by default), else ``None``.
    """

    records: tuple[EfficyContact, ...]
    next_position: str | None
    total: int | None = None


def encode_position(last_key: int) -> str:
    """The position that continues after contact ``last_key``."""
    return f"{_PREFIX}{int(last_key)}"


def decode_position(position: str | None) -> int:
    """The last key already returned (0 = start). Raises ``ValueError`` on a position not made here."""
    if position is None or position == "":
        return 0
    if not position.startswith(_PREFIX):
        raise ValueError("not an Efficy contact position")
    try:
        key = int(position[len(_PREFIX):])
    except ValueError:
        raise ValueError("not an Efficy contact position") from None
    if key < 0:
        raise ValueError("not an Efficy contact position")
    return key
