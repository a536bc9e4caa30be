"""The sync rules of ``efficy_apsis``: plain functions over plain data. No trio, no I/O.

Everything that decides *what* is written lives here (the flows only fetch, call these, and write):

* sync conditions (field = value, ANDed, typed comparison) and the skip reason naming the condition;
* field mapping (K_CONTACT -> crmid + profile key, email -> email attribute, plus configured mappings);
* the consent decision (:func:`resolve_link_consent`): holds the CRM Profile -> opt-in, does not -> opt-out,
  but an opt-out made in APSIS stands unless the CRM Profile *link* is certainly newer (its own change time,
  or an absence crmsync saw after the opt-out); doubt and ties mean opt-out;
* tag membership (from CRM Profiles per contact; query membership diffs);
* fingerprints of the last payload sent, and the stale-write guard on Efficy's modification time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cached_property
from typing import Any

import phonenumbers
import structlog

from crmsync.connectors.apsis.records import (
    ATTR_CRMID,
    ATTR_EMAIL,
    ATTR_MOBILE,
    CHANNEL_EMAIL,
    CHANNEL_SMS,
    KEYSPACE_EMAIL,
    ApsisProfile,
    ConsentKey,
)
from crmsync.connectors.efficy.records import EfficyContact, parse_flag, parse_number
from crmsync.daemon.integrations.efficy_apsis.phones import normalise_phone

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
    return _failed_condition({k.upper(): v for k, v in fields.items()}, conditions)


def _failed_condition(upper: Mapping[str, Any], conditions: Mapping[str, Any]) -> str | None:
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
    return _map_attributes(contact, {k.upper(): v for k, v in contact.fields.items()}, mappings, email_field)


def _map_attributes(contact: EfficyContact, fields: Mapping[str, Any], mappings: Sequence[tuple[str, str]],
                    email_field: str) -> dict[str, Any]:
    email = contact.email if contact.email is not None else fields.get(email_field.upper())
    attributes: dict[str, Any] = {ATTR_CRMID: contact.contact_id, ATTR_EMAIL: attribute_value(email)}
    for column, attribute in mappings:
        attributes[attribute] = attribute_value(fields.get(column.upper()))
    return attributes


# -- values APSIS validates -------------------------------------------------------------------------------

TYPE_PHONE = "phone"
TYPE_EMAIL = "email"
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")


def contact_region(fields: Mapping[str, Any], country_field: str | None, default_region: str | None) -> str | None:
    """The region phone numbers of a contact are read in: its country as an ISO 3166 alpha-2 code when it is
    one phonenumbers knows, else the configured default (None: only numbers already international)."""
    return _contact_region({k.upper(): v for k, v in fields.items()} if country_field else {}, country_field,
                           default_region)


def _contact_region(upper: Mapping[str, Any], country_field: str | None, default_region: str | None
                    ) -> str | None:
    if country_field:
        raw = upper.get(country_field.upper())
        code = str(raw).strip().upper() if raw is not None else ""
        if code in phonenumbers.SUPPORTED_REGIONS:
            return code
    return default_region.upper() if default_region else None


def normalise_email(value: Any) -> str | None:
    text = str(value).strip() if isinstance(value, str) else ""
    return text if _EMAIL_RE.match(text) else None


def normalise_attributes(attributes: Mapping[str, Any], types: Mapping[str, str], region: str | None,
                         columns: Mapping[str, str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Values of typed attributes made valid for APSIS; a value that cannot be is cleared (``None``: left
    out of the profile) with a note naming its Efficy column. Untyped attributes pass unchanged."""
    names = columns or {}
    out = dict(attributes)
    notes: list[str] = []
    for attribute, value in attributes.items():
        kind = types.get(attribute)
        if value is None or kind not in (TYPE_PHONE, TYPE_EMAIL):
            continue
        fixed = normalise_phone(value, region) if kind == TYPE_PHONE else normalise_email(value)
        if fixed is None:
            what = (f"not a valid phone number (region {region})" if region else
                    "not a valid international phone number (no country to read it in)"
                    ) if kind == TYPE_PHONE else "not a valid email address"
            notes.append(f"{names.get(attribute, attribute)} is {what}: left out of the APSIS profile")
        out[attribute] = fixed
    return out, notes


