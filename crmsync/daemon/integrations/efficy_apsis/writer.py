"""Writing planned profiles to APSIS one by one (real-time, and full syncs below the import threshold).

Order per profile, as the seed's middle layer does it: create the profile if unknown, patch attributes,
then consents, then tags (``ApsisClient.upsert_profile``). Before an opt-in is *written* (never for one
already sent), the profile's consents are read from APSIS: an opt-out there stands unless the CRM Profile
link is certainly newer (:func:`~.rules.resolve_link_consent`: the link's own time, or an absence crmsync
saw after the opt-out; never the contact's change time), is not written over, and is recorded so that it
flows back to Efficy.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

import structlog
import trio

from crmsync.connectors.apsis import ApsisClient, ApsisProfile, ConsentKey
from crmsync.connectors.apsis.client import UpsertResult
from crmsync.connectors.apsis.problems import ApsisMergeConflictError, ApsisNotFoundError
from crmsync.connectors.apsis.records import ATTR_EMAIL, attributes_patch
from crmsync.connectors.efficy import EfficyContact
from crmsync.connectors.errors import AuthError, FatalApiError
from crmsync.daemon.integrations.efficy_apsis import store
from crmsync.daemon.integrations.efficy_apsis.rules import (
    OPT_IN,
    OPT_OUT,
    OptOutRecord,
    Plan,
    SyncSpec,
    apsis_optout_stands,
    gate_consents,
    link_not_before,
    optin_candidates,
    parse_apsis_time,
    version_str,
)
from crmsync.daemon.runs import RunContext

log = structlog.get_logger("crmsync.daemon.integrations.efficy_apsis.writer")

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Written:
    """The outcome of one planned contact: a report row plus the store writes that go with it."""

    outcome: str
    contact_id: str
    reason: str | None = None
    message: str | None = None
    tx: list[store.TxFn] = field(default_factory=list)

    def report(self, run: RunContext) -> None:
        messaging = self.contact_id if self.outcome not in ("skipped",) else None
        run.record(self.outcome, crm_id=self.contact_id, messaging_id=messaging, reason=self.reason,
                   message=self.message)


async def bounded_map(fn: Callable[[T], Awaitable[R]], items: Sequence[T], limit: int) -> list[R]:
    """``fn`` over ``items`` with at most ``limit`` running at once; results in input order."""
    results: dict[int, R] = {}
    gate = trio.Semaphore(limit)

    async def one(i: int, item: T) -> None:
        async with gate:
            results[i] = await fn(item)

    async with trio.open_nursery() as nursery:
        for i, item in enumerate(items):
            nursery.start_soon(one, i, item)
    return [results[i] for i in range(len(items))]


def _note(*parts: str | None) -> str | None:
    text = "; ".join(p for p in parts if p)
    return text or None


def settled(plan: Plan, contact: EfficyContact, integration: str, now: str) -> Written:
    """Outcome of a plan that needs no APSIS call: a skip, or an unchanged profile (whose fingerprint is
    refreshed with the newer Efficy version, so the stale guard keeps up)."""
    if plan.action == "skip":
        assert plan.reason is not None
        return Written("skipped", plan.contact_id, reason=plan.reason)
    assert plan.desired is not None
    return Written("unchanged", plan.contact_id, message=_note(*plan.notes),
                   tx=[store.written(integration, plan.desired, version_str(contact.modified_at), now)])


async def refused_attributes(apsis: ApsisClient, desired: ApsisProfile, current: ApsisProfile | None
                             ) -> dict[str, str]:
    """After a 400: which attribute values APSIS refuses, each tried alone (attribute -> APSIS's message).

    Only runs when a whole upsert was refused, so a value crmsync could not foresee costs that value, never
    the profile. The profile is created first if needed (v2 attribute writes never create).
    """
    if current is None:
        await apsis.create_profile(desired.key)
    patch = attributes_patch(desired.attributes, current.attributes if current is not None else None)
    refused: dict[str, str] = {}
    for name, value in patch.items():
        try:
            await apsis.patch_attributes(desired.key, {name: value})
        except AuthError:
            raise
        except FatalApiError as exc:
            refused[name] = exc.message
    return refused


async def _upsert(apsis: ApsisClient, desired: ApsisProfile, current: ApsisProfile | None, spec: SyncSpec
                  ) -> tuple[ApsisProfile, UpsertResult, list[str]]:
    """Create, attributes, consents, tags (that order: a failure part-way leaves no fingerprint, so the next
    attempt writes the whole profile again). A 400 is narrowed to the values APSIS refuses: those are left
    out (cleared), opt-ins losing their address with them, and the rest is written."""
    try:
        return desired, await apsis.upsert_profile(desired, current, managed_tags=spec.managed_tags), []
    except FatalApiError as exc:
        if isinstance(exc, AuthError) or exc.status != 400:
            raise
        refused = await refused_attributes(apsis, desired, current)
        if not refused:
            raise
    columns = spec.attribute_columns()
    notes = [f"{columns.get(name, name)} left out of the APSIS profile: {message}"
             for name, message in sorted(refused.items())]
    attributes = {k: (None if k in refused else v) for k, v in desired.attributes.items()}
    consents, gated = gate_consents(desired.consents, attributes, spec.address_attributes)
    narrowed = ApsisProfile(desired.key, attributes, consents, desired.tags)
    log.warning("apsis_refused_values", contact_id=desired.key, attributes=sorted(refused))
    result = await apsis.upsert_profile(narrowed, current, managed_tags=spec.managed_tags)
    return narrowed, result, notes + gated


async def check_apsis_optouts(apsis: ApsisClient, plan: Plan, contact: EfficyContact, spec: SyncSpec,
                              seen_now: datetime | None = None
                              ) -> tuple[ApsisProfile, ApsisProfile | None, list[OptOutRecord]]:
    """Resolve opt-ins about to be written against APSIS's current consents.

    Returns the profile to write, the ``current`` view to diff against (what APSIS has on the checked slots,
    so nothing is written there needlessly), and new records of APSIS opt-outs that won.
    """
    desired, current = plan.desired, plan.current
    assert desired is not None
    candidates = optin_candidates(desired.consents, current)
    if not candidates:
        return desired, current, []
    try:
        consents = await apsis.get_consents(desired.key)
    except ApsisNotFoundError:
        return desired, current, []  # no profile yet: nothing to overwrite
    have = {c.key: c for c in consents}
    new_consents = dict(desired.consents)
    seen: dict[ConsentKey, str] = dict(current.consents) if current is not None else {}
    records: list[OptOutRecord] = []
    profile_of = {rule.slot: rule.profile_id for rule in spec.consents}
    for ck in candidates:
        existing = have.get(ck)
        if existing is None:
            continue
        pid = profile_of[ck]
        opted_out_at = parse_apsis_time(existing.modified_at)
        if existing.type == OPT_OUT:
            if apsis_optout_stands(opted_out_at, own_optout_at=plan.own_optouts.get(ck),
                                   link_changed_at=link_not_before(contact, pid, spec.created_field),
                                   observation=plan.observations.get(pid), read_at=plan.read_at):
                new_consents[ck] = OPT_OUT
                seen[ck] = OPT_OUT  # already so in APSIS: no write
                records.append(OptOutRecord(desired.key, pid, ck, opted_out_at, seen_at=seen_now))
                log.debug("apsis_optout_stands", contact_id=desired.key, topic=ck.topic, channel=ck.channel)
        elif existing.type in (OPT_IN, "confirmed-opt-in"):
            seen[ck] = OPT_IN
    if new_consents != desired.consents:  # unchanged profiles are not copied (a full sync checks every one)
        desired = ApsisProfile(desired.key, desired.attributes, new_consents, desired.tags)
    if current is not None and seen != current.consents:
        current = ApsisProfile(current.key, current.attributes, seen, current.tags)
    return desired, current, records


async def merge_email_profile(apsis: ApsisClient, plan: Plan, spec: SyncSpec, integration: str
                              ) -> tuple[str | None, list[store.TxFn]]:
    """On a contact's first sync: merge its CRM-id profile with the email-keyspace profile of the same
    address, if APSIS has one (a form signup), so one person is one marketing profile and an opt-out given
    on either stays in force (research §9.5, P9). A 409 is reported and remembered: never tried again.

    Returns the report note and the store writes."""
    desired = plan.desired
    assert desired is not None
    email = desired.attributes.get(ATTR_EMAIL)
    if (not spec.merge_email_profiles or plan.current is not None or not isinstance(email, str) or not email
            or apsis.keyspace == spec.email_keyspace):
        return None, []
    if plan.merge_refused:
        return f"not merged with the email-keyspace profile of its address: {plan.merge_refused}", []
    try:
        await apsis.get_consents(email, keyspace=spec.email_keyspace)
    except ApsisNotFoundError:
        return None, []  # no such profile: nothing to merge
    try:
        await apsis.merge_profiles((apsis.keyspace, desired.key), (spec.email_keyspace, email))
    except ApsisMergeConflictError as exc:
        refused = f"APSIS refused the merge (409): {exc.detail or exc.message}"
        log.warning("apsis_merge_refused", contact_id=desired.key, error=exc.message)
        return (f"not merged with the email-keyspace profile of its address: {refused}",
                [store.kv_set(integration, store.merge_key(desired.key), refused)])
    log.info("apsis_profiles_merged", contact_id=desired.key, keyspace=spec.email_keyspace)
    return "merged with the email-keyspace profile of its address", []


async def write_one(apsis: ApsisClient, plan: Plan, contact: EfficyContact, spec: SyncSpec,
                    integration: str, now: str) -> Written:
    """Upsert one planned profile. API refusals become ``rejected`` rows (with APSIS's message)."""
    if plan.action != "write":
        return settled(plan, contact, integration, now)
    merged: str | None = None
    merge_tx: list[store.TxFn] = []
    try:
        merged, merge_tx = await merge_email_profile(apsis, plan, spec, integration)
        desired, current, records = await check_apsis_optouts(apsis, plan, contact, spec,
                                                              datetime.fromisoformat(now))
        desired, result, notes = await _upsert(apsis, desired, current, spec)
    except AuthError:
        raise  # credentials or permissions: the whole run is wrong, not this record
    except FatalApiError as exc:
        log.warning("apsis_rejected", contact_id=plan.contact_id, error=exc.message)
        return Written("rejected", plan.contact_id, message=_note(exc.message, merged, *plan.notes),
                       tx=merge_tx)
    tx = [store.written(integration, desired, version_str(contact.modified_at), now, standing=records), *merge_tx,
          store.consents_written(integration, desired.key, result.consents_changed)]
    tx += [store.put_optout(integration, r) for r in records]
    tx += [store.drop_optout(integration, r) for r in plan.obsolete_optouts]
    if plan.current is None:
        outcome = "created"
    else:
        outcome = "updated" if result.writes else "unchanged"
    return Written(outcome, plan.contact_id, message=_note(merged, *plan.notes, *notes), tx=tx)

