"""What ``efficy_apsis`` keeps in the store, as transaction functions (plain ``sqlite3``, no trio).

* links: ``crm_id`` = K_CONTACT, ``messaging_id`` = the APSIS profile key (the same K_CONTACT, in the
  CRM-id keyspace);
* fingerprints: per profile, the canonical JSON of the last payload sent, with ``source_version`` = the
  Efficy modification time it came from (the stale-write guard);
* kv ``optout:{contact}:{profile}:{topic}|{channel}``: durable records of opt-outs made in APSIS;
* kv ``tag_members:{tag}``: the contacts crmsync tagged from a query (to untag those who leave it).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from crmsync.connectors.apsis.records import ApsisProfile, Consent, ConsentKey
from crmsync.daemon.integrations.efficy_apsis.rules import (
    ConsentRule,
    OptOutRecord,
    fingerprint,
    profile_from_fingerprint,
)
from crmsync.state import queries as q

log = structlog.get_logger("crmsync.daemon.integrations.efficy_apsis.store")

TxFn = Callable[[sqlite3.Connection], Any]


@dataclass
class ContactState:
    """What crmsync knows of one contact's profile before syncing it."""

    current: ApsisProfile | None = None  # the last payload sent (None: never, or unknown)
    written_version: str | None = None  # Efficy modification time of that payload
    linked: bool = False
    optouts: dict[tuple[str, ConsentKey], OptOutRecord] = field(default_factory=dict)


def optout_key(contact_id: str, profile_id: str, slot: ConsentKey) -> str:
    return f"optout:{contact_id}:{profile_id}:{slot.topic}|{slot.channel}"


def load_states(c: sqlite3.Connection, integration: str, contact_ids: Iterable[str],
                rules: Sequence[ConsentRule]) -> dict[str, ContactState]:
    """States of several contacts, read in one transaction."""
    out: dict[str, ContactState] = {}
    for cid in contact_ids:
        fp = q.get_fingerprint(c, integration, cid)
        state = ContactState(linked=q.link_for_crm(c, integration, cid) is not None)
        if fp is not None:
            state.current = profile_from_fingerprint(cid, fp[0])
            state.written_version = fp[1]
        for rule in rules:
            raw = q.kv_get(c, integration, optout_key(cid, rule.profile_id, rule.slot))
            if raw:
                state.optouts[(rule.profile_id, rule.slot)] = OptOutRecord.from_json(raw)
        out[cid] = state
    return out


def written(integration: str, profile: ApsisProfile, version: str | None, now: str) -> TxFn:
    """Link the profile and remember the payload sent (and the Efficy version it came from)."""

    def tx(c: sqlite3.Connection) -> None:
        q.put_link(c, integration, profile.key, profile.key, now)
        q.put_fingerprint(c, integration, profile.key, fingerprint(profile), version, now)

    return tx


def put_optout(integration: str, record: OptOutRecord) -> TxFn:
    def tx(c: sqlite3.Connection) -> None:
        q.kv_set(c, integration, optout_key(record.contact_id, record.profile_id, record.slot), record.to_json())

    return tx


def drop_optout(integration: str, record: OptOutRecord) -> TxFn:
    def tx(c: sqlite3.Connection) -> None:
        q.kv_delete(c, integration, optout_key(record.contact_id, record.profile_id, record.slot))

    return tx


def get_members(c: sqlite3.Connection, integration: str, tag: str) -> set[str]:
    raw = q.kv_get(c, integration, f"tag_members:{tag}")
    return set(json.loads(raw)) if raw else set()


def set_members(integration: str, tag: str, members: Iterable[str]) -> TxFn:
    value = json.dumps(sorted(members))

    def tx(c: sqlite3.Connection) -> None:
        q.kv_set(c, integration, f"tag_members:{tag}", value)

    return tx


def kv_get(c: sqlite3.Connection, integration: str, key: str) -> str | None:
    return q.kv_get(c, integration, key)