def gate_consents(consents: Mapping[ConsentKey, str], attributes: Mapping[str, Any],
                  address_attributes: Mapping[str, str]) -> tuple[dict[ConsentKey, str], list[str]]:
    """Opt-ins on a channel whose address attribute is empty are not written (no SMS consent without a
    valid mobile); opt-outs always are (they are always safe)."""
    out: dict[ConsentKey, str] = {}
    notes: list[str] = []
    for ck, kind in consents.items():
        address = address_attributes.get(ck.channel)
        if kind == OPT_IN and address is not None and attributes.get(address) in (None, ""):
            notes.append(f"consent {ck.topic} on {ck.channel.rsplit('.', 1)[-1]} not written: no valid "
                         f"address in {address}")
            continue
        out[ck] = kind
    return out, notes


# -- consent -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConsentRule:
    """One consent mapping: CRM Profile ``profile_id`` -> ``slot`` (topic on one channel)."""

    profile_id: str
    slot: ConsentKey


@dataclass(frozen=True)
class OptOutRecord:
    """A durable note that a person opted out in APSIS (unsubscribe link) on ``slot``.

    ``opted_out_at`` is APSIS's time of the opt-out (None when APSIS did not say); ``seen_at`` is when crmsync
    first saw it, an upper bound of that time. ``unlinked_version`` is Efficy's modification time of the
    contact right after crmsync removed the CRM Profile there (None until that is confirmed); it only says
    the opt-out has flowed back, never when a link was made.
    """

    contact_id: str
    profile_id: str
    slot: ConsentKey
    opted_out_at: datetime | None
    unlinked_version: datetime | None = None
    seen_at: datetime | None = None

    def latest_time(self) -> datetime | None:
        """The latest the opt-out can have happened: APSIS's time, else when crmsync first saw it."""
        return self.opted_out_at if self.opted_out_at is not None else self.seen_at

    def to_json(self) -> str:
        return json.dumps({
            "contact_id": self.contact_id, "profile_id": self.profile_id, "topic": self.slot.topic,
            "channel": self.slot.channel,
            "opted_out_at": self.opted_out_at.isoformat() if self.opted_out_at else None,
            "unlinked_version": self.unlinked_version.isoformat() if self.unlinked_version else None,
            "seen_at": self.seen_at.isoformat() if self.seen_at else None,
        }, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> OptOutRecord:
        d = json.loads(text)
        return cls(d["contact_id"], d["profile_id"], ConsentKey(d["topic"], d["channel"]),
                   _dt(d.get("opted_out_at")), _dt(d.get("unlinked_version")), _dt(d.get("seen_at")))


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def parse_apsis_time(value: str | None) -> datetime | None:
    """APSIS timestamps are ISO 8601, often with a ``Z``; an unreadable one counts as unknown."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None  # a time without a zone cannot be compared


# -- when was a CRM Profile link made? -----------------------------------------------------------------------

@dataclass(frozen=True)
class LinkObservation:
    """What crmsync has seen of one (contact, CRM Profile) link in Efficy, by its own reads.

    ``absent_at``: the last time a read showed the link absent. ``present_since``: the first time a read
    showed it present after that (None while absent). Seeing a link says nothing about when it was made;
    only an absence seen *after* an opt-out proves that the link present now was made after the opt-out.
    """

    present_since: datetime | None = None
    absent_at: datetime | None = None


def observe_link(previous: LinkObservation | None, present: bool, at: datetime) -> LinkObservation:
    """``previous`` updated with one read made at ``at``. Reads may be recorded out of order (a full-sync
    page read before a real-time read but stored after it): an older sighting never undoes a newer one."""
    if previous is None:  # a first sighting (every link of a first sync): what the steps below give
        return _first_sighting(present, at)
    prev = previous
    if prev.absent_at is not None and at <= prev.absent_at:
        return prev  # not newer than the last absence: adds nothing
    if present:
        if prev.present_since is not None and prev.present_since <= at:
            return prev
        return LinkObservation(at, prev.absent_at)
    # absent at ``at``: a presence seen only later than that belongs to a link made after ``at``
    later = prev.present_since if prev.present_since is not None and prev.present_since > at else None
    return LinkObservation(later, at)


_first_seen: tuple[datetime | None, LinkObservation, LinkObservation] = (None, LinkObservation(), LinkObservation())


def _first_sighting(present: bool, at: datetime) -> LinkObservation:
    """``LinkObservation(at, None)`` (present) or ``LinkObservation(None, at)``, made once per read time: a
    page's contacts share their read's time object, and the observations are immutable."""
    global _first_seen
    seen = _first_seen
    if seen[0] is not at:
        seen = _first_seen = (at, LinkObservation(at, None), LinkObservation(None, at))
    return seen[1] if present else seen[2]


def _second(t: datetime) -> datetime:
    # Efficy keeps times to the second: a link and an opt-out in the same second are a tie
    return t.replace(microsecond=0)


def link_not_before(contact: EfficyContact, profile_id: str, created_field: str | None = "D_CREATE"
                    ) -> datetime | None:
    """The earliest a link on ``contact`` can have been made, from Efficy's own times: the relation's change
    time when exposed, and the contact's creation time (no link is older than its contact). Never the
    contact's change time. None when neither is known."""
    bounds = [t for t in (contact.profile_changed_at.get(str(profile_id)),
                          contact.fields.get(created_field.upper()) if created_field else None)
              if isinstance(t, datetime)]
    return max(bounds) if bounds else None


def link_times(contact: EfficyContact, profile_ids: Iterable[str], created_column: str | None
               ) -> dict[str, datetime | None]:
    """:func:`link_not_before` of each of ``profile_ids``, the contact's creation time read once
    (``created_column``: the creation field, UPPER-CASE): what the plan of every contact asks."""
    created = contact.fields.get(created_column) if created_column else None
    if not isinstance(created, datetime):
        created = None
    changed_at = contact.profile_changed_at
    out: dict[str, datetime | None] = {}
    for pid in profile_ids:
        changed = changed_at.get(str(pid)) if changed_at else None
        if not isinstance(changed, datetime):
            out[pid] = created
        else:
            out[pid] = changed if created is None else max(changed, created)
    return out


def link_newer_than_optout(opted_out_at: datetime | None, *, link_changed_at: datetime | None = None,
                           observation: LinkObservation | None = None, read_at: datetime | None = None) -> bool:
    """Whether a link seen present by the read made at ``read_at`` is certainly newer than an opt-out.

    Certain means one of: the link's own time (``link_changed_at``: the relation's ``D_CHANGE`` when Efficy
    exposes it, or any other time the link cannot predate, see :func:`link_not_before`) is in a later second
    than the opt-out; or crmsync saw the link absent in a later second than the
    opt-out and before this read. An unknown opt-out time, a link first seen without an absence before it,
    or the same second: not certain.
    """
    if opted_out_at is None:
        return False
    bound = _second(opted_out_at)
    if link_changed_at is not None and _second(link_changed_at) > bound:
        return True
    absent = observation.absent_at if observation is not None else None
    if absent is None or read_at is None or absent >= read_at:
        return False  # never seen absent, or the absence is not known to precede this read
    return _second(absent) > bound


def resolve_link_consent(*, link_present: bool, opted_out: bool, opted_out_at: datetime | None,
                         link_changed_at: datetime | None = None, observation: LinkObservation | None = None,
                         read_at: datetime | None = None) -> str:
    """The consent one CRM Profile mapping gives in APSIS: ``"opt-in"`` or ``"opt-out"``.

    * ``link_present``: the contact holds the CRM Profile in the read made at ``read_at``;
    * ``opted_out`` / ``opted_out_at``: an opt-out made in APSIS on the mapped slot (the footer link), and
      the latest time it can have happened (None: unknown);
    * ``link_changed_at``: the earliest the link can have been made by Efficy's own times
      (:func:`link_not_before`: the relation's ``D_CHANGE`` if exposed, the contact's creation), else None;
    * ``observation``: crmsync's sightings of the link (:func:`observe_link`), this read included.

    No link -> opt-out. A link and no APSIS opt-out -> opt-in. A link and an APSIS opt-out -> opt-in only if
    the link is certainly newer (:func:`link_newer_than_optout`); doubt and ties mean opt-out. The contact's
    own change time plays no part: an unrelated edit is no consent.

    Shared by every write path (per profile, bulk import): they must end in the same state.
    """
    if not link_present:
        return OPT_OUT
    if not opted_out:
        return OPT_IN
    newer_link = link_newer_than_optout(opted_out_at, link_changed_at=link_changed_at, observation=observation,
                                        read_at=read_at)
    return OPT_IN if newer_link else OPT_OUT


def apsis_optout_stands(opted_out_at: datetime | None, *, own_optout_at: datetime | None,
                        link_changed_at: datetime | None, observation: LinkObservation | None,
                        read_at: datetime | None) -> bool:
    """Whether an opt-out APSIS holds now stands against an opt-in about to be written for a linked CRM
    Profile. crmsync's own opt-out (written because the card lacked the link: ``own_optout_at``), with nothing
    newer since, is no person's opt-out and does not stand; any other stands unless the link is certainly
    newer (:func:`resolve_link_consent`). The writer and ``explain`` both ask this."""
    if own_optout_at is not None and opted_out_at is not None and opted_out_at <= own_optout_at:
        return False
    return resolve_link_consent(link_present=True, opted_out=True, opted_out_at=opted_out_at,
                                link_changed_at=link_changed_at, observation=observation,
                                read_at=read_at) == OPT_OUT


def desired_consents(holds: Iterable[str], rules: Sequence[ConsentRule],
                     optouts: Mapping[tuple[str, ConsentKey], OptOutRecord], *,
                     link_changed_at: Mapping[str, datetime | None] | None = None,
                     observations: Mapping[str, LinkObservation] | None = None,
                     read_at: datetime | None = None) -> tuple[dict[ConsentKey, str], list[OptOutRecord]]:
    """Consents for every mapping, plus the opt-out records a newer CRM link made obsolete."""
    held = set(holds)
    times = link_changed_at or {}
    seen = observations or {}
    out: dict[ConsentKey, str] = {}
    obsolete: list[OptOutRecord] = []
    for rule in rules:
        record = optouts.get((rule.profile_id, rule.slot))
        kind = resolve_link_consent(
            link_present=rule.profile_id in held, opted_out=record is not None,
            opted_out_at=record.latest_time() if record is not None else None,
            link_changed_at=times.get(rule.profile_id), observation=seen.get(rule.profile_id), read_at=read_at)
        out[rule.slot] = kind
        if kind == OPT_IN and record is not None:
            obsolete.append(record)
    return out, obsolete


def observe_contact(contact: EfficyContact, rules: Sequence[ConsentRule],
                    previous: Mapping[str, LinkObservation], read_at: datetime | None
                    ) -> tuple[dict[str, LinkObservation], tuple[tuple[str, bool], ...]]:
    """The observations after this read of ``contact`` (for every mapped CRM Profile), and the sightings
    ``(profile_id, present)`` to record. Nothing is seen when the read carried no profiles."""
    return _observe(contact, sorted({rule.profile_id for rule in rules}), previous, read_at)


def _observe(contact: EfficyContact, profile_ids: Sequence[str], previous: Mapping[str, LinkObservation],
             read_at: datetime | None) -> tuple[dict[str, LinkObservation], tuple[tuple[str, bool], ...]]:
    """:func:`observe_contact` with the mapped CRM Profile ids given sorted (a spec makes them once)."""
    out = dict(previous)
    held = contact.profile_ids
    if held is None or read_at is None:
        return out, ()
    sightings = []
    for pid in profile_ids:
        present = str(pid) in held  # contact.has_profile(pid)
        before = previous.get(pid)
        out[pid] = _first_sighting(present, read_at) if before is None else observe_link(before, present, read_at)
        sightings.append((pid, present))
    return out, tuple(sightings)


def optin_candidates(desired: Mapping[ConsentKey, str], current: ApsisProfile | None) -> list[ConsentKey]:
    """Slots where an opt-in would be *written* (not already sent as opt-in): these get checked against
    APSIS first, so that an opt-out made there in the meantime is never overwritten by an older state."""
    return sorted((ck for ck, kind in desired.items()
                   if kind == OPT_IN and (current is None or current.consents.get(ck) != OPT_IN)),
                  key=lambda ck: (ck.topic, ck.channel))


# -- tags --------------------------------------------------------------------------------------------------

def profile_tags(holds: Iterable[str], tag_profiles: Mapping[str, str]) -> frozenset[str]:
    """Tags a contact gets from the CRM Profiles it holds (tag -> profile id)."""
    if not tag_profiles:
        return frozenset()
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
    """Canonical JSON of the payload sent: equal payloads give equal strings (and it can be read back).

    The text is ``json.dumps`` of ``{"attributes", "consents", "tags"}`` with sorted keys, compact separators
    and ASCII escapes; :func:`_fingerprint_fast` writes the same text directly for the usual profile (string
    keys, text/null/boolean/integer values), every other profile goes through ``json.dumps``."""
    text = _fingerprint_fast(profile)
    return text if text is not None else _fingerprint_json(profile)


def _fingerprint_json(profile: ApsisProfile) -> str:
    return json.dumps({
        "attributes": dict(profile.attributes),  # sort_keys orders them
        "consents": sorted([ck.topic, ck.channel, kind] for ck, kind in profile.consents.items()),
        "tags": sorted(profile.tags),
    }, sort_keys=True, separators=(",", ":"), default=str)


_json_text = json.encoder.encode_basestring_ascii  # what json.dumps writes for a str (ensure_ascii)


# JSON texts of the config's attribute names (``"name":``), consent slots (``["topic","channel","kind"]``) and
# tags (``"tag"``), each made once: a spec names a handful of each, and every fingerprint writes them
_name_texts: dict[str, str] = {}
_slot_texts: dict[tuple[str, str, str], str] = {}
_tag_texts: dict[str, str] = {}


def _remember(texts: dict[Any, str], key: Any, text: str) -> str:
    if len(texts) > 4096:  # bounded whatever the data
        texts.clear()
    texts[key] = text
    return text


def _fingerprint_fast(profile: ApsisProfile) -> str | None:
    """The text of :func:`_fingerprint_json` built without the encoder (a bulk sync makes one per contact),
    or None when some value is of a type whose JSON form is left to ``json.dumps`` (floats, odd types)."""
    attributes = profile.attributes
    parts: list[str] = []
    for name in sorted(attributes):
        if type(name) is not str:
            return None
        value = attributes[name]
        if type(value) is str:
            cell = _json_text(value)
        elif value is None:
            cell = "null"
        elif value is True:
            cell = "true"
        elif value is False:
            cell = "false"
        elif type(value) is int:
            cell = int.__repr__(value)
        else:
            return None
        head = _name_texts.get(name)
        if head is None:
            head = _remember(_name_texts, name, _json_text(name) + ":")
        parts.append(head + cell)
    consents: list[tuple[str, str, str]] = []
    for ck, kind in profile.consents.items():
        if type(ck.topic) is not str or type(ck.channel) is not str or type(kind) is not str:
            return None
        consents.append((ck.topic, ck.channel, kind))
    consents.sort()  # as the lists [topic, channel, kind] sort
    slots: list[str] = []
    for slot in consents:
        text = _slot_texts.get(slot)
        if text is None:
            text = _remember(_slot_texts, slot, f"[{_json_text(slot[0])},{_json_text(slot[1])},{_json_text(slot[2])}]")
        slots.append(text)
    tags: list[str] = []
    for tag in sorted(profile.tags):
        if type(tag) is not str:
            return None
        text = _tag_texts.get(tag)
        tags.append(text if text is not None else _remember(_tag_texts, tag, _json_text(tag)))
    return f'{{"attributes":{{{",".join(parts)}}},"consents":[{",".join(slots)}],"tags":[{",".join(tags)}]}}'


def profile_from_fingerprint(key: str, text: str) -> ApsisProfile | None:
    """The last payload sent, read back from its fingerprint (None if unreadable: treat as unknown)."""
    try:
        d = json.loads(text)
        return ApsisProfile(key=key, attributes=d["attributes"],
                            consents={ConsentKey(t, c): k for t, c, k in d["consents"]},
                            tags=frozenset(d["tags"]))
    except (ValueError, KeyError, TypeError):
        return None


_last_version: tuple[datetime | None, str | None] = (None, None)


def version_str(version: datetime | None) -> str | None:
    """The text stored for an Efficy modification time (``isoformat``). A page's rows with the same time
    share one object (the reader parses each text once a page): its text is made once too."""
    global _last_version
    last = _last_version
    if version is last[0]:
        return last[1]
    text = version.isoformat() if version is not None else None
    _last_version = (version, text)
    return text


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
    if kept <= desired.tags:  # nothing to keep (every plan asks): no copy of the profile
        return desired
    return ApsisProfile.owning(desired.key, desired.attributes, desired.consents, desired.tags | kept)


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
    created_field: str | None = "D_CREATE"  # the contact's creation time: a bound on its links' age
    # attribute discriminator -> "phone" | "email": values normalised (or left out) before sending
    attribute_types: Mapping[str, str] = field(
        default_factory=lambda: {ATTR_MOBILE: TYPE_PHONE, ATTR_EMAIL: TYPE_EMAIL})
    country_field: str | None = "COUNTRY"  # the contact's country (ISO alpha-2): the region of its phones
    default_region: str | None = None
    # channel -> the attribute holding its address
    address_attributes: Mapping[str, str] = field(
        default_factory=lambda: {CHANNEL_EMAIL: ATTR_EMAIL, CHANNEL_SMS: ATTR_MOBILE})

    merge_email_profiles: bool = True  # merge with an email-keyspace profile of the address on first sync
    email_keyspace: str = KEYSPACE_EMAIL

    def attribute_columns(self) -> dict[str, str]:
        """Attribute discriminator -> the Efficy column it comes from (for report notes)."""
        return {ATTR_EMAIL: self.email_field.upper(), **{a: c.upper() for c, a in self.attributes}}

    @cached_property
    def columns(self) -> dict[str, str]:
        """:meth:`attribute_columns`, made once per spec (the plan of every contact names them)."""
        return self.attribute_columns()

    @cached_property
    def managed_tags(self) -> frozenset[str]:
        return frozenset(self.tag_profiles) | self.query_tags

    # made once per spec, asked by the plan of every contact

    @cached_property
    def observed_profile_ids(self) -> list[str]:
        """The mapped CRM Profile ids, sorted: the links every read observes (:func:`observe_contact`)."""
        return sorted({rule.profile_id for rule in self.consents})

    @cached_property
    def created_column(self) -> str | None:
        return self.created_field.upper() if self.created_field else None


@dataclass
class Known:
    """What crmsync knows of one contact before syncing it (read from the store in one transaction)."""

    current: ApsisProfile | None = None  # the last payload sent (None: never, or unknown)
    written_version: str | None = None  # Efficy modification time of that payload
    linked: bool = False
    optouts: dict[tuple[str, ConsentKey], OptOutRecord] = field(default_factory=dict)
    observations: dict[str, LinkObservation] = field(default_factory=dict)  # by CRM Profile id
    merge_refused: str | None = None  # APSIS's 409 on merging with the email-keyspace profile
    own_optouts: dict[ConsentKey, datetime] = field(default_factory=dict)  # when crmsync's opt-out took effect


@dataclass(frozen=True)
class Plan:
    """What to do with one contact: ``skip`` (with ``reason``), ``unchanged`` or ``write``."""

    action: str
    contact_id: str
    reason: str | None = None
    desired: ApsisProfile | None = None
    current: ApsisProfile | None = None
    obsolete_optouts: tuple[OptOutRecord, ...] = ()
    read_at: datetime | None = None  # when the Efficy read behind this plan was made
    observations: Mapping[str, LinkObservation] = field(default_factory=dict)  # this read included
    sightings: tuple[tuple[str, bool], ...] = ()  # (profile id, present) seen by this read, to record
    notes: tuple[str, ...] = ()  # values left out, consents not written: for the report row
    merge_refused: str | None = None  # APSIS refused merging this contact's profile before (never retried)
    own_optouts: Mapping[ConsentKey, datetime] = field(default_factory=dict)


def plan_contact(contact: EfficyContact, spec: SyncSpec, *, known: Known | None = None,
                 read_at: datetime | None = None, current: ApsisProfile | None = None,
                 written_version: str | None = None, linked: bool = False,
                 optouts: Mapping[tuple[str, ConsentKey], OptOutRecord] | None = None) -> Plan:
    """Link sightings first (a fact whatever happens next), then conditions, the stale guard, mapping +
    consent + profile tags, then the fingerprint test. ``read_at`` is when the Efficy read was made;
    ``known`` is what the store holds on the contact (or give ``current`` ... ``optouts`` one by one)."""
    if known is None:
        known = Known(current=current, written_version=written_version, linked=linked,
                      optouts=dict(optouts or {}))
    current, written_version, linked, optouts = known.current, known.written_version, known.linked, known.optouts
    cid = contact.contact_id
    seen, sightings = _observe(contact, spec.observed_profile_ids, known.observations, read_at)
    evidence: dict[str, Any] = {"read_at": read_at, "observations": seen, "sightings": sightings,
                                "merge_refused": known.merge_refused, "own_optouts": dict(known.own_optouts)}
    # the contact's columns by UPPER-CASE name, made once for the conditions, the mapping and the region (read
    # only): the contact's own fields when every name is upper-case already (as a page's reader makes them)
    fields = contact.fields
    upper = fields if _upper_case_names(fields) else {k.upper(): v for k, v in fields.items()}
    if len(upper) == len(contact.fields):  # no two columns differ by case only: same as contact_fields
        tested = dict(upper)
        tested["K_CONTACT"] = int(cid) if cid.isdigit() else cid
        email_column = spec.email_field.upper()
        if email_column not in contact.fields:
            tested[email_column] = contact.email
        reason = _failed_condition(tested, spec.conditions)
    else:
        reason = failed_condition(contact_fields(contact, spec.email_field), spec.conditions)
    if reason is not None:
        return _new_plan("skip", cid, evidence, reason=reason)
    if is_stale(contact.modified_at, written_version):
        return _new_plan("skip", cid, evidence, reason="stale_read", current=current)
    holds = contact.profile_ids or ()
    times = link_times(contact, (rule.profile_id for rule in spec.consents), spec.created_column)
    consents, obsolete = desired_consents(holds, spec.consents, optouts, link_changed_at=times,
                                          observations=seen, read_at=read_at)
    region = _contact_region(upper, spec.country_field, spec.default_region)
    attributes, notes = normalise_attributes(_map_attributes(contact, upper, spec.attributes, spec.email_field),
                                             spec.attribute_types, region, spec.columns)
    consents, gated = gate_consents(consents, attributes, spec.address_attributes)
    evidence["notes"] = tuple(notes + gated)
    desired = ApsisProfile.owning(cid, attributes, consents, profile_tags(holds, spec.tag_profiles))
    desired = with_query_tags(desired, current, spec.query_tags)
    if linked and current is not None and fingerprint(desired) == fingerprint(current) and not obsolete:
        return _new_plan("unchanged", cid, evidence, desired=desired, current=current)
    return _new_plan("write", cid, evidence, desired=desired, current=current if linked else None,
                     obsolete_optouts=tuple(obsolete))


_upper_layouts: dict[tuple[Any, ...], bool] = {}  # column names -> all upper-case already (a page's rows share one)


def _upper_case_names(fields: Mapping[str, Any]) -> bool:
    """Whether every column name of ``fields`` is its own upper case (``{k.upper(): v}`` would be the same
    mapping), decided once per set of column names."""
    names = tuple(fields)
    known = _upper_layouts.get(names)
    if known is None:
        if len(_upper_layouts) > 256:  # bounded whatever the data
            _upper_layouts.clear()
        known = _upper_layouts[names] = all(name.upper() == name for name in names)
    return known


def _new_plan(action: str, contact_id: str, evidence: dict[str, Any], *, reason: str | None = None,
              desired: ApsisProfile | None = None, current: ApsisProfile | None = None,
              obsolete_optouts: tuple[OptOutRecord, ...] = ()) -> Plan:
    """``Plan(action, contact_id, reason=..., ..., **evidence)`` without the frozen dataclass's per-field
    ``__init__`` (one plan per contact): every field set, ``notes`` ``()`` unless the evidence gives them."""
    plan = object.__new__(Plan)
    plan.__dict__.update(action=action, contact_id=contact_id, reason=reason, desired=desired, current=current,
                         obsolete_optouts=obsolete_optouts, read_at=evidence["read_at"],
                         observations=evidence["observations"], sightings=evidence["sightings"],
                         notes=evidence.get("notes", ()), merge_refused=evidence["merge_refused"],
                         own_optouts=evidence["own_optouts"])
    return plan
