"""The sync rules of ``efficy_apsis``: plain functions over plain data. No trio, no I/O.

Everything that decides *what* is written lives here (the flows only fetch, call these, and write):

* sync conditions (field = value, ANDed, typed comparison) and the skip reason naming the condition;
* field mapping (K_CONTACT -> crmid + profile key, email -> email attribute, plus configured mappings);
* the consent decision: holds the CRM Profile -> opt-in, does not -> opt-out, but an opt-out made in APSIS
  is never overwritten by an older Efficy state (newer change wins, tie -> opt-out);
* tag membership (from CRM Profiles per contact; query membership diffs);
* fingerprints of the last payload sent, and the stale-write guard on Efficy's modification time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import structlog

from crmsync.connectors.apsis.records import ATTR_CRMID, ATTR_EMAIL, ApsisProfile, ConsentKey
from crmsync.connectors.efficy.records import EfficyContact, parse_flag, parse_number

log = structlog.get_logger("crmsync.daemon.integrations.efficy_apsis.rules")

OPT_IN = "opt-in"
OPT_OUT = "opt-out"


# -- sync conditions ---------------------------------------------------------------------------------------

def typed_equal(actual: Any, expected: Any) -> bool:
    """Compare an Efficy value with a configured one by the *Efficy value's* type.

    Efficy sends flags and numbers as strings ("1"/"0"), so ``ROBINSON = 0`` must match "0", 0 and False,
    but never "" or a missing value (a missing field does not satisfy a condition).
    """
    if actual is None:
        return False
    if isinstance(actual, bool) or isinstance(expected, bool):
        a, e = parse_flag(actual), parse_flag(expected)
        return a is not None and a == e
    if isinstance(actual, datetime):
        if isinstance(expected, str):
            text = expected.strip()
            return actual.isoformat().startswith(text) or actual.date().isoformat() == text
        return False
    if isinstance(expected, int | float) or isinstance(actual, int | float):
        a_num, e_num = parse_number(actual, "float"), parse_number(expected, "float")
        return a_num is not None and e_num is not None and a_num == e_num
    # two strings compare as text: "01234" is a postcode, not 1234
    return str(actual).strip() == str(expected).strip()


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def condition_reason(name: str, expected: Any) -> str:
    return f"condition_failed:{name}={_show(expected)}"


def failed_condition(fields: Mapping[str, Any], conditions: Mapping[str, Any]) -> str | None:
    """The skip reason of the first condition (in config order) the record fails, or None if all pass."""
    upper = {k.upper(): v for k, v in fields.items()}
    for name, expected in conditions.items():
        if not typed_equal(upper.get(name.upper()), expected):
            return condition_reason(name.upper(), expected)
    return None


def contact_fields(contact: EfficyContact, email_field: str = "EMAIL1") -> dict[str, Any]:
    """All columns of a contact by name, K_CONTACT included (conditions may test any of them)."""
    out: dict[str, Any] = dict(contact.fields)
    out["K_CONTACT"] = int(contact.contact_id) if contact.contact_id.isdigit() else contact.contact_id
    out.setdefault(email_field.upper(), contact.email)
    return out


# -- field mapping -----------------------------------------------------------------------------------------

def attribute_value(value: Any) -> Any:
    """An Efficy value as an APSIS attribute value (JSON-able; dates as ISO strings)."""
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == datetime.min.time() else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return value.strip() or None
    return value


def map_attributes(contact: EfficyContact, mappings: Sequence[tuple[str, str]],
                   email_field: str = "EMAIL1") -> dict[str, Any]:
    """The attribute merge-patch for a contact: crmid and email automatically, then ``(field, attribute)``
    pairs from config. Missing/empty values map to ``None`` (merge-patch: clear)."""
    fields = {k.upper(): v for k, v in contact.fields.items()}
    email = contact.email if contact.email is not None else fields.get(email_field.upper())
    attributes: dict[str, Any] = {ATTR_CRMID: contact.contact_id, ATTR_EMAIL: attribute_value(email)}
    for column, attribute in mappings:
        attributes[attribute] = attribute_value(fields.get(column.upper()))
    return attributes


# -- consent -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConsentRule:
    """One consent mapping: CRM Profile ``profile_id`` -> ``slot`` (topic on one channel)."""

    profile_id: str
    slot: ConsentKey


@dataclass(frozen=True)
class OptOutRecord:
    """A durable note that a person opted out in APSIS (unsubscribe link) on ``slot``.

    ``opted_out_at`` is APSIS's time of the opt-out. ``unlinked_version`` is Efficy's modification time of the
    contact right after crmsync removed the CRM Profile there (None until that is confirmed). Only a contact
    modified *after* that moment can carry a newer, deliberate re-subscription by a CRM user.
    """

    contact_id: str
    profile_id: str
    slot: ConsentKey
    opted_out_at: datetime | None
    unlinked_version: datetime | None = None

    def to_json(self) -> str:
        return json.dumps({
            "contact_id": self.contact_id, "profile_id": self.profile_id, "topic": self.slot.topic,
            "channel": self.slot.channel,
            "opted_out_at": self.opted_out_at.isoformat() if self.opted_out_at else None,
            "unlinked_version": self.unlinked_version.isoformat() if self.unlinked_version else None,
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> OptOutRecord:
        d = json.loads(text)
        return cls(d["contact_id"], d["profile_id"], ConsentKey(d["topic"], d["channel"]),
                   _dt(d.get("opted_out_at")), _dt(d.get("unlinked_version")))


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def parse_apsis_time(value: str | None) -> datetime | None:
    """APSIS timestamps are ISO 8601, often with a ``Z``; an unreadable one counts as unknown."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def newer(a: datetime | None, b: datetime | None) -> bool:
    """Whether ``a`` is strictly newer than ``b``; an unknown time is never newer (ties are not newer)."""
    return a is not None and (b is None or a > b)


