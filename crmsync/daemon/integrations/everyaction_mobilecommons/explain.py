"""``explain`` for ``everyaction_mobilecommons``: one person, rule by rule, in both flows.

The record is found by VAN ID, Mobile Commons profile id (through the stored link), mobile number or email
address. For the EveryAction record, ``ea_to_mc`` is explained (eligibility, Liberal/Conservative, Required?
fields, consent resolution, the mobile number's owner, field mapping, the plan); for the Mobile Commons
profile, ``mc_to_ea``. Each section's verdict is the flow's own ``sync_one`` run once against recording
clients (see :mod:`crmsync.daemon.explain`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

import trio

from crmsync.connectors.errors import NotFoundError
from crmsync.connectors.everyaction import VanPerson
from crmsync.connectors.everyaction.records import normalize_us_phone
from crmsync.connectors.mobilecommons import Profile
from crmsync.daemon.explain import ExplainContext, ExplainRun, RecordNotFound, rule
from crmsync.daemon.integrations.everyaction_mobilecommons import ea_to_mc, mc_to_ea, rules, store
from crmsync.daemon.integrations.everyaction_mobilecommons.config import EveryActionMobileCommonsConfig
from crmsync.daemon.integrations.everyaction_mobilecommons.pipeline import PhoneTurns, ProfileReads, RecordRun
from crmsync.state import queries as q


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def fact_dict(fact: rules.ConsentFact) -> dict[str, Any]:
    return {"status": fact.status.value, "set_after": _iso(fact.after), "set_by": _iso(fact.by)}


def deciding_rule(ea: rules.ConsentFact, mc: rules.ConsentFact) -> str:
    """Which branch of :func:`rules.resolve_consent` decided (the same order)."""
    if ea.status == mc.status:
        return "both sides agree"
    if rules.Consent.UNKNOWN in (ea.status, mc.status):
        return "a known status beats an unknown one"
    opt_in = ea if ea.status == rules.Consent.IN else mc
    opt_out = mc if opt_in is ea else ea
    if opt_in.after is not None and opt_out.by is not None and opt_in.after > opt_out.by:
        return "the opt-in was certainly set after the opt-out: the newer change wins"
    return "an opt-out is never overwritten by an older or possibly older opt-in (a tie or doubt: opt-out)"


def _yes(ok: bool) -> str:
    return "pass" if ok else "fail"


# -- finding the record ------------------------------------------------------------------------------------

async def _person(kind: Any, van_id: str | None) -> VanPerson | None:
    if not van_id or not van_id.isdigit():
        return None
    try:
        person: VanPerson = await kind.ea.get_person(van_id)
        return person
    except NotFoundError:
        return None


async def find(kind: Any, record: str, ctx: ExplainContext) -> tuple[VanPerson | None, Profile | None, str]:
    """By ``van:ID`` or ``mc:PROFILE_ID`` (unambiguous), an email address, a US mobile number, or a bare number:
    a VAN ID first, else a Mobile Commons profile id known from a stored link."""
    name = ctx.integration
    person: VanPerson | None = None
    profile: Profile | None = None
    how = ""
    prefix, _, rest = record.partition(":")
    if prefix.casefold() in ("van", "mc") and rest.strip().isdigit():
        if prefix.casefold() == "van":
            person, how = await _person(kind, rest.strip()), "VAN ID"
        else:
            linked = await ctx.db.tx(q.link_for_messaging, name, rest.strip())
            person, how = await _person(kind, linked), "Mobile Commons profile id (stored link)"
    elif "@" in record:
        async with aclosing(kind.ea.search_people(email=record)) as found:
            async for candidate in found:
                if any((e.email or "").casefold() == record.casefold() for e in candidate.emails or ()):
                    person, how = candidate, "EveryAction email"
                    break
    elif record.isdigit() and len(record) < 10:
        person, how = await _person(kind, record), "VAN ID"
        if person is None:
            linked = await ctx.db.tx(q.link_for_messaging, name, record)
            person, how = await _person(kind, linked), "Mobile Commons profile id (stored link)"
    else:
        phone = normalize_us_phone(record) if sum(ch.isdigit() for ch in record) >= 10 else None
        if phone is not None:
            profile = await kind.mc.find_profile(phone)
            how = "mobile number"
            async with aclosing(kind.ea.search_people(phoneNumber=phone[-10:])) as found:
                async for candidate in found:
                    if rules.contact_from_van(candidate).phone == phone:
                        person = candidate
                        break
    if person is not None and profile is None:
        contact = rules.contact_from_van(person)
        if contact.phone is not None:
            profile = await kind.mc.find_profile(contact.phone)
    if profile is not None and person is None:
        cfg: EveryActionMobileCommonsConfig = kind.cfg
        link = await ctx.db.tx(q.link_for_messaging, name, profile.id)
        person = await mc_to_ea._match(cfg, kind.ea, profile, rules.contact_from_profile(profile), link)
    if person is None and profile is None:
        raise RecordNotFound(f"no EveryAction record or Mobile Commons profile matches {record!r} (a VAN ID, a "
                             "linked Mobile Commons profile id, van:ID or mc:ID, a US mobile number or an email "
                             "address)")
    return person, profile, how


# -- the two flows -------------------------------------------------------------------------------------------

def _eligibility(contact: rules.Contact, cfg: EveryActionMobileCommonsConfig) -> list[dict[str, Any]]:
    assume = cfg.missing_country == "assume_us"
    country_ok = rules.is_us(contact.country) or (assume and contact.country is None)
    out = [
        rule("listed mobile number (seed: must include a listed mobile number)",
             {"mobile": contact.phone, "any phone listed": contact.has_phone}, _yes(contact.phone is not None),
             None if contact.phone else "no_mobile_number"),
        rule("Country is US", {"country": contact.country, "missing_country": cfg.missing_country},
             _yes(country_ok), None if country_ok else "country_not_us"),
    ]
    required = sorted(cfg.required_fields() - set(rules.NEVER_REQUIRED))
    for f in required:
        ok = contact.get(f) is not None
        out.append(rule(f"Required? {f}", {f: contact.get(f)}, _yes(ok), None if ok else f"required_field_empty:{f}"))
    if not required:
        out.append(rule("Required? fields", {"required": []}, "pass", "no field is marked Required?"))
    return out


def _sync_type(cfg: EveryActionMobileCommonsConfig, ea_status: rules.Consent) -> dict[str, Any]:
    if cfg.liberal_sync:
        return rule("sync type: Liberal", {"liberal_sync": True, "EveryAction opt-in": ea_status.value}, "pass",
                    "data moves in both directions whatever the opt-in status; consent moves as resolved")
    ok = ea_status == rules.Consent.IN
    return rule("sync type: Conservative", {"liberal_sync": False, "EveryAction opt-in": ea_status.value},
                _yes(ok), None if ok else "not_opted_in (only records opted in in EveryAction)")


def _mapping(source: rules.Contact, dest: rules.Contact | None, unchanged: bool, to: str) -> dict[str, Any]:
    diff = {} if unchanged else rules.data_diff(source, dest)
    looked = {f: {"from": source.get(f), to: dest.get(f) if dest else None, "write": f in diff}
              for f in rules.DATA_FIELDS}
    note = ("payload unchanged since the last sync (fingerprint): nothing to write" if unchanged else
            f"{len(diff)} field(s) to write: {', '.join(diff) or 'none'}")
    return rule("field mapping (standard fields; custom fields never sync)", looked, "info", note)


async def explain_ea_to_mc(kind: Any, person: VanPerson, profile: Profile | None, ctx: ExplainContext
                           ) -> dict[str, Any]:
    cfg: EveryActionMobileCommonsConfig = kind.cfg
    van_id = str(person.van_id)
    now = ctx.clock.now()
    contact = rules.contact_from_van(person)
    ea_status = rules.van_consent(person, contact.phone)
    known = await ctx.db.tx(store.read_for_van, ctx.integration, van_id, contact.consent_phone)
    obs = rules.observe_ea(known.observation, ea_status, now)
    mc = rules.mc_consent(profile)
    steps = [*_eligibility(contact, cfg), _sync_type(cfg, ea_status)]
    final = rules.resolve_consent(obs.fact(), mc)
    steps.append(rule("consent resolution", {"EveryAction": fact_dict(obs.fact()), "Mobile Commons": fact_dict(mc)},
                      final.value, deciding_rule(obs.fact(), mc)))
    if profile is not None and contact.phone is not None:
        link = await ctx.db.tx(q.link_for_messaging, ctx.integration, profile.id)
        owner = await ea_to_mc.profile_owner(kind.ea, link, profile, van_id, contact.phone)
        steps.append(rule("the mobile number's profile belongs to this record",
                          {"profile": profile.id, "Constituent ID": profile.constituent_id, "other owner": owner},
                          _yes(owner is None), ea_to_mc.SHARED_PHONE if owner else None))
    fp = rules.fingerprint(rules.ea_payload(contact, ea_status, van_id))
    unchanged = known.fingerprint == fp and profile is not None
    mapping = _mapping(contact, rules.contact_from_profile(profile) if profile else None, unchanged, "mobilecommons")
    steps.append(mapping)
    plan = rules.plan_ea_to_mc(
        contact=contact, ea=obs.fact(), profile=rules.contact_from_profile(profile) if profile else None, mc=mc,
        van_id=van_id, profile_constituent_id=profile.constituent_id if profile else None,
        liberal=cfg.liberal_sync, required=cfg.required_fields(), opt_in_path=cfg.default_opt_in_path_id,
        payload_unchanged=unchanged, missing_country_is_us=cfg.missing_country == "assume_us")
    if plan.skip is not None:
        mapping["note"] = f"nothing is written: the record is skipped ({plan.skip})"
    steps.append(rule("plan", {"skip": plan.skip, "data": plan.data, "Constituent ID": plan.link_id,
                               "subscribe (welcome message)": plan.subscribe, "opt out": plan.opt_out},
                      "skip" if plan.skip and not plan.opt_out else "write" if plan.writes else "nothing to write",
                      plan.note))
    async def sync(run: ExplainRun) -> None:  # the flow's own per-record code, as one pipeline worker runs it
        reads = ProfileReads(kind.mc)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reads.run, nursery)
            await _one_record(run, lambda record: ea_to_mc.sync_one(cfg, kind.ea, kind.mc, record, van_id, 0,
                                                                    PhoneTurns(), reads))
            nursery.cancel_scope.cancel()

    verdict = await ctx.verdict(ea_to_mc.FLOW, sync)
    return {"flow": ea_to_mc.FLOW, "from": {"system": "everyaction", "id": van_id},
            "to": {"system": "mobilecommons", "id": profile.id if profile else None}, "rules": steps,
            "verdict": verdict}


async def explain_mc_to_ea(kind: Any, profile: Profile, person: VanPerson | None, ctx: ExplainContext
                           ) -> dict[str, Any]:
    cfg: EveryActionMobileCommonsConfig = kind.cfg
    contact = rules.contact_from_profile(profile)
    mc = rules.mc_consent(profile)
    link = await ctx.db.tx(q.link_for_messaging, ctx.integration, profile.id)
    steps = [rule("matching EveryAction record (stored link, Constituent ID, then people/find)",
                  {"stored link": link, "Constituent ID": profile.constituent_id,
                   "matched VAN ID": person.van_id if person else None}, "found" if person else "none")]
    ea = rules.ConsentFact(rules.Consent.UNKNOWN)
    phone = contact.consent_phone
    if person is not None and phone is not None:
        previous = await ctx.db.tx(store.read_observation, ctx.integration, phone)
        ea = rules.observe_ea(previous, rules.van_consent(person, phone), ctx.clock.now()).fact()
    steps += _eligibility(contact, cfg)
    steps.append(_sync_type(cfg, ea.status))
    final = rules.resolve_consent(ea, mc)
    steps.append(rule("consent resolution", {"Mobile Commons": fact_dict(mc), "EveryAction": fact_dict(ea)},
                      final.value, deciding_rule(ea, mc)))
    if person is None:
        steps.append(rule("a new EveryAction record needs an email (new opt-ins only)", {"email": contact.email},
                          _yes(contact.email is not None)))
    steps.append(_mapping(contact, rules.contact_from_van(person) if person else None, False, "everyaction"))
    waiting = await ctx.db.tx(store.read_waiting, ctx.integration, profile.id)
    if waiting is not None:
        steps.append(rule("opt-in waiting for the EveryAction record", waiting, "waiting",
                          "re-examined by mc_to_ea after ea_to_mc sees the record change"))
    verdict = await ctx.verdict(mc_to_ea.FLOW, lambda run: _one_record(
        run, lambda record: mc_to_ea.sync_one(cfg, kind.ea, kind.mc, record, profile)))
    return {"flow": mc_to_ea.FLOW, "from": {"system": "mobilecommons", "id": profile.id},
            "to": {"system": "everyaction", "id": str(person.van_id) if person else None}, "rules": steps,
            "verdict": verdict}


async def _one_record(run: ExplainRun, sync: Callable[[RecordRun], Awaitable[Any]]) -> None:
    """One record as a pipeline worker handles it; its report rows go to explain's run (its writes, none
    of which reach the store, are dropped)."""
    record = RecordRun(run)
    await sync(record)
    record.report_to(run)


async def explain_record(kind: Any, record: str, ctx: ExplainContext) -> dict[str, Any]:
    person, profile, how = await find(kind, record, ctx)
    sections = []
    if person is not None:
        sections.append(await explain_ea_to_mc(kind, person, profile, ctx))
    if profile is not None:
        sections.append(await explain_mc_to_ea(kind, profile, person, ctx))
    return {"found_by": how, "crm_id": str(person.van_id) if person else None,
            "messaging_id": profile.id if profile else None, "sections": sections}


async def resolve_ids(kind: Any, record: str, ctx: ExplainContext) -> tuple[str | None, str | None]:
    """The person's (VAN ID, Mobile Commons profile id) (for ``consent-history NAME PHONE|EMAIL``)."""
    person, profile, _ = await find(kind, record, ctx)
    return (str(person.van_id) if person else None), (profile.id if profile else None)
