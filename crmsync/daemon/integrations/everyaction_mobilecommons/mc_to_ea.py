"""Flow ``mc_to_ea`` (every five minutes during the day): Mobile Commons opt-ins and opt-outs -> EveryAction.

Reads profiles whose ``updated_at`` moved since the cursor (minus a small overlap: the API's bounds have
one-second resolution and clocks differ a little; re-reading is harmless because writes are diffed and
fingerprinted). For each profile: find the EveryAction record by the stored link, else the profile's
Constituent ID, else ``people/find`` (email, or names + phone); a new opt-in with an email and no match
becomes a new record through ``findOrCreate`` with opt-in status true; an opt-out sets the matching record's
opt-in status to false. The Mobile Commons id goes to EveryAction as an identifier and the VAN ID to the
profile's Constituent ID, so later runs match by link, never by email.

An opt-in skipped because the record cannot sync yet (no email, ...: ``rules.opt_in_waits``) waits in the store;
after the changed profiles, each run re-reads the waiting opt-ins whose EveryAction record ea_to_mc saw change
(store.py), so the opt-in reaches EveryAction once the record can sync, although the profile did not change.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any, cast

import structlog

from crmsync.connectors.errors import NotFoundError
from crmsync.connectors.everyaction import EveryActionClient, OptInStatus, VanPerson, match_candidate
from crmsync.connectors.everyaction.records import identifier_update, phone_opt_in_update
from crmsync.connectors.mobilecommons import MobileCommonsClient, Profile, ProfileUpdate
from crmsync.daemon.integrations.everyaction_mobilecommons import consent_trail, rules, store
from crmsync.daemon.integrations.everyaction_mobilecommons.config import EveryActionMobileCommonsConfig
from crmsync.daemon.integrations.everyaction_mobilecommons.pipeline import Pipeline, RecordRun
from crmsync.daemon.runs import RunContext
from crmsync.state import queries as q

log = structlog.get_logger("crmsync.integrations.everyaction_mobilecommons.mc_to_ea")

FLOW = "mc_to_ea"
BATCH = 100  # records acknowledged per store transaction
DUE_PER_READ = 100  # phones per profiles read of the due waiting opt-ins
VAN_NAMES = {"first_name": "firstName", "last_name": "lastName"}
ADDRESS = {"street_address": "addressLine1", "street_address_2": "addressLine2", "city": "city",
           "state": "stateOrProvince", "zip_code": "zipOrPostalCode", "country": "countryCode"}


def van_body(contact: rules.Contact, plan: rules.Plan) -> dict[str, Any]:
    """``POST people/{vanId}`` body for the data fields of the plan (collections add or update by value)."""
    body: dict[str, Any] = {VAN_NAMES[k]: v for k, v in plan.data.items() if k in VAN_NAMES}
    if "email" in plan.data:
        body["emails"] = [{"email": plan.data["email"], "isPreferred": True}]
    if any(k in ADDRESS for k in plan.data):
        address = {api: contact.get(k) for k, api in ADDRESS.items() if contact.get(k)}
        body["addresses"] = [{**address, "isPreferred": True}]
    return body


async def run_mc_to_ea(config: EveryActionMobileCommonsConfig, ea: EveryActionClient,
                       mc: MobileCommonsClient, run: RunContext) -> None:
    name = run.integration
    now = run.clock.now().replace(microsecond=0)  # the API's bounds have second resolution
    raw_cursor = await run.db.tx(q.get_cursor, name, FLOW)
    start = (datetime.fromisoformat(raw_cursor) - config.mc_overlap if raw_cursor
             else now - config.mc_initial_lookback)

    # the waiting opt-ins whose EveryAction record changed since they were last examined (store.py)
    due = await run.db.tx(store.due_waiting, name)
    unseen = {pid for pid, _ in due}

    async def handle(seq: int, profile: Profile, record: RecordRun) -> list[store.TxFn]:
        unseen.discard(profile.id)
        return await sync_one(config, ea, mc, record, profile)

    def final() -> list[store.TxFn]:
        # a due opt-in whose profile is gone (no profile for its phone any more) has nothing left to sync
        gone = [store.drop_waiting(name, pid) for pid in sorted(unseen)]
        return [*gone, store.set_cursor(name, FLOW, now.isoformat(), run.now_iso())]

    pipeline = Pipeline[Profile](
        run=run, handle=handle, ids=lambda profile: {"messaging_id": profile.id}, key=lambda profile: profile.id,
        workers=config.workers, group=BATCH)
    profiles = _changed_then_due(mc, start, now, [phone for _, phone in due])
    async with contextlib.aclosing(profiles):
        await pipeline.run_all(profiles, final)


async def _changed_then_due(mc: MobileCommonsClient, start: datetime, now: datetime, due_phones: list[str]
                            ) -> AsyncGenerator[Profile, None]:
    """The profiles changed in the window, then those of the due waiting opt-ins (read by phone, many per call:
    research B3); the pipeline drops a profile already seen among the changed ones."""
    changed = cast("AsyncGenerator[Profile, None]", mc.profiles(updated_from=start, updated_to=now))
    async with contextlib.aclosing(changed):
        async for profile in changed:
            yield profile
    for i in range(0, len(due_phones), DUE_PER_READ):
        batch = cast("AsyncGenerator[Profile, None]", mc.profiles(phone_numbers=due_phones[i:i + DUE_PER_READ]))
        async with contextlib.aclosing(batch):
            async for profile in batch:
                yield profile


async def _match(config: EveryActionMobileCommonsConfig, ea: EveryActionClient, profile: Profile,
                 contact: rules.Contact, link: str | None) -> VanPerson | None:
    """By link, else by the profile's Constituent ID, else by the mobile number (the seed: "Mobile Commons
    can match a record based on the mobile phone number"), else ``people/find`` (email, or names + phone)."""
    for ref in (link, profile.constituent_id):
        if ref and ref.isdigit():
            try:
                return await ea.get_person(ref)
            except NotFoundError:
                continue
    phone = contact.consent_phone
    if phone is not None:
        people = cast("AsyncGenerator[VanPerson, None]", ea.search_people(phoneNumber=phone[2:]))
        async with contextlib.aclosing(people):
            async for person in people:
                if any(rules.nanp_e164(p.number) == phone for p in person.phones or ()):
                    return person  # the lowest VAN ID listing this number (VAN keeps opt-in per phone)
    try:
        candidate = match_candidate(first_name=contact.first_name, last_name=contact.last_name,
                                    email=contact.email, phone=contact.phone)  # VAN matches US numbers only
    except ValueError:
        return None
    if not candidate.can_match:
        return None
    found = await ea.find_person(candidate)
    return await ea.get_person(found) if found is not None else None


