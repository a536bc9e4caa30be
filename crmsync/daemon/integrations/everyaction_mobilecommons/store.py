"""The state this kind keeps, as transaction functions for ``run.flush(...)`` (no trio, no I/O of their own).

* links: crm_id = VAN ID, messaging_id = Mobile Commons profile id;
* fingerprints: ``mc:{vanId}`` (last payload ea_to_mc wanted Mobile Commons to hold) and ``ea:{profileId}``
  (last payload mc_to_ea wanted EveryAction to hold);
* kv ``ea_consent_phone:{E.164}``: the last EveryAction opt-in status seen for that phone number and when (see
  rules.EaObservation). VAN stores opt-in per phone, so it is observed per phone: a record seen without a
  listed mobile must not overwrite what another flow saw for the number.
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
                 read_observation(c, integration, phone) if phone else None)


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
