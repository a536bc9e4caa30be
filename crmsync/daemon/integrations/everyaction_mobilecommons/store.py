"""The state this kind keeps, as transaction functions for ``run.flush(...)`` (no trio, no I/O of their own).

* links: crm_id = VAN ID, messaging_id = Mobile Commons profile id;
* fingerprints: ``mc:{vanId}`` (last payload ea_to_mc wanted Mobile Commons to hold) and ``ea:{profileId}``
  (last payload mc_to_ea wanted EveryAction to hold);
* kv ``ea_consent_phone:{E.164}``: the last EveryAction opt-in status seen for that phone number and when (see
  rules.EaObservation). VAN stores opt-in per phone, so it is observed per phone: a record seen without a
  listed mobile must not overwrite what another flow saw for the number;
* waiting opt-ins (table ``ea_mc_waiting_opt_ins``): Mobile Commons opt-ins mc_to_ea could not sync yet
  because of the EveryAction record's data (no email, ...). ea_to_mc counts each change of a record (by VAN ID,
  or by phone for an opt-in that matched no record) in ``marked``; mc_to_ea re-examines the opt-ins whose
  ``marked`` moved past the value it read before its last look (``examined``), and drops an entry once the
  opt-in synced or the profile is no longer opted in.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crmsync.daemon.integrations.everyaction_mobilecommons.rules import EaObservation
from crmsync.state import queries as q

TxFn = Callable[[sqlite3.Connection], Any]


@dataclass(frozen=True)
class Known:
    link: str | None  # the other side's id
    fingerprint: str | None
    observation: EaObservation | None
    profile_link: str | None = None  # ea_to_mc: the VAN ID linked to the phone's existing profile
    waiting_marked: int | None = None  # mc_to_ea: the profile's opt-in waits (its ``marked``); None: it does not


def read_for_van(c: sqlite3.Connection, integration: str, van_id: str, phone: str | None,
                 profile_id: str | None = None) -> Known:
    """What ea_to_mc knows of a VAN ID (and of the profile found for its phone), in one read."""
    fp = q.get_fingerprint(c, integration, f"mc:{van_id}")
    return Known(q.link_for_crm(c, integration, van_id), fp[0] if fp else None,
                 read_observation(c, integration, phone) if phone else None,
                 q.link_for_messaging(c, integration, profile_id) if profile_id else None)


def read_for_profile(c: sqlite3.Connection, integration: str, profile_id: str, phone: str | None = None) -> Known:
    """What mc_to_ea knows of a profile (and of the EveryAction opt-in status last seen for its phone)."""
    fp = q.get_fingerprint(c, integration, f"ea:{profile_id}")
    return Known(q.link_for_messaging(c, integration, profile_id), fp[0] if fp else None,
                 read_observation(c, integration, phone) if phone else None,
                 waiting_marked=_waiting_marked(c, integration, profile_id))


def read_observation(c: sqlite3.Connection, integration: str, phone: str) -> EaObservation | None:
    return EaObservation.loads(q.kv_get(c, integration, f"ea_consent_phone:{phone}"))


def put_observation(integration: str, phone: str, obs: EaObservation) -> TxFn:
    return lambda c: q.kv_set(c, integration, f"ea_consent_phone:{phone}", obs.dumps())


def put_link(integration: str, van_id: str, profile_id: str, now: str) -> TxFn:
    return lambda c: q.put_link(c, integration, van_id, profile_id, now)


def put_fingerprint(integration: str, key: str, fp: str, version: str | None, now: str) -> TxFn:
    return lambda c: q.put_fingerprint(c, integration, key, fp, version, now)


def set_cursor(integration: str, flow: str, value: str, now: str) -> TxFn:
    return lambda c: q.set_cursor(c, integration, flow, value, now)


# -- waiting opt-ins -------------------------------------------------------------------------------------------


def _waiting_marked(c: sqlite3.Connection, integration: str, profile_id: str) -> int | None:
    row = c.execute("SELECT marked FROM ea_mc_waiting_opt_ins WHERE integration = ? AND profile_id = ?",
                    (integration, profile_id)).fetchone()
    return int(row[0]) if row else None


def read_waiting(c: sqlite3.Connection, integration: str, profile_id: str) -> dict[str, Any] | None:
    """The profile's waiting opt-in (for explain), or None."""
    row = c.execute("SELECT reason, since, van_id, marked > examined FROM ea_mc_waiting_opt_ins"
                    " WHERE integration = ? AND profile_id = ?", (integration, profile_id)).fetchone()
    return None if row is None else {"reason": row[0], "since": row[1], "VAN ID": row[2],
                                     "record changed since last examined": bool(row[3])}


def any_waiting(c: sqlite3.Connection, integration: str) -> bool:
    return c.execute("SELECT 1 FROM ea_mc_waiting_opt_ins WHERE integration = ? LIMIT 1",
                     (integration,)).fetchone() is not None


def due_waiting(c: sqlite3.Connection, integration: str) -> list[tuple[str, str]]:
    """(profile id, phone) of the waiting opt-ins whose record changed since mc_to_ea last looked."""
    return [(r[0], r[1]) for r in c.execute(
        "SELECT profile_id, phone FROM ea_mc_waiting_opt_ins WHERE integration = ? AND marked > examined"
        " ORDER BY profile_id", (integration,))]


def put_waiting(integration: str, profile_id: str, phone: str, van_id: str | None, reason: str, examined: int,
                now: str) -> TxFn:
    """The opt-in waits; ``examined``: its ``marked`` as read before the record was (a change counted since
    then keeps it due)."""
    return lambda c: c.execute(
        "INSERT INTO ea_mc_waiting_opt_ins (integration, profile_id, phone, van_id, reason, since, examined)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (integration, profile_id) DO UPDATE SET"
        " phone = excluded.phone, van_id = excluded.van_id, reason = excluded.reason, examined = excluded.examined",
        (integration, profile_id, phone, van_id, reason, now, examined))


def drop_waiting(integration: str, profile_id: str) -> TxFn:
    return lambda c: c.execute("DELETE FROM ea_mc_waiting_opt_ins WHERE integration = ? AND profile_id = ?",
                               (integration, profile_id))


def mark_waiting(integration: str, van_id: str, phone: str | None) -> TxFn:
    """ea_to_mc saw this record change: the opt-ins waiting on it (or on its phone) are due again."""
    return lambda c: c.execute(
        "UPDATE ea_mc_waiting_opt_ins SET marked = marked + 1 WHERE integration = ? AND (van_id = ? OR phone = ?)",
        (integration, van_id, phone))
