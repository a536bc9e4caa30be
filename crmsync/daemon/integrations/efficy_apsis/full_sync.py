"""The ``full_sync`` flow: every Efficy contact, one checkpointed page at a time.

Each step reads one keyset page (``K_CONTACT > last``) with its CRM Profiles, plans every contact with the
rules, and writes the changed ones to APSIS, either one profile at a time (bounded concurrency) or, for
large syncs (``full_sync.import_threshold``), as one bulk import per page (opt-in file, then opt-out file).
Only the page is held in memory. The daemon checkpoints the returned position after the step, so a crash
resumes at the next page; a redone page costs no writes (fingerprints).

Imports never re-subscribe an opt-out (``resubscribe_if_opted_out = False``); profiles an import cannot
reproduce exactly (a re-subscription after an opt-out we sent, a consent without its address) go the
per-profile way, which checks APSIS before writing an opt-in.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from crmsync.connectors.apsis import ApsisClient, ApsisProfile
from crmsync.connectors.apsis.problems import ImportFailedError
from crmsync.connectors.apsis.records import ATTR_EMAIL, CHANNEL_EMAIL, CHANNEL_SMS, ImportSettings
from crmsync.connectors.efficy import EfficyClient, EfficyContact
from crmsync.connectors.errors import AuthError, FatalApiError
from crmsync.daemon.integrations.base import FlowError, FullSyncStep
from crmsync.daemon.integrations.efficy_apsis import store
from crmsync.daemon.integrations.efficy_apsis.rules import Plan, SyncSpec, import_ready, plan_contact, version_str
from crmsync.daemon.integrations.efficy_apsis.writer import Written, bounded_map, settled, write_one
from crmsync.daemon.runs import RunContext

log = structlog.get_logger("crmsync.daemon.integrations.efficy_apsis.full_sync")

MODE_KEY = "full_sync_mode"


class FullSync:
    """Holds what a full sync needs across its steps (clients, settings, cached attribute versions)."""

    def __init__(self, *, efficy: EfficyClient, apsis: ApsisClient, spec: SyncSpec, integration: str,
                 page_size: int, import_threshold: int, concurrency: int, sms_address_attribute: str):
        self.efficy = efficy
        self.apsis = apsis
        self.spec = spec
        self.integration = integration
        self.page_size = page_size
        self.import_threshold = import_threshold
        self.concurrency = concurrency
        self.address_attributes = {CHANNEL_EMAIL: ATTR_EMAIL, CHANNEL_SMS: sms_address_attribute}
        self.import_settings = ImportSettings(keyspace=apsis.keyspace, address_attributes=self.address_attributes,
                                              resubscribe_if_opted_out=False, clear_existing_attributes=False)
        self._versions: dict[str, str] | None = None
        self.pages_read = 0

    async def step(self, position: str | None, run: RunContext) -> FullSyncStep:
        read_at = run.clock.now()  # the page is read at or after this moment
        page = await self.efficy.list_contacts(position, page_size=self.page_size, include_profiles=True)
        self.pages_read += 1
        run.fetched(len(page.records))
        use_import = await self._mode(position, page.total, run)
        contacts = list(page.records)
        states = await run.db.tx(store.load_states, self.integration, [c.contact_id for c in contacts],
                                 self.spec.consents)
        plans = [plan_contact(c, self.spec, known=states[c.contact_id], read_at=read_at) for c in contacts]
        now = run.now_iso()
        by_id = {c.contact_id: c for c in contacts}
        results: dict[str, Written] = {}
        per_profile: list[Plan] = []
        bulk: list[Plan] = []
        for plan in plans:
            if plan.action != "write":
                results[plan.contact_id] = settled(plan, by_id[plan.contact_id], self.integration, now)
            elif use_import and plan.desired is not None and import_ready(plan.desired, plan.current,
                                                                          self.address_attributes):
                bulk.append(plan)
            else:
                per_profile.append(plan)
        if bulk:
            for w in await self._import(bulk, by_id, now):
                results[w.contact_id] = w

        async def one(plan: Plan) -> Written:
            return await write_one(self.apsis, plan, by_id[plan.contact_id], self.spec, self.integration, now)

        for w in await bounded_map(one, per_profile, self.concurrency):
            results[w.contact_id] = w
        tx: list[store.TxFn] = [store.plan_sightings(self.integration, plan) for plan in plans]
        for contact in contacts:  # report in Efficy order
            w = results[contact.contact_id]
            w.report(run)
            tx.extend(w.tx)
        await run.flush(*tx)
        return FullSyncStep(page.next_position, len(contacts), page.total)

    async def _mode(self, position: str | None, total: int | None, run: RunContext) -> bool:
        """Per-profile or import, decided on the first page from the total and kept for the whole sync
        (also across a resume)."""
        if position is None:
            use = bool(self.import_threshold) and total is not None and total >= self.import_threshold
            await run.flush(store.kv_set(self.integration, MODE_KEY, "import" if use else "upsert"))
            log.info("full_sync_mode", mode="import" if use else "upsert", total=total)
            return use
        return (await run.db.tx(store.kv_get, self.integration, MODE_KEY)) == "import"

    async def _import(self, plans: list[Plan], by_id: Mapping[str, EfficyContact], now: str) -> list[Written]:
        """One page as one import (two files: opt-ins, then opt-outs), then tag patches where tags changed."""
        if self._versions is None:
            self._versions = await self.apsis.attribute_versions()
        desired = [p.desired for p in plans if p.desired is not None]
        try:
            await self.apsis.import_profiles(desired, self.import_settings, self._versions)
        except ValueError as exc:  # an attribute APSIS does not know: a configuration problem
            raise FlowError(f"bulk import impossible: {exc}") from exc
        except ImportFailedError as exc:
            log.warning("apsis_import_failed", error=exc.message, rows=len(desired))
            return [Written("rejected", p.contact_id, message=exc.message) for p in plans]
        out = []
        for plan in plans:
            assert plan.desired is not None
            out.append(await self._after_import(plan, plan.desired, by_id[plan.contact_id], now))
        return out

    async def _after_import(self, plan: Plan, desired: ApsisProfile, contact: EfficyContact, now: str
                            ) -> Written:
        have = plan.current.tags if plan.current is not None else frozenset()
        add, remove = desired.tags - have, (have & self.spec.managed_tags) - desired.tags
        if plan.current is None:
            remove = frozenset()  # a profile we never wrote: leave tags we know nothing about alone
        try:
            if add or remove:
                await self.apsis.patch_tags(desired.key, add, remove)
        except AuthError:
            raise
        except FatalApiError as exc:
            return Written("rejected", plan.contact_id, message=exc.message)
        tx = [store.written(self.integration, desired, version_str(contact.modified_at), now)]
        tx += [store.drop_optout(self.integration, r) for r in plan.obsolete_optouts]
        return Written("created" if plan.current is None else "updated", plan.contact_id, tx=tx)
