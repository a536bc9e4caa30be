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

from crmsync.connectors.apsis.records import ApsisProfile, ConsentKey
from crmsync.daemon.integrations.efficy_apsis import consent_trail
from crmsync.daemon.integrations.efficy_apsis.rules import (
    ConsentRule,
    OptOutRecord,
    fingerprint,
    profile_from_fingerprint,
)
from crmsync.state import consent_history
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


def written(integration: str, profile: ApsisProfile, version: str | None, now: str, *,
            standing: Sequence[OptOutRecord] = ()) -> TxFn:
    """Link the profile and remember the payload sent (and the Efficy version it came from). Consent changes
    against the previous payload go to the consent history; ``standing``: APSIS opt-outs behind some of them."""

    def tx(c: sqlite3.Connection) -> None:
        before = q.get_fingerprint(c, integration, profile.key)
        previous = profile_from_fingerprint(profile.key, before[0]) if before is not None else None
        consent_history.add(c, integration, consent_trail.apsis_changes(previous, profile, version, now, standing))
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