async def sync_one(config: EveryActionMobileCommonsConfig, ea: EveryActionClient, mc: MobileCommonsClient,
                   run: RecordRun, profile: Profile) -> list[store.TxFn]:
    name, now, stamp = run.integration, run.clock.now(), run.now_iso()
    pid = profile.id
    contact = rules.contact_from_profile(profile)
    phone = contact.consent_phone
    # one store read for the record (batched with other records' reads: one thread hop per group)
    known = await run.read(lambda c: store.read_for_profile(c, name, pid, phone))
    mc_fact = rules.mc_consent(profile)
    person = await _match(config, ea, profile, contact, known.link)
    writes: list[store.TxFn] = []
    obs = previous = None
    if person is not None and phone is not None:
        previous = known.observation
        obs = rules.observe_ea(previous, rules.van_consent(person, phone), now)
        writes.append(store.put_observation(name, phone, obs))
    writes.append(consent_trail.observed_in_mc_to_ea(run, str(person.van_id) if person else None, profile, mc_fact,
                                                     previous, obs))  # the consent history
    payload_fp = rules.fingerprint(rules.mc_payload(contact, mc_fact.status, pid))
    id_type = config.everyaction.identifier_type
    ea_fact = obs.fact() if obs else rules.ConsentFact(rules.Consent.UNKNOWN)
    plan = rules.plan_mc_to_ea(
        contact=contact, mc=mc_fact, person=rules.contact_from_van(person) if person else None,
        ea=ea_fact, liberal=config.liberal_sync,
        required=config.required_fields(), payload_unchanged=known.fingerprint == payload_fp,
        has_identifier=person is not None and person.identifier(id_type) == pid,
        missing_country_is_us=config.missing_country == "assume_us",
    )
    if plan.skip is not None and not plan.opt_out:
        message = plan.note
        if rules.opt_in_waits(plan, contact, mc_fact, ea_fact):
            assert contact.phone is not None
            writes.append(store.put_waiting(name, pid, contact.phone, str(person.van_id) if person else None,
                                            plan.skip, known.waiting_marked or 0, stamp))
            message = _join(rules.WAITING_NOTE, plan.note)
        elif known.waiting_marked is not None:
            writes.append(store.drop_waiting(name, pid))  # no longer an opt-in that may sync
        run.skip(plan.skip, crm_id=str(person.van_id) if person else None, messaging_id=pid, message=message)
        return writes
    if known.waiting_marked is not None:
        writes.append(store.drop_waiting(name, pid))  # it syncs now
    # an opt-in, an opt-out or data to a match all come with a North-American mobile (a US one for anything but
    # an opt-out)
    assert phone is not None
    created = wrote = False
    if person is None:
        # A new opt-in with an email: findOrCreate (matches by email first, so a retry finds what an
        # interrupted run created instead of creating it twice).
        result = await ea.find_or_create(match_candidate(
            first_name=contact.first_name, last_name=contact.last_name, email=contact.email,
            phone=contact.phone, phone_opt_in=OptInStatus.OPT_IN, identifiers={id_type: pid},
            address_line1=contact.street_address, city=contact.city, state=contact.state,
            zip=contact.zip_code, country_code=contact.country or "US"))
        van_id, created, wrote = str(result.van_id), result.created, True
        writes.append(store.put_observation(name, phone, rules.written_ea(rules.Consent.IN, now)))
        if not result.created:  # matched after all: make sure the opt-in is on the listed number
            await ea.set_phone_opt_in(van_id, phone, OptInStatus.OPT_IN)
    else:
        van_id = str(person.van_id)
        body: dict[str, Any] = {} if plan.skip else van_body(contact, plan)
        if plan.opt_in or plan.opt_out:
            status = OptInStatus.OPT_IN if plan.opt_in else OptInStatus.OPT_OUT
            body.update(phone_opt_in_update(phone, status))
            writes.append(store.put_observation(
                name, phone, rules.written_ea(rules.Consent.IN if plan.opt_in else rules.Consent.OUT, now)))
        if plan.link_id:
            body.update(identifier_update(id_type, pid))  # with an opt-out too (Conservative included)
        if body:
            await ea.update_person(van_id, body)
            wrote = True
    if plan.links and profile.constituent_id != van_id:
        # the VAN ID into the profile's Constituent ID: both records stay linked
        await mc.profile_update(ProfileUpdate(phone_number=phone, constituent_id=van_id))
        wrote = True
    writes.append(consent_trail.written_by_mc_to_ea(  # the consent history
        run, van_id, profile, mc_fact, obs,
        rules.Consent.IN if person is None or plan.opt_in else rules.Consent.OUT if plan.opt_out else None))
    writes.append(store.put_link(name, van_id, pid, stamp))
    if plan.skip is not None:
        run.record("updated", crm_id=van_id, messaging_id=pid,
                   message=_join(f"opt-out set in EveryAction; profile data not synced ({plan.skip})", plan.note))
        return writes
    writes.append(store.put_fingerprint(name, f"ea:{pid}", payload_fp, mc_fact.status.value, stamp))
    run.record("created" if created else "updated" if wrote else "unchanged", crm_id=van_id, messaging_id=pid,
               message=plan.note)
    return writes


def _join(*parts: str | None) -> str:
    return "; ".join(p for p in parts if p)
