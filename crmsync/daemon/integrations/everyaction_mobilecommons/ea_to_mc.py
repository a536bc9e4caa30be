"""Flow ``ea_to_mc`` (nightly): every EveryAction change of the past window -> Mobile Commons.

For each changed contact: read it fully (the export row lacks phone type and country), find the profile by
its mobile number (Mobile Commons addresses profiles by phone only; the stored link says whether it is the
same person), let :mod:`.rules` decide, then write: ``profile_update`` (data, the VAN ID as Constituent ID,
and the default web opt-in path for new opt-ins, whose welcome Mobile Commons sends once per campaign ever)
and ``profile_opt_out`` for EveryAction opt-outs. Report rows, links, fingerprints and consent observations
are flushed together per batch; the cursor advances in the last flush, after every record was acknowledged.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import cast

import structlog

from crmsync.connectors.errors import NotFoundError
from crmsync.connectors.everyaction import ContactChange, EveryActionClient, VanPerson
from crmsync.connectors.everyaction.errors import ExportColumnMissingError
from crmsync.connectors.everyaction.exports import ExportJob
from crmsync.connectors.everyaction.records import identifier_update
from crmsync.connectors.mobilecommons import MobileCommonsClient, Profile, ProfileUpdate
from crmsync.daemon.integrations.base import FlowError
from crmsync.daemon.integrations.everyaction_mobilecommons import consent_trail, rules, store
from crmsync.daemon.integrations.everyaction_mobilecommons.config import (
    EA_MAX_LOOKBACK,
    EveryActionMobileCommonsConfig,
)
from crmsync.daemon.integrations.everyaction_mobilecommons.pipeline import (
    PhoneTurns,
    Pipeline,
    ProfileReads,
    RecordRun,
)
from crmsync.daemon.runs import RunContext
from crmsync.state import queries as q

log = structlog.get_logger("crmsync.integrations.everyaction_mobilecommons.ea_to_mc")

FLOW = "ea_to_mc"
BATCH = 100  # records acknowledged per store transaction
# VAN refuses a dateChangedFrom older than 90 days, measured on its own (later) clock: keep a margin.
LOOKBACK_MARGIN = timedelta(hours=1)


def window_start(now: datetime, cursor: datetime | None, window: timedelta) -> datetime:
    """The configured window, widened back to the last acknowledged end if the daemon missed runs, capped
    at VAN's 90-day export limit."""
    start = now - window
    if cursor is not None and cursor < start:
        start = cursor
    return max(start, now - EA_MAX_LOOKBACK + LOOKBACK_MARGIN)


SHARED_PHONE = "mobile_number_linked_to_another_record"


async def profile_owner(ea: EveryActionClient, link: str | None, profile: Profile, van_id: str,
                        phone: str) -> str | None:
    """The other VAN ID that owns this phone's profile (``link``, its stored link, or the Constituent ID already
    on the profile), if that person still lists this mobile number; None when the profile is free or ours. A
    number that changed hands (the owner no longer has it) goes to the new holder."""
    owner = link or profile.constituent_id
    if not owner or owner == van_id:
        return None
    try:
        other = await ea.get_person(owner)
    except NotFoundError:
        return None
    return owner if rules.contact_from_van(other).phone == phone else None


def profile_update(contact: rules.Contact, plan: rules.Plan, van_id: str, path: str | None) -> ProfileUpdate:
    assert contact.phone is not None
    d = plan.data
    return ProfileUpdate(
        phone_number=contact.phone, email=d.get("email"), first_name=d.get("first_name"),
        last_name=d.get("last_name"), street1=d.get("street_address"), street2=d.get("street_address_2"),
        city=d.get("city"), state=d.get("state"), postal_code=d.get("zip_code"), country=d.get("country"),
        constituent_id=van_id if plan.link_id else None,
        opt_in_path_id=path if plan.subscribe else None,
    )


