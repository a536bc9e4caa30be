"""A reference model of the EveryAction <-> Mobile Commons rules, written from the seed's sentences
(``shared/seeds/000_4ee3bfc17a7f68de.txt``) and the consent invariants of ``architecture.md``.

It is written separately from ``crmsync/daemon/integrations/everyaction_mobilecommons/rules.py`` and imports
nothing from it, so that a misreading in the product's rules is not repeated here. One function per rule; each
quotes the sentence it comes from. The model knows what the daemon cannot: the true time of every consent change
(the stateful test records each person's actions as they happen), so it judges with certainty where the daemon
only has intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

System = Literal["ea", "mc"]
Status = Literal["in", "out"]


@dataclass(frozen=True)
class ConsentEvent:
    """A person opting in or out, in one system, at a true time."""

    system: System
    status: Status
    at: datetime


@dataclass(frozen=True)
class EaRecord:
    """What the model needs of an EveryAction record (plain data read from the simulator)."""

    phone_is_listed_mobile: bool  # the phone is listed, as a Cell/Mobile phone
    phone_is_us: bool
    email: str | None
    country: str | None


# -- "User records must include a listed mobile number and the Country field setting must be US" -------------

def has_listed_us_mobile(record: EaRecord) -> bool:
    return record.phone_is_listed_mobile and record.phone_is_us


def country_is_us(country: str | None) -> bool:
    return (country or "").strip().upper() in {"US", "USA"}


# -- "The following fields are required: Phone number, Email, Opt-in status" ---------------------------------

def has_required_fields(record: EaRecord) -> bool:
    return has_listed_us_mobile(record) and bool(record.email)


# -- "If Liberal sync is enabled, the data is synced in both directions, regardless of the opt-in status";
#    "Conservative sync: the data is updated only for those records with an opt-in status of true in your
#    EveryAction system" -----------------------------------------------------------------------------------

def data_may_move(record: EaRecord, ea_opted_in: bool, liberal: bool) -> bool:
    return has_required_fields(record) and country_is_us(record.country) and (liberal or ea_opted_in)


# -- invariant 4: "When both systems changed, the newer change wins; on a tie, opt-out wins" ------------------

def current(events: list[ConsentEvent]) -> dict[System, ConsentEvent]:
    """Each system's own latest change (in the order they happened: within one system a later change
    replaces an earlier one, whatever the clock says)."""
    last: dict[System, ConsentEvent] = {}
    for event in events:
        last[event.system] = event
    return last


def winner(events: list[ConsentEvent]) -> Status | None:
    """The status both systems should end with: between the two systems' latest changes, the newer one; a
    tie is an opt-out."""
    last = list(current(events).values())
    if not last:
        return None
    if len(last) == 1 or last[0].status == last[1].status:
        return last[0].status
    opt_in, opt_out = sorted(last, key=lambda e: e.status)  # "in" < "out"
    return "in" if opt_in.at > opt_out.at else "out"


# -- invariant 1: "An opt-out in either system is never overwritten by an older opt-in" -----------------------

def opt_in_write_allowed(events: list[ConsentEvent]) -> bool:
    """An opt-in may be written to either system only if a real opt-in exists and it is newer than every
    opt-out (a tie is not newer)."""
    return winner(events) == "in"


# -- invariant 2: "No one is subscribed (and sent a welcome message) who has not opted in; Liberal sync moves
#    profile data, never consent"; the seed: new subscribers come "from the EveryAction data set" through the
#    default web opt-in path ------------------------------------------------------------------------------

def subscribe_allowed(events: list[ConsentEvent], ea_status_is_in: bool) -> bool:
    return ea_status_is_in and opt_in_write_allowed(events)


# -- invariant 3: "A replayed, duplicated or retried event never sends a second welcome message and never
#    creates a duplicate record" ----------------------------------------------------------------------------

def welcomes_allowed(api_welcomes: int) -> bool:
    """The API subscribes a phone to a campaign once ever: at most one welcome caused by crmsync."""
    return api_welcomes <= 1


def records_allowed(everyaction_records_with_phone: int) -> bool:
    return everyaction_records_with_phone <= 1


# -- where an opt-out must have arrived once both flows have run (opt-outs are always safe to move) -----------

def ea_opt_out_reaches_mc(record: EaRecord, mc_profile_exists: bool) -> bool:
    """ea_to_mc: an EveryAction opt-out travels to the profile of the listed mobile number, whatever the
    eligibility of the data, a non-US number included (Mobile Commons keys profiles by phone; an opt-out is
    always safe)."""
    return mc_profile_exists and record.phone_is_listed_mobile


def mc_opt_out_reaches_ea(ea_record_lists_phone: bool) -> bool:
    """mc_to_ea: "For users with a matching record in EveryAction, new opt-outs update their opt-in status to
    false"; "Mobile Commons can match a record based on the mobile phone number"."""
    return ea_record_lists_phone


# -- what the flows must have done once they have run (the seed's promises) -----------------------------------

def ea_opt_in_subscribes(events: list[ConsentEvent], record: EaRecord, liberal: bool) -> bool:
    """A person who only ever opted in in EveryAction, with an eligible record, is subscribed through the
    default web opt-in path ("New subscribers will receive the Welcome message associated with the selected
    opt-in path")."""
    only_ea_in = bool(events) and all(e.system == "ea" and e.status == "in" for e in events)
    return only_ea_in and data_may_move(record, True, liberal)


def mc_opt_in_reaches_matched_record(events: list[ConsentEvent], record: EaRecord | None,
                                     mc_email: str | None) -> bool:
    """A person who only ever opted in in Mobile Commons, with a matching EveryAction record that may sync,
    gets opt-in status true there. Country is the EveryAction record's; the email may come from either."""
    only_mc_in = bool(events) and all(e.system == "mc" and e.status == "in" for e in events)
    if not only_mc_in or record is None:
        return False
    return record.phone_is_us and country_is_us(record.country) and bool(record.email or mc_email)


def mc_opt_in_creates_record(events: list[ConsentEvent], ea_record_exists: bool, mc_email: str | None) -> bool:
    """"For users whose profile records contain an email address, new opt-ins are added to EveryAction as a new
    record with an opt-in status of true"."""
    only_mc_in = bool(events) and all(e.system == "mc" and e.status == "in" for e in events)
    return only_mc_in and not ea_record_exists and bool(mc_email)
