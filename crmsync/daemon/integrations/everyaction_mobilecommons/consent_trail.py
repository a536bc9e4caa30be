"""What ``everyaction_mobilecommons`` adds to the consent history (:mod:`crmsync.state.consent_history`).

The flows call these at one place each and append the returned transaction function to the writes they
flush, so an entry commits together with the write or observation it describes (never without it):

* an EveryAction opt-in status that changed since crmsync last saw it (``everyaction_edit``; VAN does not say
  when, so the entry holds the interval: after the last sighting, at or before this one);
* a Mobile Commons status that differs from the last one in the history (keyword, web opt-in path, STOP...);
* what crmsync wrote: a Mobile Commons subscription or opt-out from an EveryAction change, an EveryAction
  opt-in status from a Mobile Commons change.
"""

from __future__ import annotations

import sqlite3

from crmsync.connectors.mobilecommons import Profile
from crmsync.daemon.integrations.everyaction_mobilecommons.pipeline import RecordRun
from crmsync.daemon.integrations.everyaction_mobilecommons.rules import Consent, ConsentFact, EaObservation, Plan
from crmsync.daemon.runs import RunContext
from crmsync.state import consent_history as ch

SUBJECT = "sms"
EVERYACTION, MOBILECOMMONS = "everyaction", "mobilecommons"
STATUS = {Consent.IN: "opt-in", Consent.OUT: "opt-out"}


def _iso(value: object) -> str | None:
    return value.isoformat() if value is not None and hasattr(value, "isoformat") else None


def mc_source(profile: Profile | None, status: Consent) -> tuple[str, str | None]:
    """(source code, detail) of a Mobile Commons status, from what the profile says about it."""
    if profile is None:
        return "mobilecommons", None
    if status == Consent.OUT:
        said = profile.opted_out_source or next((s.opt_out_source for s in profile.subscriptions
                                                  if s.opt_out_source), None)
        if said and "stop" in said.casefold():
            return "mobilecommons_stop", said
        return "mobilecommons", said
    kind = ((profile.source.type if profile.source else None) or "").casefold()
    name = profile.source.name if profile.source else None
    via = next((s.opt_in_source for s in profile.subscriptions if s.active and s.opt_in_source), None)
    if kind == "keyword":
        return "mobilecommons_keyword", f"keyword {name or via or ''}".strip()
    if kind in ("optinpath", "opt_in_path", "web", "webform", "mdata"):
        return "mobilecommons_web", name or via
    if via:  # the profile came from elsewhere (e.g. the API); the subscription says how it was opted in
        return "mobilecommons", f"opt-in source {via}"
    if kind == "api":
        return "mobilecommons_api", name
    return "mobilecommons", name


def observed_ea(run: RunContext | RecordRun, van_id: str, messaging_id: str | None, previous: EaObservation | None,
                now: EaObservation) -> list[ch.ConsentChange]:
    if now.status == Consent.UNKNOWN or (previous is not None and previous.status == now.status):
        return []
    seen = run.now_iso()
    if previous is None:
        return [ch.ConsentChange(EVERYACTION, SUBJECT, STATUS[now.status], "everyaction_edit", False, seen,
                                 crm_id=van_id, messaging_id=messaging_id, run_id=run.run_id,
                                 detail="first seen by crmsync; set at some earlier, unknown time")]
    return [ch.ConsentChange(EVERYACTION, SUBJECT, STATUS[now.status], "everyaction_edit", False, seen,
                             crm_id=van_id, messaging_id=messaging_id, old_status=STATUS.get(previous.status),
                             changed_after=_iso(now.after), changed_at=_iso(now.by), run_id=run.run_id,
                             detail="set between the two times shown (VAN does not say when)")]


def _observed_mc(c: sqlite3.Connection, integration: str, run: RunContext | RecordRun, van_id: str | None,
                 profile: Profile | None, fact: ConsentFact, seen: str) -> list[ch.ConsentChange]:
    if profile is None or fact.status == Consent.UNKNOWN:
        return []
    last = ch.last_status(c, integration, MOBILECOMMONS, SUBJECT, messaging_id=profile.id)
    if last == STATUS[fact.status]:
        return []
    source, detail = mc_source(profile, fact.status)
    return [ch.ConsentChange(MOBILECOMMONS, SUBJECT, STATUS[fact.status], source, False, seen, crm_id=van_id,
                             messaging_id=profile.id, old_status=last, changed_at=_iso(fact.by),
                             run_id=run.run_id, detail=detail)]


def after_ea_to_mc(run: RunContext | RecordRun, van_id: str, messaging_id: str | None, profile: Profile | None,
                   mc: ConsentFact, previous: EaObservation | None, observed: EaObservation, plan: Plan) -> ch.TxFn:
    """ea_to_mc, once per record after its writes: observed changes on both sides, then what crmsync wrote."""
    integration, seen = run.integration, run.now_iso()
    changes = observed_ea(run, van_id, messaging_id, previous, observed)
    ea_time = _iso(observed.by)

    def tx(c: sqlite3.Connection) -> None:
        found = changes + _observed_mc(c, integration, run, van_id, profile, mc, seen)
        old = STATUS.get(mc.status)
        if plan.skip is None and plan.subscribe:
            found.append(ch.ConsentChange(MOBILECOMMONS, SUBJECT, "opt-in", "everyaction_edit", True, seen,
                                          crm_id=van_id, messaging_id=messaging_id, old_status=old,
                                          changed_at=seen, run_id=run.run_id,
                                          detail=f"subscribed through the default web opt-in path (EveryAction "
                                                 f"opt-in seen {ea_time})"))
        if plan.opt_out:
            found.append(ch.ConsentChange(MOBILECOMMONS, SUBJECT, "opt-out", "everyaction_edit", True, seen,
                                          crm_id=van_id, messaging_id=messaging_id, old_status=old,
                                          changed_at=seen, run_id=run.run_id,
                                          detail=f"EveryAction opt-out (seen {ea_time}) applied"))
        ch.add(c, integration, found)

    return tx


def observed_in_mc_to_ea(run: RunContext | RecordRun, van_id: str | None, profile: Profile, mc: ConsentFact,
                         previous: EaObservation | None, observed: EaObservation | None) -> ch.TxFn:
    """mc_to_ea, once per profile when it is read: observed changes on both sides."""
    integration, seen = run.integration, run.now_iso()
    changes = (observed_ea(run, van_id, profile.id, previous, observed)
               if van_id is not None and observed is not None else [])

    def tx(c: sqlite3.Connection) -> None:
        ch.add(c, integration, changes + _observed_mc(c, integration, run, van_id, profile, mc, seen))

    return tx


def written_by_mc_to_ea(run: RunContext | RecordRun, van_id: str, profile: Profile, mc: ConsentFact,
                        before: EaObservation | None, wrote: Consent | None) -> ch.TxFn:
    """mc_to_ea, after its writes: the EveryAction opt-in status crmsync set (if it set one)."""
    integration, seen = run.integration, run.now_iso()
    if wrote is None or wrote == Consent.UNKNOWN:
        return lambda c: None
    source, detail = mc_source(profile, mc.status)
    change = ch.ConsentChange(EVERYACTION, SUBJECT, STATUS[wrote], source, True, seen, crm_id=van_id,
                              messaging_id=profile.id, old_status=STATUS.get(before.status) if before else None,
                              changed_at=seen, run_id=run.run_id,
                              detail=f"from Mobile Commons ({detail or 'status'} at {_iso(mc.by)})")
    return lambda c: ch.add(c, integration, [change])