async def run_ea_to_mc(config: EveryActionMobileCommonsConfig, ea: EveryActionClient,
                       mc: MobileCommonsClient, run: RunContext) -> None:
    name = run.integration
    now = run.clock.now().replace(microsecond=0)  # VAN's dates have second resolution
    raw_cursor = await run.db.tx(q.get_cursor, name, FLOW)
    cursor = datetime.fromisoformat(raw_cursor) if raw_cursor else None
    since = window_start(now, cursor, config.ea_window)
    log.info("ea_to_mc_window", since=since.isoformat(), until=now.isoformat(),
             widened=since < now - config.ea_window)
    job = await ea.run_contacts_export(since, now)
    try:
        await _sync_rows(config, ea, mc, run, job)
    except ExportColumnMissingError as exc:
        raise FlowError(missing_column_message(config, run.integration, exc)) from exc


def missing_column_message(config: EveryActionMobileCommonsConfig, name: str, exc: ExportColumnMissingError
                           ) -> str:
    """Names each missing column, its field, and the setting that renames it."""
    parts = []
    for column in exc.columns:
        field = config.everyaction.export_field_of(column) or "?"
        parts.append(f"column {column!r} (field {field}; set integrations.{name}.everyaction.export_columns."
                     f"{field} to the name your EveryAction instance uses)")
    return (f"the EveryAction Contacts export has no {', '.join(parts)}; its header is: "
            f"{', '.join(exc.header)}")


async def _sync_rows(config: EveryActionMobileCommonsConfig, ea: EveryActionClient, mc: MobileCommonsClient,
                     run: RunContext, job: ExportJob) -> None:
    """The export's rows through the pipeline (read, plan and write, acknowledge in order)."""
    name = run.integration
    # the window end VAN actually used is where the next window starts
    until = job.date_changed_to or run.clock.now().replace(microsecond=0)
    turns = PhoneTurns()
    reads = ProfileReads(mc)

    # Mobile Commons opt-ins waiting on an EveryAction record (store.py): each change of a record marks those
    # waiting on it (or on its phone) due, for mc_to_ea to re-examine; no store write when none waits
    waiting = await run.db.tx(store.any_waiting, name)

    async def handle(seq: int, change: ContactChange, record: RecordRun) -> list[store.TxFn]:
        writes = await sync_one(config, ea, mc, record, str(change.van_id), seq, turns, reads)
        if waiting:
            writes.append(store.mark_waiting(name, str(change.van_id), rules.nanp_e164(change.phone)))
        return writes

    pipeline = Pipeline[ContactChange](
        run=run, handle=handle, ids=lambda change: {"crm_id": str(change.van_id)},
        key=lambda change: change.van_id, workers=config.workers, group=BATCH)
    rows = cast("AsyncGenerator[ContactChange, None]", ea.iter_export_rows(job))
    async with contextlib.aclosing(rows):
        await pipeline.run_all(rows, lambda: [store.set_cursor(name, FLOW, until.isoformat(), run.now_iso())],
                               background=reads.run)


async def _opt_out_only(mc: MobileCommonsClient, run: RecordRun, van_id: str, phone: str,
                        obs: rules.EaObservation) -> None:
    profile = await mc.find_profile(phone) if obs.status == rules.Consent.OUT else None
    mc_fact = rules.mc_consent(profile)
    if profile is not None and mc_fact.status != rules.Consent.OUT and \
            rules.resolve_consent(obs.fact(), mc_fact) == rules.Consent.OUT:
        await mc.profile_opt_out(phone)
        run.record("updated", crm_id=van_id, messaging_id=profile.id,
                   message="opted out in Mobile Commons; profile data not synced (country_not_us)")
        return
    run.skip("country_not_us", crm_id=van_id, messaging_id=profile.id if profile else None)


async def sync_one(config: EveryActionMobileCommonsConfig, ea: EveryActionClient, mc: MobileCommonsClient,
                   run: RecordRun, van_id: str, seq: int, turns: PhoneTurns, reads: ProfileReads
                   ) -> list[store.TxFn]:
    """One changed contact: read it once from each side, plan (pure rules), write. Records sharing a mobile
    number take turns in export order (Mobile Commons keeps one profile per phone)."""
    try:
        person = await ea.get_person(van_id)
    except NotFoundError:
        turns.register(seq, None)
        run.skip("not_found_in_everyaction", crm_id=van_id)
        return []
    except BaseException:
        turns.register(seq, None)  # later records must not wait for this one
        raise
    contact = rules.contact_from_van(person)
    phone = contact.consent_phone
    turns.register(seq, phone)
    if phone is None:
        run.skip("no_mobile_number", crm_id=van_id)
        return []
    await turns.wait_turn(seq, phone)
    try:
        return await _sync_person(config, ea, mc, run, van_id, person, contact, phone, reads)
    finally:
        turns.release(seq, phone)