def decide_consent(holds_profile: bool, efficy_version: datetime | None,
                   optout: OptOutRecord | None) -> tuple[str, bool]:
    """The consent to hold in APSIS for one mapping, and whether the APSIS opt-out record is now obsolete.

    * No profile on the contact card -> opt-out (a removal is an opt-out).
    * Profile held, no APSIS opt-out on record -> opt-in.
    * Profile held, APSIS opt-out on record -> the opt-out stands unless Efficy changed the contact *after*
      crmsync removed the profile there (``unlinked_version``): only then is the profile's presence a newer
      change (a CRM user re-added it). A read no newer than that (a stale read, or Efficy not yet told) is
      older than the opt-out; a tie goes to the opt-out.
    """
    if not holds_profile:
        return OPT_OUT, False
    if optout is None:
        return OPT_IN, False
    if optout.unlinked_version is not None and newer(efficy_version, optout.unlinked_version):
        return OPT_IN, True
    return OPT_OUT, False


def apsis_optout_wins(apsis_opted_out_at: datetime | None, efficy_version: datetime | None) -> bool:
    """An opt-out already in APSIS against an opt-in we are about to write: the newer change wins, a tie or
    an unknown Efficy time goes to the opt-out (never re-subscribe on doubt)."""
    return not newer(efficy_version, apsis_opted_out_at)


def desired_consents(holds: Iterable[str], efficy_version: datetime | None, rules: Sequence[ConsentRule],
                     optouts: Mapping[tuple[str, ConsentKey], OptOutRecord]
                     ) -> tuple[dict[ConsentKey, str], list[OptOutRecord]]:
    """Consents for every mapping, plus the opt-out records a newer Efficy re-subscription made obsolete."""
    held = set(holds)
    out: dict[ConsentKey, str] = {}
    obsolete: list[OptOutRecord] = []
    for rule in rules:
        record = optouts.get((rule.profile_id, rule.slot))
        kind, clear = decide_consent(rule.profile_id in held, efficy_version, record)
        out[rule.slot] = kind
        if clear and record is not None:
            obsolete.append(record)
    return out, obsolete


def optin_candidates(desired: Mapping[ConsentKey, str], current: ApsisProfile | None) -> list[ConsentKey]:
    """Slots where an opt-in would be *written* (not already sent as opt-in): these get checked against
    APSIS first, so that an opt-out made there in the meantime is never overwritten by an older state."""
    return sorted((ck for ck, kind in desired.items()
                   if kind == OPT_IN and (current is None or current.consents.get(ck) != OPT_IN)),
                  key=lambda ck: (ck.topic, ck.channel))


# -- tags --------------------------------------------------------------------------------------------------

def profile_tags(holds: Iterable[str], tag_profiles: Mapping[str, str]) -> frozenset[str]:
    """Tags a contact gets from the CRM Profiles it holds (tag -> profile id)."""
    held = set(holds)
    return frozenset(tag for tag, pid in tag_profiles.items() if pid in held)


def membership_diff(previous: Iterable[str], current: Iterable[str]) -> tuple[set[str], set[str]]:
    """(joined, left) between two memberships of a query."""
    prev, cur = set(previous), set(current)
    return cur - prev, prev - cur


def retag(have: frozenset[str], tag: str, member: bool) -> frozenset[str]:
    return have | {tag} if member else have - {tag}


# -- fingerprints and staleness ----------------------------------------------------------------------------

