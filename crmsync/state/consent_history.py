"""The consent history: every consent change crmsync makes or observes, per person, oldest first.

An audit trail for "who changed this person's consent, and when?". Each entry says which system's status
changed, the person's ids in both systems, the old and new status, the source of the change, when it
happened at the source (or the interval it happened in, when the source does not say), when crmsync saw it,
and the run. ``by_crmsync`` tells a write crmsync made (its ``source`` is where the change came from, e.g. an
EveryAction edit copied to Mobile Commons) from a change crmsync observed.

Sources (stable codes):

* ``everyaction_edit``: the opt-in status changed in EveryAction (VAN does not say when: an interval);
* ``mobilecommons_keyword``, ``mobilecommons_web``, ``mobilecommons_stop``, ``mobilecommons_api``,
  ``mobilecommons``: a Mobile Commons opt-in (by keyword, web opt-in path, the API) or opt-out (a STOP word);
* ``apsis_unsubscribe_link``: the person opted out in APSIS (the unsubscribe link in an email footer);
* ``efficy_crm_profile``: a CRM user added or removed the CRM Profile on the Efficy contact card.

Retention is its own (``daemon.consent_history_retention_days``; 0, the default, keeps everything).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

TxFn = Callable[[sqlite3.Connection], Any]

COLUMNS = ("id", "integration", "system", "crm_id", "messaging_id", "subject", "old_status", "new_status",
           "source", "by_crmsync", "changed_at", "changed_after", "seen_at", "run_id", "detail")

SOURCE_LABELS = {
    "everyaction_edit": "EveryAction edit",
    "mobilecommons_keyword": "Mobile Commons keyword",
    "mobilecommons_web": "Mobile Commons web opt-in path",
    "mobilecommons_stop": "Mobile Commons STOP word",
    "mobilecommons_api": "Mobile Commons API",
    "mobilecommons": "Mobile Commons",
    "apsis_unsubscribe_link": "APSIS unsubscribe link",
    "efficy_crm_profile": "Efficy CRM Profile on the contact card",
}


@dataclass(frozen=True)
class ConsentChange:
    system: str
    subject: str
    new_status: str
    source: str
    by_crmsync: bool
    seen_at: str
    crm_id: str | None = None
    messaging_id: str | None = None
    old_status: str | None = None
    changed_at: str | None = None
    changed_after: str | None = None
    run_id: int | None = None
    detail: str | None = None


def current_run_id() -> int | None:
    """The run being executed (the runtime binds it to the task's context for logging)."""
    value = structlog.contextvars.get_contextvars().get("run_id")
    return value if isinstance(value, int) else None


def add(c: sqlite3.Connection, integration: str, changes: Sequence[ConsentChange]) -> None:
    c.executemany(
        "INSERT INTO consent_history (integration, system, crm_id, messaging_id, subject, old_status, new_status, "
        "source, by_crmsync, changed_at, changed_after, seen_at, run_id, detail) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(integration, ch.system, ch.crm_id, ch.messaging_id, ch.subject, ch.old_status, ch.new_status,
          ch.source, int(ch.by_crmsync), ch.changed_at, ch.changed_after, ch.seen_at, ch.run_id, ch.detail)
         for ch in changes])


def recorder(integration: str, changes: Sequence[ConsentChange]) -> TxFn:
    """A transaction function for ``run.flush(...)``: the history commits with the write it describes."""
    changes = list(changes)
    return lambda c: add(c, integration, changes) if changes else None


def last_status(c: sqlite3.Connection, integration: str, system: str, subject: str, *,
                crm_id: str | None = None, messaging_id: str | None = None) -> str | None:
    """The newest recorded status of one person's consent in one system (by either id)."""
    key, value = ("crm_id", crm_id) if crm_id is not None else ("messaging_id", messaging_id)
    row = c.execute(
        f"SELECT new_status FROM consent_history WHERE integration = ? AND {key} = ? AND system = ? "
        "AND subject = ? ORDER BY id DESC LIMIT 1", (integration, value, system, subject)).fetchone()
    return row[0] if row else None


def _row(r: sqlite3.Row) -> dict[str, Any]:
    d = {k: r[k] for k in COLUMNS}
    d["by_crmsync"] = bool(d["by_crmsync"])
    d["source_label"] = SOURCE_LABELS.get(d["source"], d["source"])
    return d


def for_person(c: sqlite3.Connection, integration: str, crm_ids: Sequence[str], messaging_ids: Sequence[str],
               limit: int = 1000, offset: int = 0) -> list[dict[str, Any]]:
    """One person's entries, oldest first: those naming one of ``crm_ids`` as the CRM id or one of
    ``messaging_ids`` as the messaging id (the two id spaces are kept apart: they may overlap)."""
    crm, msg = list(crm_ids) or [""], list(messaging_ids) or [""]
    rows = c.execute(
        f"SELECT * FROM consent_history WHERE integration = ? AND (crm_id IN ({','.join('?' * len(crm))}) "
        f"OR messaging_id IN ({','.join('?' * len(msg))})) ORDER BY id LIMIT ? OFFSET ?",
        (integration, *crm, *msg, limit, offset)).fetchall()
    return [_row(r) for r in rows]


def count_for(c: sqlite3.Connection, integration: str, crm_ids: Sequence[str], messaging_ids: Sequence[str]) -> int:
    crm, msg = list(crm_ids) or [""], list(messaging_ids) or [""]
    return int(c.execute(
        f"SELECT COUNT(*) FROM consent_history WHERE integration = ? AND (crm_id IN ({','.join('?' * len(crm))}) "
        f"OR messaging_id IN ({','.join('?' * len(msg))}))", (integration, *crm, *msg)).fetchone()[0])


def counterparts(c: sqlite3.Connection, integration: str, crm_ids: Sequence[str], messaging_ids: Sequence[str]
                 ) -> tuple[set[str], set[str]]:
    """The ids the history pairs with the given ones (a person's ids in the other system)."""
    crm, msg = set(crm_ids), set(messaging_ids)
    for cid in list(crm):
        msg |= {r[0] for r in c.execute("SELECT DISTINCT messaging_id FROM consent_history WHERE integration = ? "
                                        "AND crm_id = ? AND messaging_id IS NOT NULL", (integration, cid))}
    for mid in list(msg):
        crm |= {r[0] for r in c.execute("SELECT DISTINCT crm_id FROM consent_history WHERE integration = ? "
                                        "AND messaging_id = ? AND crm_id IS NOT NULL", (integration, mid))}
    return crm, msg


def trail(c: sqlite3.Connection, integration: str, limit: int = 1000, offset: int = 0) -> list[dict[str, Any]]:
    """The whole trail of one integration, oldest first (a page of it)."""
    rows = c.execute("SELECT * FROM consent_history WHERE integration = ? ORDER BY id LIMIT ? OFFSET ?",
                     (integration, limit, offset)).fetchall()
    return [_row(r) for r in rows]


def count(c: sqlite3.Connection, integration: str) -> int:
    return int(c.execute("SELECT COUNT(*) FROM consent_history WHERE integration = ?", (integration,)).fetchone()[0])


def prune(c: sqlite3.Connection, integration: str, older_than: str) -> int:
    """Drop entries seen before ``older_than`` (only when a retention is configured)."""
    cur = c.execute("DELETE FROM consent_history WHERE integration = ? AND seen_at < ?", (integration, older_than))
    return cur.rowcount
