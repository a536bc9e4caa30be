"""The ``realtime`` flow: webhook bodies in (both Efficy push forms), then one queued batch at a time.

Parsing is pure (:func:`parse_body`): a native Efficy WebHooks body ``{database, version, records}`` (only
table 11000, contacts, is kept) or the generic-connector array ``[{record_id, operation}]`` (signed in
``X-Justin-Signature``; the daemon's HTTP layer checks the HMAC before this runs). Anything else is refused
(HTTP 400, nothing stored).

Processing (:func:`process`) runs per contact in arrival order: fetch the contact fresh from Efficy (the
webhook only says *which* contact changed), check the sync conditions, map the fields, upsert the profile,
then consents and tags. Reading fresh is what makes a message that arrived during a full sync win when it
is newer, and the fingerprint's Efficy version keeps an older read from overwriting a newer write.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from crmsync import jsonlimits
from crmsync.connectors.apsis import ApsisClient
from crmsync.connectors.efficy import EfficyClient, WebhookPayloadError, parse_contract_webhook, parse_native_webhook
from crmsync.connectors.errors import NotFoundError
from crmsync.daemon.integrations.base import WebhookEvent, WebhookRejected
from crmsync.daemon.integrations.efficy_apsis import store
from crmsync.daemon.integrations.efficy_apsis.rules import SyncSpec, plan_contact
from crmsync.daemon.integrations.efficy_apsis.writer import write_one
from crmsync.daemon.runs import RunContext
from crmsync.state import QueuedEvent

log = structlog.get_logger("crmsync.daemon.integrations.efficy_apsis.realtime")


def parse_body(body: bytes) -> list[WebhookEvent]:
    """Events ``{"contact_id", "operation", "changed_at"}`` from either push form; WebhookRejected if malformed."""
    try:
        data = jsonlimits.loads(body)
    except ValueError as exc:  # malformed, nested too deep, NaN/Infinity, not UTF-8
        raise WebhookRejected(f"body is not JSON: {exc}") from None
    try:
        if isinstance(data, Mapping):
            changes = parse_native_webhook(data)
        elif isinstance(data, list):
            # the signature was verified by the HTTP layer ([integrations.NAME.webhook]); parse only
            changes = parse_contract_webhook(body, signature=None, secret=None)
        else:
            raise WebhookRejected("expected an Efficy WebHooks object or a generic-connector array")
    except WebhookPayloadError as exc:
        raise WebhookRejected(str(exc)) from None
    # No dedupe key: neither form carries an event id, and a native record's date is to the second, so two
    # changes of one contact in one second look alike; dropping the second as a "redelivery" lost it (an
    # opt-out). A real redelivery costs a fresh read and no write (fingerprints, identifier links).
    return [WebhookEvent(change.as_dict(), None) for change in changes]


async def process(events: list[QueuedEvent], run: RunContext, *, efficy: EfficyClient, apsis: ApsisClient,
                  spec: SyncSpec, integration: str) -> None:
    """One batch from the durable queue, in arrival order; a contact named twice is synced once."""
    order: dict[str, str] = {}
    for event in events:
        payload = event.payload or {}
        cid = str(payload.get("contact_id") or "")
        if not cid:
            continue
        op = str(payload.get("operation") or "updated")
        if cid in order and op != "deleted":
            order.pop(cid)  # keep the latest position and operation
        order[cid] = op
    # Each contact appears once in a batch, so no contact's state depends on another's write: one store read
    # for the batch, one flush at the end (with the queue acknowledgement, by the daemon). A batch that
    # fails half-way is processed again; every write is idempotent.
    states = await run.db.tx(store.load_states, integration, [c for c, op in order.items() if op != "deleted"],
                             spec.consents)
    tx: list[store.TxFn] = []
    for cid, op in order.items():
        run.fetched()
        if op == "deleted":
            # the seed syncs creations and updates; a deletion leaves the APSIS profile and its consents be
            run.skip("deleted_in_efficy", crm_id=cid)
            continue
        read_at = run.clock.now()  # the read happens at or after this: what it shows holds then
        try:
            contact = await efficy.get_contact(cid)
        except NotFoundError:
            run.skip("not_found_in_efficy", crm_id=cid)
            continue
        state = states[cid]
        plan = plan_contact(contact, spec, known=state, read_at=read_at)
        result = await write_one(apsis, plan, contact, spec, integration, run.now_iso())
        result.report(run)
        tx.append(store.plan_sightings(integration, plan))
        tx.extend(result.tx)
    await run.flush(*tx)
