"""The ``consent_backflow`` flow: opt-outs made in APSIS (the unsubscribe link) back to Efficy.

APSIS has no consent webhook in its public API and the consent report's body is unverified (research
§6.2), so the flow polls the consents of every linked profile, a store page at a time. An opt-out on a
mapped topic/channel where crmsync last sent an opt-in is an opt-out made in APSIS: crmsync

1. records it durably (``OptOutRecord``) so that no later sync re-subscribes the person, even from a stale
   Efficy read that still shows the CRM Profile;
2. removes the CRM Profile from the contact card in Efficy (idempotent);
3. reads the contact back: its new modification time is the moment after which a CRM user re-adding the
   profile counts as a newer change (``unlinked_version``).

The flow never writes an opt-in to APSIS.
"""

from __future__ import annotations

import structlog

from crmsync.connectors.apsis import ApsisClient, ApsisProfile, Consent
from crmsync.connectors.apsis.problems import ApsisNotFoundError
from crmsync.connectors.efficy import EfficyClient
from crmsync.connectors.errors import AuthError, FatalApiError, NotFoundError
from crmsync.daemon.integrations.efficy_apsis import store
from crmsync.daemon.integrations.efficy_apsis.rules import (
    OPT_OUT,
    ConsentRule,
    OptOutRecord,
    SyncSpec,
    parse_apsis_time,
)
from crmsync.daemon.integrations.efficy_apsis.writer import Written, bounded_map
from crmsync.daemon.runs import RunContext
from crmsync.state import queries as q

log = structlog.get_logger("crmsync.daemon.integrations.efficy_apsis.consent_backflow")


async def run_backflow(run: RunContext, *, efficy: EfficyClient, apsis: ApsisClient, spec: SyncSpec,
                       integration: str, page_size: int, concurrency: int) -> None:
    if not spec.consents:
        return
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
            return await _check(cid, states[cid], run, efficy=efficy, apsis=apsis, spec=spec,
                                integration=integration)

        results = await bounded_map(one, ids, concurrency)
        tx: list[store.TxFn] = []
        for w in results:
            if w is not None:  # only profiles acted on get a row: polling every profile is not news
                w.report(run)
                tx.extend(w.tx)
        await run.flush(*tx)
        if run.should_stop():
            run.interrupted = True
            return


def _to_unlink(consents: list[Consent], state: store.ContactState, rules: tuple[ConsentRule, ...]
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
        out.append((rule, consent))
    return out


async def _check(cid: str, state: store.ContactState, run: RunContext, *, efficy: EfficyClient,
                 apsis: ApsisClient, spec: SyncSpec, integration: str) -> Written | None:
    try:
        consents = await apsis.get_consents(cid, types=(OPT_OUT,))
    except ApsisNotFoundError:
        return None
    found = _to_unlink(consents, state, spec.consents)
    if not found:
        return None
    now = run.now_iso()
    profiles = sorted({rule.profile_id for rule, _ in found}, key=int)
    try:
        for pid in profiles:
            await efficy.unlink_profile(cid, pid)
        contact = await efficy.get_contact(cid)
    except NotFoundError:
        contact = None
    except AuthError:
        raise
    except FatalApiError as exc:
        # keep the durable record anyway: the opt-out must hold in later syncs while Efficy refuses
        keep = [store.put_optout(integration, OptOutRecord(cid, rule.profile_id, rule.slot,
                                                           parse_apsis_time(c.modified_at))) for rule, c in found]
        return Written("rejected", cid, message=exc.message, tx=keep)
    confirmed = contact is not None and not any(contact.has_profile(p) for p in profiles)
    version = contact.modified_at if (contact is not None and confirmed) else None
    tx: list[store.TxFn] = []
    consents_sent = dict(state.current.consents) if state.current is not None else {}
    for rule, consent in found:
        tx.append(store.put_optout(integration, OptOutRecord(cid, rule.profile_id, rule.slot,
                                                             parse_apsis_time(consent.modified_at), version)))
        consents_sent[rule.slot] = OPT_OUT
    if state.current is not None:  # APSIS holds the opt-out now: remember it as the state of the slot
        updated = ApsisProfile(cid, state.current.attributes, consents_sent, state.current.tags)
        tx.append(store.written(integration, updated, state.written_version, now))
    names = ", ".join(f"{r.slot.topic}/{r.slot.channel}" for r, _ in found)
    log.info("apsis_optout_flowed_back", contact_id=cid, profiles=profiles, confirmed=confirmed)
    message = (f"opted out in APSIS ({names}); CRM Profile {', '.join(profiles)} removed in Efficy"
               if confirmed else f"opted out in APSIS ({names}); removal in Efficy not confirmed yet")
    return Written("updated", cid, message=message, tx=tx)