def kv_set(integration: str, key: str, value: str) -> TxFn:
    def tx(c: sqlite3.Connection) -> None:
        q.kv_set(c, integration, key, value)

    return tx


# -- APSIS opt-outs read from the consent report (bulk full sync) -------------------------------------------

def clear_reported_optouts(integration: str) -> TxFn:
    def tx(c: sqlite3.Connection) -> None:
        c.execute("DELETE FROM apsis_reported_optouts WHERE integration = ?", (integration,))

    return tx


def put_reported_optouts(integration: str, rows: Sequence[tuple[str, str, str, str | None]]) -> TxFn:
    """``(profile_key, topic, channel, modified_at)`` opt-outs as a consent report listed them."""
    values = [(integration, *row) for row in rows]

    def tx(c: sqlite3.Connection) -> None:
        c.executemany("INSERT OR REPLACE INTO apsis_reported_optouts "
                      "(integration, profile_key, topic, channel, modified_at) VALUES (?, ?, ?, ?, ?)", values)

    return tx


def reported_optouts(c: sqlite3.Connection, integration: str, keys: Sequence[str]) -> dict[str, list[Consent]]:
    """The reported opt-outs of ``keys``, as the consents APSIS would list for each profile."""
    out: dict[str, list[Consent]] = {}
    for start in range(0, len(keys), 500):  # SQLite's host-parameter limit
        chunk = list(keys[start:start + 500])
        marks = ",".join("?" * len(chunk))
        for key, topic, channel, modified_at in c.execute(
                f"SELECT profile_key, topic, channel, modified_at FROM apsis_reported_optouts "
                f"WHERE integration = ? AND profile_key IN ({marks})", (integration, *chunk)):
            out.setdefault(key, []).append(Consent(topic, channel, "opt-out", modified_at=modified_at))
    return out


def written_many(integration: str, rows: Sequence[tuple[str, str, str | None]], now: str) -> TxFn:
    """:func:`written` for many profiles at once: ``(key, fingerprint text, Efficy version)`` each."""

    def tx(c: sqlite3.Connection) -> None:
        c.executemany("DELETE FROM links WHERE integration = ? AND messaging_id = ? AND crm_id != ?",
                      [(integration, key, key) for key, _, _ in rows])
        c.executemany(
            "INSERT INTO links (integration, crm_id, messaging_id, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (integration, crm_id) DO UPDATE SET messaging_id = excluded.messaging_id, "
            "updated_at = excluded.updated_at", [(integration, key, key, now) for key, _, _ in rows])
        c.executemany(
            "INSERT INTO fingerprints (integration, record_key, fingerprint, source_version, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (integration, record_key) DO UPDATE SET "
            "fingerprint = excluded.fingerprint, source_version = excluded.source_version, "
            "updated_at = excluded.updated_at", [(integration, key, fp, version, now) for key, fp, version in rows])

    return tx


def replace_query_members(integration: str, tag: str, contact_ids: Sequence[str]) -> TxFn:
    """The members of one tag query as just read (the bulk full sync carries query tags in its imports)."""

    def tx(c: sqlite3.Connection) -> None:
        c.execute("DELETE FROM efficy_query_members WHERE integration = ? AND tag = ?", (integration, tag))
        c.executemany("INSERT OR IGNORE INTO efficy_query_members (integration, tag, contact_id) VALUES (?, ?, ?)",
                      [(integration, tag, cid) for cid in contact_ids])

    return tx


def query_tags_of(c: sqlite3.Connection, integration: str, contact_ids: Sequence[str]) -> dict[str, set[str]]:
    """Contact id -> the query tags it is a member of (only members are listed)."""
    out: dict[str, set[str]] = {}
    for start in range(0, len(contact_ids), 500):
        chunk = list(contact_ids[start:start + 500])
        marks = ",".join("?" * len(chunk))
        for cid, tag in c.execute(f"SELECT contact_id, tag FROM efficy_query_members "
                                  f"WHERE integration = ? AND contact_id IN ({marks})", (integration, *chunk)):
            out.setdefault(cid, set()).add(tag)
    return out
