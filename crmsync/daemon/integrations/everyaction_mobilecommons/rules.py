"""The sync rules of EveryAction <-> Mobile Commons, as plain functions over plain data (no trio, no I/O).

* a :class:`Contact` is one person as either side shows it, with the standard fields only;
* :func:`ineligible_reason`: listed US mobile number, Country US, Required? fields (seed);
* :func:`resolve_consent`: which opt-in status wins when the two sides disagree (architecture.md invariants
  1, 2 and 4): a known status beats "unknown"; between an opt-in and an opt-out, the opt-in wins only when it
  is *certainly* newer, so a tie or any doubt means opt-out;
* :func:`plan_ea_to_mc` / :func:`plan_mc_to_ea`: what to write to the other side (fields that differ,
  subscribe, opt out), or why to skip; Liberal moves profile data whatever the status, Conservative only for
  records whose EveryAction opt-in is true; consent moves the same way in both modes;
* :func:`fingerprint`: a stable digest of a desired payload, so an unchanged record costs no write call.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from crmsync.connectors.everyaction.records import OptInStatus, VanPerson
from crmsync.connectors.everyaction.records import normalize_us_phone as us_e164
from crmsync.connectors.mobilecommons.records import Profile, is_opted_in

# -- fields ------------------------------------------------------------------------------------------------

#: The standard fields of the seed's table, in its order. Custom fields are never synced.
FIELDS: tuple[str, ...] = (
    "opt_in_status", "phone", "email", "first_name", "last_name", "street_address", "street_address_2",
    "city", "state", "zip_code", "country", "identifier",
)
#: EveryAction API field names each field may be mapped to (the first is the default). Any other name would
#: make the sync fail, which the seed warns about, so check-config refuses it.
API_FIELDS: Mapping[str, tuple[str, ...]] = {
    "opt_in_status": ("phoneOptInStatus", "smsOptInStatus"), "phone": ("phoneNumber",), "email": ("email",),
    "first_name": ("firstName",), "last_name": ("lastName",), "street_address": ("addressLine1",),
    "street_address_2": ("addressLine2",), "city": ("city",), "state": ("stateOrProvince",),
    "zip_code": ("zipOrPostalCode",), "country": ("countryCode",), "identifier": ("vanId",),
}
_CAUTION_1 = ("do not select Required? for Phone number, Email or Opt-in status: these fields must exist in "
              "both databases by default for any data to sync")
_CAUTION_2 = ("do not select Required? for the Constituent ID: it is provided by EveryAction, so Mobile "
              "Commons profiles do not have it yet and the sync from Mobile Commons to EveryAction would fail")
NEVER_REQUIRED: Mapping[str, str] = {
    "phone": _CAUTION_1, "email": _CAUTION_1, "opt_in_status": _CAUTION_1, "identifier": _CAUTION_2,
}
#: Profile data fields (what Liberal/Conservative govern). The phone is the key; consent is separate.
DATA_FIELDS: tuple[str, ...] = (
    "email", "first_name", "last_name", "street_address", "street_address_2", "city", "state", "zip_code",
    "country",
)
_US = {"us", "usa", "united states", "united states of america"}


class Consent(enum.Enum):
    IN = "in"
    OUT = "out"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ConsentFact:
    """A status and when it was set, as an interval: at or after ``after``, at or before ``by``.
    ``None`` bounds mean "unknown" (as old as could be, or as new as could be)."""

    status: Consent
    after: datetime | None = None
    by: datetime | None = None


@dataclass(frozen=True)
class Contact:
    """One person on one side, standard fields only; ``phone`` is the listed mobile number in E.164."""

    phone: str | None = None
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    street_address: str | None = None
    street_address_2: str | None = None
    city: str | None = None
    state: str | None = None
    zip_code: str | None = None
    country: str | None = None
    has_phone: bool = False  # some phone is listed, mobile or not (for the skip reason)
    mobile_not_us: bool = False  # a mobile number is listed, but it is not a US number
    #: that non-US (North-American) mobile in E.164: its data never syncs, but an opt-out still travels to it
    other_mobile: str | None = None

    @property
    def consent_phone(self) -> str | None:
        """The number whose opt-in status this record carries (VAN and Mobile Commons key consent by phone)."""
        return self.phone or self.other_mobile

    def merged_over(self, other: Contact) -> Contact:
        """This record's values, with ``other``'s filling what this one lacks (phone and country stay
        this record's own)."""
        filled: dict[str, Any] = {name: self.get(name) or other.get(name)
                                  for name in DATA_FIELDS if name != "country"}
        return replace(self, **filled)

    def get(self, name: str) -> str | None:
        value = getattr(self, name, None)
        return value if isinstance(value, str) and value.strip() else None


# -- reading each side -------------------------------------------------------------------------------------


def _clean(value: str | None) -> str | None:
    text = " ".join((value or "").split())
    return text or None


def contact_from_van(person: VanPerson) -> Contact:
    """The person's listed mobile (a Cell/Mobile phone; the preferred one first) and preferred address.
    A listed mobile that is not a US number (a Canadian cell, say) marks the record as not US."""
    phones = list(person.phones or ())
    mobiles = sorted((p for p in phones if p.is_mobile and p.e164), key=lambda p: not p.is_preferred)
    foreign = [e for e in (nanp_e164(p.number) for p in phones if p.is_mobile) if e] if not mobiles else []
    address = person.preferred_address
    return Contact(
        phone=mobiles[0].e164 if mobiles else None, email=_clean(person.preferred_email),
        first_name=_clean(person.first_name), last_name=_clean(person.last_name),
        street_address=_clean(address.line1) if address else None,
        street_address_2=_clean(address.line2) if address else None,
        city=_clean(address.city) if address else None, state=_clean(address.state) if address else None,
        zip_code=_clean(address.zip) if address else None,
        country=_clean(address.country_code) if address else None, has_phone=bool(phones),
        mobile_not_us=bool(foreign) or (not mobiles and any(p.is_mobile for p in phones)),
        other_mobile=foreign[0] if foreign else None,
    )


def nanp_e164(raw: str | None) -> str | None:
    """E.164 of a North-American number (US or not): what both APIs accept and key consent by."""
    digits = "".join(c for c in raw or "" if c.isdigit())
    if len(digits) == 11 and digits.startswith("1"):
        digits = digits[1:]
    return f"+1{digits}" if len(digits) == 10 and digits[0] in "23456789" else None


def van_consent(person: VanPerson, phone: str | None) -> Consent:
    """VAN stores opt-in per phone: the status of the listed mobile number."""
    match = next((p for p in person.phones or () if nanp_e164(p.number) == phone), None) if phone else None
    status = match.effective_opt_in if match else None
    return {OptInStatus.OPT_IN: Consent.IN, OptInStatus.OPT_OUT: Consent.OUT}.get(status, Consent.UNKNOWN) \
        if status is not None else Consent.UNKNOWN


def contact_from_profile(profile: Profile) -> Contact:
    """A profile's phone is its mobile number (11 digits on the wire); only US numbers count."""
    phone = us_e164(profile.raw_phone_number)
    return Contact(
        phone=phone, mobile_not_us=phone is None and bool(profile.raw_phone_number),
        other_mobile=nanp_e164(profile.raw_phone_number) if phone is None else None, email=_clean(profile.email),
        first_name=_clean(profile.first_name), last_name=_clean(profile.last_name),
        street_address=_clean(profile.street1), street_address_2=_clean(profile.street2),
        city=_clean(profile.city), state=_clean(profile.state), zip_code=_clean(profile.postal_code),
        country=_clean(profile.country), has_phone=bool(profile.raw_phone_number),
    )


#: Mobile Commons stamps whole seconds (research B2): a change stamped t happened in [t, t + 1 s).
MC_RESOLUTION = timedelta(seconds=1)


def mc_consent(profile: Profile | None) -> ConsentFact:
    """Mobile Commons knows when, to the second: the newest activation, or the opt-out time, each as the
    interval [stamp, stamp + 1 s)."""
    if profile is None:
        return ConsentFact(Consent.UNKNOWN)
    if is_opted_in(profile):
        times = [s.activated_at for s in profile.subscriptions if s.active and s.activated_at]
        at = max(times) if times else profile.updated_at
        return ConsentFact(Consent.IN, at, at + MC_RESOLUTION if at else None)
    outs = [t for t in [profile.opted_out_at, *(s.opted_out_at for s in profile.subscriptions)] if t]
    if outs:
        return ConsentFact(Consent.OUT, max(outs), max(outs) + MC_RESOLUTION)
    if (profile.status or "").strip().casefold() == "texted a stop word":
        return ConsentFact(Consent.OUT, None, profile.updated_at + MC_RESOLUTION if profile.updated_at else None)
    return ConsentFact(Consent.UNKNOWN)


# -- EveryAction consent observations ----------------------------------------------------------------------
# VAN does not say when an opt-in status was set. We remember what we saw and when, so that a later change
# can be placed in time: it happened after we last saw the old status and no later than now.


@dataclass(frozen=True)
class EaObservation:
    status: Consent
    after: datetime | None  # the status was set at or after this (None: unknown, maybe long ago)
    by: datetime  # ... and at or before this
    seen: datetime  # when we last saw it

    def fact(self) -> ConsentFact:
        return ConsentFact(self.status, self.after, self.by)

    def dumps(self) -> str:
        return json.dumps({"s": self.status.value, "a": self.after.isoformat() if self.after else None,
                           "b": self.by.isoformat(), "t": self.seen.isoformat()}, sort_keys=True)

    @staticmethod
    def loads(text: str | None) -> EaObservation | None:
        if not text:
            return None
        d = json.loads(text)
        return EaObservation(Consent(d["s"]), datetime.fromisoformat(d["a"]) if d["a"] else None,
                             datetime.fromisoformat(d["b"]), datetime.fromisoformat(d["t"]))


def observe_ea(previous: EaObservation | None, status: Consent, now: datetime) -> EaObservation:
    if previous is None:
        return EaObservation(status, None, now, now)  # first sight: set at some unknown time up to now
    if previous.status == status:
        return replace(previous, seen=now)
    return EaObservation(status, previous.seen, now, now)


def written_ea(status: Consent, now: datetime) -> EaObservation:
    """We set it ourselves, now."""
    return EaObservation(status, now, now, now)


# -- consent resolution ------------------------------------------------------------------------------------


def resolve_consent(ea: ConsentFact, mc: ConsentFact) -> Consent:
    """The status both sides should have.

    * equal: nothing to resolve; a known status beats ``UNKNOWN`` (an opt-in or opt-out is a real event);
    * opt-in vs opt-out: the opt-in wins only when it was certainly set after the opt-out (its earliest
      possible time is later than the opt-out's latest possible time). A tie, or not knowing, means opt-out:
      an opt-out is never overwritten by an older (or possibly older) opt-in.
    """
    if ea.status == mc.status:
        return ea.status
    if Consent.UNKNOWN in (ea.status, mc.status):
        return mc.status if ea.status == Consent.UNKNOWN else ea.status
    opt_in, opt_out = (ea, mc) if ea.status == Consent.IN else (mc, ea)
    if opt_in.after is not None and opt_out.by is not None and opt_in.after > opt_out.by:
        return Consent.IN
    return Consent.OUT


# -- eligibility -------------------------------------------------------------------------------------------


def is_us(country: str | None) -> bool:
    return (country or "").strip().casefold() in _US


def ineligible_reason(contact: Contact, required: frozenset[str], *, missing_country_is_us: bool = False,
                      check_country: bool = True) -> str | None:
    """Why this record may not sync (a report reason), or None.

    The seed: "User records must include a listed mobile number and the Country field setting must be US";
    "The following fields are required: Phone number, Email, Opt-in status". Order: mobile number (a
    listed mobile that is not a US number is ``country_not_us``), country, email, Required? fields.
    ``check_country=False`` for a new EveryAction record made from a Mobile Commons opt-in (it has no
    EveryAction country yet)."""
    if contact.phone is None:
        return "country_not_us" if contact.mobile_not_us else "no_mobile_number"
    if check_country and not is_us(contact.country) and not (missing_country_is_us and contact.country is None):
        return "country_not_us"
    if contact.email is None:
        return "no_email"
    for name in FIELDS:
        if name in required and name not in NEVER_REQUIRED and contact.get(name) is None:
            return f"required_field_empty:{name}"
    return None


# -- consent explanations ------------------------------------------------------------------------------------

_SIDE = {"ea": "EveryAction", "mc": "Mobile Commons"}


def _when(fact: ConsentFact) -> str:
    def t(value: datetime) -> str:
        return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value.utcoffset() is not None else value.isoformat()

    if fact.after is not None and fact.by is not None and fact.after == fact.by:
        return f"at {t(fact.after)}"
    if fact.after is None and fact.by is not None:
        return f"at an unknown time up to {t(fact.by)}"
    if fact.after is not None and fact.by is not None:
        return f"between {t(fact.after)} and {t(fact.by)}"
    return "at an unknown time"


def consent_note(ea: ConsentFact, mc: ConsentFact, final: Consent) -> str | None:
    """Which side's status won and why, when one side says opt-in and the other opt-out (None otherwise)."""
    if {ea.status, mc.status} != {Consent.IN, Consent.OUT}:
        return None
    in_side, out_side = ("ea", "mc") if ea.status == Consent.IN else ("mc", "ea")
    opt_in, opt_out = (ea, mc) if in_side == "ea" else (mc, ea)
    if final == Consent.IN:
        return (f"{_SIDE[in_side]} opt-in wins: it was set {_when(opt_in)}, certainly after the "
                f"{_SIDE[out_side]} opt-out (set {_when(opt_out)}); the newer change wins")
    return (f"{_SIDE[out_side]} opt-out wins: it was set {_when(opt_out)} and the {_SIDE[in_side]} opt-in "
            f"{_when(opt_in)}, so the opt-in is not certainly newer (a tie or any doubt means opt-out)")


# -- payloads and fingerprints -----------------------------------------------------------------------------


def fingerprint(payload: Mapping[str, object]) -> str:
    """Stable digest of a desired payload (sorted keys; None dropped)."""
    clean = {k: v for k, v in payload.items() if v is not None}
    return hashlib.sha256(json.dumps(clean, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _same(a: str | None, b: str | None) -> bool:
    return (a or "").strip().casefold() == (b or "").strip().casefold()


def data_diff(source: Contact, dest: Contact | None) -> dict[str, str]:
    """Data fields the source has and the destination lacks or holds differently. Empty source values
    never blank the destination (a missing value is not a deletion)."""
    out = {}
    for name in DATA_FIELDS:
        value = source.get(name)
        if value is not None and (dest is None or not _same(value, dest.get(name))):
            out[name] = value
    return out


@dataclass(frozen=True)
class Plan:
    """What a flow does for one record. ``skip`` set: nothing is written (unless ``opt_out``)."""

    skip: str | None = None
    data: dict[str, str] = field(default_factory=dict)  # data fields to write
    link_id: str | None = None  # the identifier to write on the other side (VAN ID / MC id), if missing
    subscribe: bool = False  # ea_to_mc: through the default web opt-in path
    opt_in: bool = False  # mc_to_ea: set EveryAction opt-in status true
    opt_out: bool = False
    consent: Consent = Consent.UNKNOWN  # the resolved status
    note: str | None = None
    #: the record syncs: both ids go to both sides (the seed: "Mobile Commons pushes records to EveryAction to
    #: add the identifier to the profile"; "the record number from the EveryAction system is added to the
    #: Constituent ID field")
    links: bool = False

    @property
    def writes(self) -> bool:
        return bool(self.data or self.link_id or self.subscribe or self.opt_in or self.opt_out)


def _join(*notes: str | None) -> str | None:
    text = "; ".join(n for n in notes if n)
    return text or None


def plan_ea_to_mc(
    *,
    contact: Contact,
    ea: ConsentFact,
    profile: Contact | None,
    mc: ConsentFact,
    van_id: str,
    profile_constituent_id: str | None,
    liberal: bool,
    required: frozenset[str],
    opt_in_path: str | None,
    payload_unchanged: bool,
    missing_country_is_us: bool = False,
) -> Plan:
    """EveryAction record -> Mobile Commons profile (``profile`` None: none has this mobile number yet).

    Data (and the Constituent ID) are gated by eligibility and, in Conservative, by the *EveryAction* opt-in
    status only; consent is decided separately by :func:`resolve_consent` (newer wins, tie or doubt means
    opt-out), so a Mobile Commons opt-out never withholds the data."""
    final = resolve_consent(ea, mc)
    note = consent_note(ea, mc, final)
    # An opt-out always travels, whatever the eligibility or sync type: skipping it could text someone who
    # opted out. It needs only an existing profile to act on.
    opt_out = final == Consent.OUT and profile is not None and mc.status != Consent.OUT
    reason = ineligible_reason(contact, required, missing_country_is_us=missing_country_is_us)
    if reason is None and not liberal and ea.status != Consent.IN:
        reason = "not_opted_in"  # Conservative: only records whose EveryAction opt-in is true
    if reason is not None:
        return Plan(skip=reason, opt_out=opt_out, consent=final, note=note)
    # Subscribing sends the welcome: only for a certain opt-in (the EveryAction one, the resolved status) onto
    # a profile that never opted out.
    subscribe = (final == Consent.IN and ea.status == Consent.IN and mc.status == Consent.UNKNOWN
                 and opt_in_path is not None)
    if final == Consent.IN and mc.status == Consent.OUT:
        # The EveryAction opt-in is newer, but the API cannot re-subscribe someone who opted out (B5):
        # a re-opt-in must come from the subscriber. Data still moves; consent stays as it is.
        note = _join(note, "opted out in Mobile Commons; the API cannot re-subscribe, the subscriber must "
                           "opt in again")
    data = {} if payload_unchanged else data_diff(contact, profile)
    # Liberal may create a profile for someone EveryAction has opted out: record the opt-out there too.
    opt_out = final == Consent.OUT and mc.status != Consent.OUT  # the profile exists or is created here
    link = van_id if profile_constituent_id != van_id else None
    return Plan(data=data, link_id=link, subscribe=subscribe, opt_out=opt_out, consent=final, note=note,
                links=True)


def plan_mc_to_ea(
    *,
    contact: Contact,
    mc: ConsentFact,
    person: Contact | None,
    ea: ConsentFact,
    liberal: bool,
    required: frozenset[str],
    payload_unchanged: bool,
    has_identifier: bool,
    missing_country_is_us: bool = False,
) -> Plan:
    """Mobile Commons profile -> EveryAction record (``person`` None: no matching record).

    Eligibility is judged on the matched EveryAction record (its country; its values, filled from the
    profile), since keyword joiners' profiles carry no address. A new record needs an email and a US mobile
    number (the seed: "For users whose profile records contain an email address, new opt-ins are added to
    EveryAction as a new record with an opt-in status of true")."""
    final = resolve_consent(ea, mc)
    note = consent_note(ea, mc, final)
    if person is None:
        if mc.status == Consent.IN and final == Consent.IN:
            reason = ineligible_reason(contact, required, missing_country_is_us=missing_country_is_us,
                                       check_country=False)
            if reason is not None:
                return Plan(skip=reason, consent=final, note=note)
            return Plan(data=data_diff(contact, None), opt_in=True, consent=final, note=note, links=True)
        reason = "no_matching_record"
        if contact.phone is None:
            reason = "country_not_us" if contact.mobile_not_us else "no_mobile_number"
        return Plan(skip=reason, consent=final, note=note)
    judged = replace(person, phone=contact.phone, mobile_not_us=contact.mobile_not_us,
                     other_mobile=contact.other_mobile).merged_over(contact)
    opt_out = final == Consent.OUT and ea.status != Consent.OUT and mc.status == Consent.OUT
    opt_in = final == Consent.IN and mc.status == Consent.IN and ea.status != Consent.IN
    # The identifier goes with any write to a matched record (an opt-out included) and whenever it syncs.
    link = None if has_identifier else "missing"
    reason = ineligible_reason(judged, required, missing_country_is_us=missing_country_is_us)
    if reason is None and mc.status == Consent.IN and final == Consent.OUT:
        reason = "opted_out_in_everyaction"
    if reason is None and not liberal and final != Consent.IN:
        if ea.status == final and not opt_out:
            return Plan(consent=final, link_id=link, note=note, links=True)  # consent agrees; no data
        reason = "not_opted_in"  # Conservative: data only for records opted in in EveryAction
    if reason is not None:
        return Plan(skip=reason, opt_out=opt_out, consent=final, note=note,
                    link_id=link if opt_out else None, links=opt_out)
    data = {} if payload_unchanged else data_diff(contact, person)
    return Plan(data=data, opt_in=opt_in, opt_out=opt_out, consent=final, link_id=link, note=note, links=True)


def opt_in_waits(plan: Plan, contact: Contact, mc: ConsentFact, ea: ConsentFact) -> bool:
    """A Mobile Commons opt-in skipped only because the record cannot sync yet (no email, not a US record, a
    Required? field empty, or no record with an email to match): it waits and syncs once the record can (the
    seed: "Any new opt-ins ... are synced to EveryAction"; the fields "must ... exist in both databases in order
    to sync data"). Opt-outs never wait (they always travel); an opt-in already in EveryAction has nothing to
    wait for; a profile without a US mobile number never syncs."""
    return (plan.skip is not None and not plan.opt_out and plan.consent == Consent.IN and mc.status == Consent.IN
            and ea.status != Consent.IN and contact.phone is not None)


WAITING_NOTE = "the opt-in waits; it syncs to EveryAction once the record can sync"


def ea_payload(contact: Contact, consent: Consent, van_id: str) -> dict[str, object]:
    """What ea_to_mc wants Mobile Commons to hold: the fingerprinted payload."""
    return {**{k: contact.get(k) for k in ("phone", *DATA_FIELDS)}, "consent": consent.value, "van_id": van_id}


def mc_payload(contact: Contact, consent: Consent, profile_id: str) -> dict[str, object]:
    return {**{k: contact.get(k) for k in ("phone", *DATA_FIELDS)}, "consent": consent.value,
            "profile_id": profile_id}
