"""A reference model of the Efficy -> APSIS consent and eligibility rules, written from the product document
(seed 004) and the four consent invariants of architecture.md, separately from the product's rules.py: it
imports nothing from crmsync's rules, shares no code with them, and works on its own plain records of what
happened in both systems. One function per rule; each names the sentence it comes from.

The stateful test feeds it the event history (CRM Profile links added and removed on contact cards, field
edits, footer unsubscribes in APSIS, the consent transitions APSIS recorded) and asks two questions:

* after every step, is every opt-in APSIS holds *justified* (invariants 1, 2 and 4)?
* after the system has settled (every flow has run without faults), is each consent what the seed says?
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class LinkEvent:
    """A CRM Profile added to (``present``) or removed from a contact card, at ``at`` (Efficy's clock)."""

    at: datetime
    contact: str
    profile: str
    present: bool
    by_crmsync: bool = False  # the consent backflow removing it (an opt-out flowing back)


@dataclass(frozen=True)
class FieldsEvent:
    """A contact's fields as they were from ``at`` on (creation or edit)."""

    at: datetime
    contact: str
    fields: Mapping[str, object]


@dataclass(frozen=True)
class Unsubscribe:
    """The person clicked the opt-out link in the footer of an email: ``slot`` = (topic, channel)."""

    at: datetime
    contact: str
    slot: tuple[str, str]


@dataclass(frozen=True)
class Sighting:
    """A read of the contact card by a sync that completed: the link was ``present`` or not at ``at``."""

    at: datetime
    contact: str
    profile: str
    present: bool


def same_second(a: datetime, b: datetime) -> bool:
    return a.replace(microsecond=0) == b.replace(microsecond=0)


def later_second(a: datetime, b: datetime) -> bool:
    """``a`` is in a later second than ``b`` (Efficy keeps times to the second; the same second is a tie)."""
    return a.replace(microsecond=0) > b.replace(microsecond=0)


# -- seed: "a Profile in Efficy Enterprise must be set up for each Subscription"; the contact card holds it ---

def link_since(events: Sequence[LinkEvent], contact: str, profile: str, at: datetime) -> datetime | None:
    """When the CRM Profile link present on the card at ``at`` was made; None if the card lacks it then.
    "a CRM User changing the profile for the customer's contact card" is the only CRM-side consent change."""
    since: datetime | None = None
    for e in events:
        if e.contact != contact or e.profile != profile or e.at > at:
            continue
        since = e.at if e.present else None
    return since


def fields_at(events: Sequence[FieldsEvent], contact: str, at: datetime) -> Mapping[str, object]:
    out: Mapping[str, object] = {}
    for e in events:
        if e.contact == contact and e.at <= at:
            out = e.fields
    return out


# -- seed, Sync Conditions: "Marketing Profiles will only be created and updated as long as the customer data
#    from your Efficy Enterprise matches this value." (all conditions must hold) ---------------------------

def passes_conditions(fields: Mapping[str, object], conditions: Mapping[str, object]) -> bool:
    return all(fields.get(name) == value for name, value in conditions.items())


# -- research 9.4 / issue 7 item 8: an SMS consent needs a valid mobile ------------------------------------

def has_address(fields: Mapping[str, object], channel: str, valid_mobiles: Iterable[tuple[object, object]]) -> bool:
    """Email consent needs the email; SMS consent a mobile that is, or can be made, international (the
    test's generator knows which of its (mobile, country) pairs are valid: ``valid_mobiles``)."""
    if channel.endswith("sms"):
        return (fields.get("MOBILE"), fields.get("COUNTRY")) in set(valid_mobiles)
    return bool(fields.get("EMAIL1"))


# -- invariants 1 and 4: an opt-out is never overwritten by an older opt-in; newer wins, a tie to opt-out ---

def optin_may_override(link_made: datetime, optout_at: datetime) -> bool:
    return later_second(link_made, optout_at)


# -- invariant 2: no one is subscribed who has not opted in (here: holds the CRM Profile, passes the
#    conditions, has the channel's address) ----------------------------------------------------------------

def optin_write_violation(*, at: datetime, contact: str, profile: str, slot: tuple[str, str],
                          links: Sequence[LinkEvent], fields: Sequence[FieldsEvent],
                          unsubscribes: Sequence[Unsubscribe], conditions: Mapping[str, object],
                          valid_mobiles: Iterable[tuple[object, object]]) -> str | None:
    """Why an opt-in APSIS recorded at ``at`` breaks an invariant, or None if it is justified."""
    made = link_since(links, contact, profile, at)
    if made is None:
        return "opt-in written while the contact card does not hold the CRM Profile (invariant 2)"
    now = fields_at(fields, contact, at)
    if not passes_conditions(now, conditions):
        return "opt-in written for a contact that fails the sync conditions"
    if not has_address(now, slot[1], valid_mobiles):
        return f"opt-in written on {slot[1]} without a valid address for it"
    for u in unsubscribes:
        if u.contact == contact and u.slot == slot and u.at <= at and not optin_may_override(made, u.at):
            what = "in the same second as" if same_second(made, u.at) else "older than"
            return f"opt-in from a link made {made} {what} the unsubscribe of {u.at} (invariants 1, 4)"
    return None


# -- issue 7 item 7: a link is newer than an opt-out only if that is certain -------------------------------

def provably_newer(made: datetime, optout_at: datetime, sightings: Sequence[Sighting], contact: str,
                   profile: str, *, link_time_exposed: bool) -> bool:
    """Certain when the link's own time is exposed and in a later second, or when a completed sync saw the
    card *without* the link after the opt-out (and before the link was made). First seeing a link says
    nothing about when it was made."""
    if not later_second(made, optout_at):
        return False
    if link_time_exposed:
        return True
    return any(s.contact == contact and s.profile == profile and not s.present
               and later_second(s.at, optout_at) and s.at <= made for s in sightings)


# -- seed, consent mapping + opt-outs flowing back: the settled state ------------------------------------

def settled_consent_violation(*, now: datetime, contact: str, profile: str, slot: tuple[str, str],
                              apsis_value: str | None, links: Sequence[LinkEvent],
                              fields: Sequence[FieldsEvent], unsubscribes: Sequence[Unsubscribe],
                              valid_mobiles: Iterable[tuple[object, object]]) -> str | None:
    """After every flow has run (full sync, consent backflow, real-time, full sync) without faults, for a
    contact that passes the conditions:

    * the card lacks the CRM Profile -> opt-out (the seed maps holding a CRM Profile to the subscription);
    * an unsubscribe on the slot: the card may still hold the CRM Profile only if its link is newer
      (otherwise the opt-out flowed back and removed it, "opt-outs flowing back");
    * the card holds it -> opt-in (when the channel has an address).
    """
    made = link_since(links, contact, profile, now)
    if made is None:
        return None if apsis_value == "opt-out" else f"card lacks the CRM Profile but APSIS has {apsis_value}"
    slot_unsubscribes = [u.at for u in unsubscribes if u.contact == contact and u.slot == slot and u.at <= now]
    if slot_unsubscribes and not optin_may_override(made, max(slot_unsubscribes)):
        return "the footer opt-out did not flow back: the card still holds an older CRM Profile link"
    if not has_address(fields_at(fields, contact, now), slot[1], valid_mobiles):
        return None  # nothing is written on a channel without an address; earlier states may remain
    return None if apsis_value == "opt-in" else f"card holds the CRM Profile but APSIS has {apsis_value}"


def newer_link_removed_violation(*, contact: str, profile: str, slots: Sequence[tuple[str, str]],
                                 links: Sequence[LinkEvent], unsubscribes: Sequence[Unsubscribe],
                                 sightings: Sequence[Sighting], link_time_exposed: bool) -> str | None:
    """Invariant 4 on the Efficy side: the backflow never removes a link that is provably newer than every
    opt-out given on the profile's subscriptions before the removal."""
    mine = [e for e in links if e.contact == contact and e.profile == profile]
    for i, added in enumerate(mine):
        if not added.present or added.by_crmsync:
            continue
        removal = next((e for e in mine[i + 1:] if not e.present), None)
        if removal is None or not removal.by_crmsync:
            continue
        before = [u for u in unsubscribes if u.contact == contact and u.slot in slots and u.at <= removal.at]
        if not before:
            return "the backflow removed a CRM Profile link although no one opted out in APSIS"
        if all(provably_newer(added.at, u.at, sightings, contact, profile,
                                         link_time_exposed=link_time_exposed) for u in before):
            return (f"the backflow removed a CRM Profile link made {added.at}, provably newer than every "
                    f"opt-out before it")
    return None


def never_synced_has_no_profile(fields_at_syncs: Sequence[Mapping[str, object]],
                                conditions: Mapping[str, object], has_profile: bool) -> str | None:
    """A contact that failed the conditions at every completed sync (``fields_at_syncs``: its fields as
    each sync read them) has no marketing profile."""
    if not has_profile:
        return None
    if any(passes_conditions(fields, conditions) for fields in fields_at_syncs):
        return None
    return "a contact that never passed the sync conditions has an APSIS profile"