def fingerprint(profile: ApsisProfile) -> str:
    """Canonical JSON of the payload sent: equal payloads give equal strings (and it can be read back)."""
    return json.dumps({
        "attributes": dict(sorted(profile.attributes.items())),
        "consents": sorted([ck.topic, ck.channel, kind] for ck, kind in profile.consents.items()),
        "tags": sorted(profile.tags),
    }, sort_keys=True, separators=(",", ":"), default=str)


def profile_from_fingerprint(key: str, text: str) -> ApsisProfile | None:
    """The last payload sent, read back from its fingerprint (None if unreadable: treat as unknown)."""
    try:
        d = json.loads(text)
        return ApsisProfile(key=key, attributes=d["attributes"],
                            consents={ConsentKey(t, c): k for t, c, k in d["consents"]},
                            tags=frozenset(d["tags"]))
    except (ValueError, KeyError, TypeError):
        return None


def version_str(version: datetime | None) -> str | None:
    return version.isoformat() if version is not None else None


def is_stale(contact_version: datetime | None, written_version: str | None) -> bool:
    """True when what was last written came from a strictly newer Efficy state than this read."""
    if contact_version is None or not written_version:
        return False
    try:
        return datetime.fromisoformat(written_version) > contact_version
    except ValueError:
        return False


def with_query_tags(desired: ApsisProfile, current: ApsisProfile | None, query_tags: frozenset[str]
                    ) -> ApsisProfile:
    """Keep query-based tags as last written: the ``tags`` flow owns them, contact syncs must not drop them."""
    kept = (current.tags & query_tags) if current is not None else frozenset()
    return ApsisProfile(desired.key, desired.attributes, desired.consents, desired.tags | kept)


def import_ready(desired: ApsisProfile, current: ApsisProfile | None, address_attributes: Mapping[str, str]
                 ) -> bool:
    """Whether a bulk import reproduces this profile's write exactly.

    Imports never re-subscribe an opt-out (resubscribe_if_opted_out=False) and drop consents whose address
    is empty, so these go per profile instead: an opt-in following an opt-out we sent (a CRM re-subscription,
    which needs the newer-wins check), and any consent on a channel whose address attribute is empty.
    """
    for ck, kind in desired.consents.items():
        if not desired.attributes.get(address_attributes.get(ck.channel, "")):
            return False
        if kind == OPT_IN and current is not None and current.consents.get(ck) == OPT_OUT:
            return False
    return True


# -- one contact's plan ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SyncSpec:
    """The config, reduced to plain data the rules need."""

    email_field: str = "EMAIL1"
    conditions: Mapping[str, Any] = field(default_factory=dict)
    attributes: tuple[tuple[str, str], ...] = ()
    consents: tuple[ConsentRule, ...] = ()
    tag_profiles: Mapping[str, str] = field(default_factory=dict)
    query_tags: frozenset[str] = frozenset()

    @property
    def managed_tags(self) -> frozenset[str]:
        return frozenset(self.tag_profiles) | self.query_tags


@dataclass(frozen=True)
class Plan:
    """What to do with one contact: ``skip`` (with ``reason``), ``unchanged`` or ``write``."""

    action: str
    contact_id: str
    reason: str | None = None
    desired: ApsisProfile | None = None
    current: ApsisProfile | None = None
    obsolete_optouts: tuple[OptOutRecord, ...] = ()


def plan_contact(contact: EfficyContact, spec: SyncSpec, *, current: ApsisProfile | None,
                 written_version: str | None, linked: bool,
                 optouts: Mapping[tuple[str, ConsentKey], OptOutRecord]) -> Plan:
    """Conditions, then the stale guard, then mapping + consent + profile tags, then the fingerprint test."""
    cid = contact.contact_id
    reason = failed_condition(contact_fields(contact, spec.email_field), spec.conditions)
    if reason is not None:
        return Plan("skip", cid, reason=reason)
    if is_stale(contact.modified_at, written_version):
        return Plan("skip", cid, reason="stale_read", current=current)
    holds = contact.profile_ids or ()
    consents, obsolete = desired_consents(holds, contact.modified_at, spec.consents, optouts)
    desired = ApsisProfile(key=cid, attributes=map_attributes(contact, spec.attributes, spec.email_field),
                           consents=consents, tags=profile_tags(holds, spec.tag_profiles))
    desired = with_query_tags(desired, current, spec.query_tags)
    if linked and current is not None and fingerprint(desired) == fingerprint(current) and not obsolete:
        return Plan("unchanged", cid, desired=desired, current=current)
    return Plan("write", cid, desired=desired, current=current if linked else None,
                obsolete_optouts=tuple(obsolete))
