"""The ``consent_backflow`` flow: opt-outs made in APSIS (the unsubscribe link) back to Efficy.

APSIS has no consent webhook in its public API (research §6.2), so the flow reads consents in one of two
ways (``consent_backflow.method``):

* ``report`` (default): one consent report (E1) per channel for the mapped topics, streamed and handled in
  chunks of ``chunk_size`` rows (memory stays flat however large the account, §9.8). The opt-out rows of
  profiles linked in the store are looked up a chunk at a time; O(1) APSIS requests per run.
* ``poll``: the consents of every linked profile (C2), a store page at a time; one APSIS request per
  profile, for accounts where the report endpoint is not available.

Either way, an opt-out on a mapped topic/channel where crmsync last sent an opt-in is an opt-out made in
APSIS, and crmsync

1. records it durably (``OptOutRecord``) so that no later sync re-subscribes the person, even from a stale
   Efficy read that still shows the CRM Profile;
2. removes the CRM Profile from the contact card in Efficy (idempotent);
3. reads the contact back: the link seen absent then (after the opt-out) is what lets a CRM user's later
   re-adding of the profile count as a newer change (a link sighting, see ``rules.observe_link``).

The flow never writes an opt-in to APSIS.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import aclosing
from datetime import datetime

import structlog

from crmsync.connectors.apsis import ApsisClient, ApsisProfile, Consent
from crmsync.connectors.apsis.problems import ApsisNotFoundError, ConsentReportExpiredError
from crmsync.connectors.apsis.records import ConsentKey
from crmsync.connectors.efficy import EfficyClient, EfficyContact
from crmsync.connectors.errors import AuthError, FatalApiError, NotFoundError
from crmsync.daemon.integrations.efficy_apsis import consent_trail, store
from crmsync.daemon.integrations.efficy_apsis.rules import (
    OPT_IN,
    OPT_OUT,
    ConsentRule,
    OptOutRecord,
    SyncSpec,
    link_not_before,
    observe_contact,
    parse_apsis_time,
    resolve_link_consent,
)
from crmsync.daemon.integrations.efficy_apsis.writer import Written, bounded_map
from crmsync.daemon.runs import RunContext
from crmsync.state import consent_history
from crmsync.state import queries as q

log = structlog.get_logger("crmsync.daemon.integrations.efficy_apsis.consent_backflow")

#: A report that expires (410) before it is read is requested again this many times in one run.
REPORT_ATTEMPTS = 2


async def run_backflow(run: RunContext, *, efficy: EfficyClient, apsis: ApsisClient, spec: SyncSpec,
                       integration: str, page_size: int, concurrency: int, method: str = "report",
                       chunk_size: int = 500) -> None:
    if not spec.consents:
        return
    if method == "poll":
        await _run_poll(run, efficy=efficy, apsis=apsis, spec=spec, integration=integration,
                        page_size=page_size, concurrency=concurrency)
    elif method == "report":
        await _run_report(run, efficy=efficy, apsis=apsis, spec=spec, integration=integration,
                          chunk_size=chunk_size, concurrency=concurrency)
    else:
        raise ValueError(f"unknown consent backflow method {method!r}")


# -- poll: C2 per linked profile ------------------------------------------------------------------------------

async def _run_poll(run: RunContext, *, efficy: EfficyClient, apsis: ApsisClient, spec: SyncSpec,
                    integration: str, page_size: int, concurrency: int) -> None:
    after: str | None = None
    while True:
        page = await run.db.tx(q.links_page, integration, after, page_size)
        if not page:
            return
        after = page[-1][0]
        ids = [cid for cid, _ in page]
        states = await run.db.tx(store.load_states, integration, ids, spec.consents)
        run.fetched(len(ids))

        async def one(cid: str, states: dict[str, store.ContactState] = states) -> Written | None:
            try:
                consents = await apsis.get_consents(cid, types=(OPT_OUT,))
            except ApsisNotFoundError:
                return None
            return await _act(cid, consents, states[cid], efficy=efficy, spec=spec, integration=integration,
                              now=run.now_iso(), clock_now=run.clock.now)

        results = await bounded_map(one, ids, concurrency)
        await _flush(run, results)
        if run.should_stop():
            run.interrupted = True
            return


# -- report: E1 per channel, streamed -------------------------------------------------------------------------

def report_requests(rules: Sequence[ConsentRule]) -> list[tuple[str, tuple[str, ...]]]:
    """One report per channel: ``(channel, topics mapped on it)``, in a stable order."""
    by_channel: dict[str, set[str]] = {}
    for rule in rules:
        by_channel.setdefault(rule.slot.channel, set()).add(rule.slot.topic)
    return [(channel, tuple(sorted(topics))) for channel, topics in sorted(by_channel.items())]


async def _run_report(run: RunContext, *, efficy: EfficyClient, apsis: ApsisClient, spec: SyncSpec,
                      integration: str, chunk_size: int, concurrency: int) -> None:
    mapped = frozenset(rule.slot for rule in spec.consents)
    for channel, topics in report_requests(spec.consents):
        for attempt in range(1, REPORT_ATTEMPTS + 1):
            try:
                await _read_report(run, channel, topics, mapped, efficy=efficy, apsis=apsis, spec=spec,
                                   integration=integration, chunk_size=chunk_size, concurrency=concurrency)
                break
            except ConsentReportExpiredError:
                if attempt == REPORT_ATTEMPTS:
                    raise
                log.warning("apsis_consent_report_expired", channel=channel, attempt=attempt)
        if run.interrupted:
            return


async def _read_report(run: RunContext, channel: str, topics: Sequence[str], mapped: frozenset[ConsentKey], *,
                       efficy: EfficyClient, apsis: ApsisClient, spec: SyncSpec, integration: str,
                       chunk_size: int, concurrency: int) -> None:
    """Stream one report; every ``chunk_size`` rows (cut between profiles), act on the buffered opt-outs.

    Only opt-out rows on mapped slots are buffered, and at most one chunk's worth of them.
    """
    pending: dict[str, list[Consent]] = {}
    rows = 0
    last_key: str | None = None
    async with aclosing(apsis.consent_report(topics, channel)) as report:
        async for row in report:
            if rows >= chunk_size and row.profile_key != last_key:
                await _handle_chunk(run, pending, efficy=efficy, spec=spec, integration=integration,
                                    concurrency=concurrency, rows=rows)
                pending, rows = {}, 0
                if run.should_stop():
                    run.interrupted = True
                    return
            rows += 1
            last_key = row.profile_key
            if row.type == OPT_OUT and row.key in mapped:
                pending.setdefault(row.profile_key, []).append(
                    Consent(row.topic, row.channel, row.type, modified_at=row.modified_at))
    await _handle_chunk(run, pending, efficy=efficy, spec=spec, integration=integration,
                        concurrency=concurrency, rows=rows)


def _linked(c: sqlite3.Connection, integration: str, keys: Sequence[str]) -> dict[str, str]:
    """APSIS profile key -> Efficy contact id, for the keys linked in the store (one transaction)."""
    out: dict[str, str] = {}
    for key in keys:
        crm_id = q.link_for_messaging(c, integration, key)
        if crm_id is not None:
            out[key] = crm_id
    return out


async def _handle_chunk(run: RunContext, pending: dict[str, list[Consent]], *, efficy: EfficyClient,
                        spec: SyncSpec, integration: str, concurrency: int, rows: int) -> None:
    run.fetched(rows)
    if not pending:
        if rows:
            await run.flush()
        return
    linked = await run.db.tx(_linked, integration, list(pending))
    ids = [linked[key] for key in pending if key in linked]
    consents = {linked[key]: found for key, found in pending.items() if key in linked}
    states = await run.db.tx(store.load_states, integration, ids, spec.consents)

    async def one(cid: str) -> Written | None:
        return await _act(cid, consents[cid], states[cid], efficy=efficy, spec=spec, integration=integration,
                          now=run.now_iso(), clock_now=run.clock.now)

    await _flush(run, await bounded_map(one, ids, concurrency))


# -- shared ---------------------------------------------------------------------------------------------------

async def _flush(run: RunContext, results: Sequence[Written | None]) -> None:
    tx: list[store.TxFn] = []
    for w in results:
        if w is not None:  # only profiles acted on get a row: reading every profile is not news
            w.report(run)
            tx.extend(w.tx)
    await run.flush(*tx)


def _to_unlink(consents: Sequence[Consent], state: store.ContactState, rules: tuple[ConsentRule, ...]
               ) -> list[tuple[ConsentRule, Consent]]:
    """Mapped slots opted out in APSIS that crmsync did not send as opt-out (so APSIS made them)."""
    by_slot = {c.key: c for c in consents if c.type == OPT_OUT}
    out = []
    for rule in rules:
        consent = by_slot.get(rule.slot)
        if consent is None:
            continue
        sent = state.current.consents.get(rule.slot) if state.current is not None else None
        record = state.optouts.get((rule.profile_id, rule.slot))
        if sent == OPT_OUT and (record is None or record.unlinked_version is not None):
            continue  # ours, or already flowed back
        own = state.own_optouts.get(rule.slot)
        at = parse_apsis_time(consent.modified_at)
        if record is None and own is not None and at is not None and at <= own:
            continue  # crmsync's own write put it in force, and no one opted out since
        out.append((rule, consent))
    return out


async def _act(cid: str, consents: Sequence[Consent], state: store.ContactState, *, efficy: EfficyClient,
               spec: SyncSpec, integration: str, now: str, clock_now: Callable[[], datetime]) -> Written | None:
    """Given a linked contact's APSIS opt-outs, flow the ones APSIS made back to Efficy.

    The contact is read first: an opt-out older than the CRM Profile link on the card (the link certainly
    made after it, :func:`~.rules.resolve_link_consent`) is not flowed back; the newer link wins and the
    contact is queued for a real-time sync, which re-subscribes it. Every other opt-out removes the CRM
    Profile, and a read-back confirms the removal.
    """
    found = _to_unlink(consents, state, spec.consents)
    if not found:
        return None
    seen_at = datetime.fromisoformat(now)
    before_at = clock_now()
    try:
        before: EfficyContact | None = await efficy.get_contact(cid)
    except NotFoundError:
        before = None
    except AuthError:
        raise
    except FatalApiError as exc:
        return _refused(cid, found, exc, integration, seen_at)
    tx: list[store.TxFn] = []
    overtaken: list[tuple[ConsentRule, Consent]] = []
    if before is not None:
        seen, sightings = observe_contact(before, spec.consents, state.observations, before_at)
        tx.append(store.record_sightings(integration, cid, sightings, before_at))
        kept: list[tuple[ConsentRule, Consent]] = []
        for rule, consent in found:
            pid = rule.profile_id
            kind = resolve_link_consent(
                link_present=before.has_profile(pid), opted_out=True,
                opted_out_at=parse_apsis_time(consent.modified_at),
                link_changed_at=link_not_before(before, pid, spec.created_field),
                observation=seen.get(pid), read_at=before_at)
            (overtaken if kind == OPT_IN else kept).append((rule, consent))
        found = kept
    profiles = sorted({rule.profile_id for rule, _ in found
                       if before is not None and before.has_profile(rule.profile_id)}, key=int)
    # a profile that must go takes every mapping of it along (one link, several slots)
    overtaken = [(rule, c) for rule, c in overtaken if rule.profile_id not in profiles]
    contact = before
    read_at: datetime | None = before_at
    if profiles:
        try:
            for pid in profiles:
                await efficy.unlink_profile(cid, pid)
            read_at = clock_now()  # the read-back happens after the unlinks, at or after this moment
            contact = await efficy.get_contact(cid)
        except NotFoundError:
            contact = None
        except AuthError:
            raise
        except FatalApiError as exc:
            return _refused(cid, found, exc, integration, seen_at, tx)
        if contact is not None:  # what the read-back shows of every mapped link is a sighting like any other
            _, sightings = observe_contact(contact, spec.consents, {}, read_at)
            tx.append(store.record_sightings(integration, cid, sightings, read_at))
    confirmed = contact is not None and not any(contact.has_profile(p) for p in profiles)
    version = contact.modified_at if (contact is not None and confirmed) else None
    consents_sent = dict(state.current.consents) if state.current is not None else {}
    records = []
    for rule, consent in found:
        earlier = state.optouts.get((rule.profile_id, rule.slot))
        first_seen = earlier.seen_at if earlier is not None and earlier.seen_at is not None else seen_at
        records.append(OptOutRecord(cid, rule.profile_id, rule.slot, parse_apsis_time(consent.modified_at), version,
                                    seen_at=first_seen))
    tx.extend(store.put_optout(integration, record) for record in records)
    for rule, _ in found + overtaken:
        consents_sent[rule.slot] = OPT_OUT  # what APSIS holds now
    if state.current is not None:  # APSIS holds the opt-out now: remember it as the state of the slot
        updated = ApsisProfile(cid, state.current.attributes, consents_sent, state.current.tags)
        tx.append(store.written(integration, updated, state.written_version, now, standing=records))
    tx.append(consent_history.recorder(  # the consent history: the CRM Profiles crmsync removed in Efficy
        integration, (consent_trail.apsis_observed(records, now) if state.current is None else [])
        + consent_trail.efficy_unlinked([r for r in records if r.profile_id in profiles], now, confirmed)))
    parts = []
    if found:
        names = ", ".join(f"{r.slot.topic}/{r.slot.channel}" for r, _ in found)
        removed = ", ".join(profiles)
        parts.append(f"opted out in APSIS ({names}); CRM Profile {removed} removed in Efficy" if confirmed and
                     profiles else f"opted out in APSIS ({names}); removal in Efficy not confirmed yet"
                     if profiles else f"opted out in APSIS ({names}); the CRM Profile was already gone")
    if overtaken:
        names = ", ".join(f"{r.slot.topic}/{r.slot.channel}" for r, _ in overtaken)
        parts.append(f"opt-out in APSIS ({names}) is older than the CRM Profile link in Efficy: link kept, "
                     "queued for re-subscription")
        tx.append(_queue_contact(integration, cid, now))
    log.debug("apsis_optout_flowed_back", contact_id=cid, profiles=profiles, confirmed=confirmed,
             overtaken=len(overtaken))
    return Written("updated", cid, message="; ".join(parts), tx=tx)


def _refused(cid: str, found: Sequence[tuple[ConsentRule, Consent]], exc: FatalApiError, integration: str,
             seen_at: datetime, tx: Sequence[store.TxFn] = ()) -> Written:
    # keep the durable record anyway: the opt-out must hold in later syncs while Efficy refuses
    keep = [store.put_optout(integration, OptOutRecord(cid, rule.profile_id, rule.slot,
                                                       parse_apsis_time(c.modified_at), seen_at=seen_at))
            for rule, c in found]
    return Written("rejected", cid, message=exc.message, tx=[*tx, *keep])


def _queue_contact(integration: str, contact_id: str, now: str) -> store.TxFn:
    """A real-time event for the contact, as if Efficy had pushed it: the real-time flow writes the opt-in
    (this flow never does)."""

    def tx(c: sqlite3.Connection) -> None:
        q.enqueue(c, integration, [(None, {"contact_id": contact_id, "operation": "updated", "changed_at": None})],
                  now)

    return tx