async def _sync_person(config: EveryActionMobileCommonsConfig, ea: EveryActionClient, mc: MobileCommonsClient,
                       run: RecordRun, van_id: str, person: VanPerson, contact: rules.Contact, phone: str,
                       reads: ProfileReads) -> list[store.TxFn]:
    name, now = run.integration, run.clock.now()
    ea_status = rules.van_consent(person, phone)
    profile = await reads.get(contact.phone) if contact.phone is not None else None
    profile_id = profile.id if profile else None
    # one store read for the record (batched with other records' reads: one thread hop per group)
    known = await run.read(lambda c: store.read_for_van(c, name, van_id, phone, profile_id))
    obs = rules.observe_ea(known.observation, ea_status, now)
    writes = [store.put_observation(name, phone, obs)]
    if contact.phone is None:
        # a non-US mobile: its data never syncs, but an opt-out is always safe and still travels
        await _opt_out_only(mc, run, van_id, phone, obs)
        return writes
    messaging_id = profile_id
    owner = await profile_owner(ea, known.profile_link, profile, van_id, contact.phone) if profile else None
    payload_fp = rules.fingerprint(rules.ea_payload(contact, ea_status, van_id))
    plan = rules.plan_ea_to_mc(
        contact=contact, ea=obs.fact(), profile=rules.contact_from_profile(profile) if profile else None,
        mc=rules.mc_consent(profile), van_id=van_id,
        profile_constituent_id=profile.constituent_id if profile else None, liberal=config.liberal_sync,
        required=config.required_fields(), opt_in_path=config.default_opt_in_path_id,
        payload_unchanged=known.fingerprint == payload_fp and profile is not None,
        missing_country_is_us=config.missing_country == "assume_us",
    )
    if owner is not None and plan.skip is None:
        # Mobile Commons keeps one profile per phone: it stays with the record linked to it. An opt-out still
        # travels (VAN keeps opt-in status per phone, so both records agree on it anyway).
        plan = replace(plan, skip=SHARED_PHONE, data={}, link_id=None, subscribe=False, links=False)
    wrote = created = False
    if plan.skip is None and (plan.data or plan.link_id or plan.subscribe):
        saved = await mc.profile_update(profile_update(contact, plan, van_id, config.default_opt_in_path_id))
        wrote, created, messaging_id = True, profile is None, saved.id
    if plan.opt_out:
        await mc.profile_opt_out(contact.phone)
        wrote = True
    writes.append(consent_trail.after_ea_to_mc(run, van_id, messaging_id, profile, rules.mc_consent(profile),
                                               known.observation, obs, plan))  # the consent history
    if plan.skip is not None:
        if plan.opt_out:  # the opt-out travelled; the data did not
            run.record("updated", crm_id=van_id, messaging_id=messaging_id,
                       message=f"opted out in Mobile Commons; profile data not synced ({plan.skip})")
        else:
            message = f"this mobile number's profile belongs to VAN ID {owner}" if owner else plan.note
            run.skip(plan.skip, crm_id=van_id, messaging_id=messaging_id, message=message)
        return writes
    assert messaging_id is not None  # a profile existed or was just written
    id_type = config.everyaction.identifier_type
    if plan.links and person.identifier(id_type) != messaging_id:
        # the Mobile Commons id goes to EveryAction in the same run (the seed: "Mobile Commons pushes records
        # to EveryAction to add the identifier to the profile")
        await ea.update_person(van_id, identifier_update(id_type, messaging_id))
        wrote = True
    stamp = run.now_iso()
    writes.append(store.put_link(name, van_id, messaging_id, stamp))
    writes.append(store.put_fingerprint(name, f"mc:{van_id}", payload_fp, ea_status.value, stamp))
    outcome = "created" if created else "updated" if wrote else "unchanged"
    run.record(outcome, crm_id=van_id, messaging_id=messaging_id, message=plan.note)
    return writes
