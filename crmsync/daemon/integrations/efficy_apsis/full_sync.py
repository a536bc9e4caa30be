"""The ``full_sync`` flow: every Efficy contact, as a pipeline of stages joined by bounded memory channels.

    read (Efficy pages, ahead) -> plan (rules, pure) -> write (imports / upserts) -> acknowledge (in order)

* **read** pages through Efficy by key (``K_CONTACT > last``) up to ``read_ahead`` pages ahead of the plan
  stage, so Efficy reads overlap APSIS uploads and processing; the channel's bound is the back-pressure.
  With ``read_sessions`` > 1, key ranges are read on several Efficy sessions at once and handed on in key
  order (:mod:`crmsync.connectors.efficy.ranges`), so the positions mean what they mean on one session.
  What the bulk path needs besides the pages (consent reports, query members, attribute versions) starts
  loading at t=0, beside the first page.
* **plan** calls the pure rules for every contact. On the bulk path (``import_threshold``) it first reads
  APSIS's opt-outs from the consent report (one streamed report per channel, kept in the store, looked up
  page by page) instead of a consent read per profile, resolves opt-ins against them with the same function
  the per-profile path uses (``writer.check_apsis_optouts``), and appends each write to streamed import files
  (:mod:`.bulk`): a batch of up to ``import_rows`` contacts (and never more than ``import_file_bytes`` per
  file) is one opt-in file, one re-subscription file (``resubscribe_if_opted_out``) and one opt-out file.
  Query tags travel in the files too (each query read once). What an import cannot express is sent per
  profile after the import (``per_profile_writes``, logged at the end).
* **write** runs a batch's files at once under the account's import limits (3 unfinished, 10 started a
  minute: the client's :class:`ImportLimiter`), then any per-profile follow-ups. On the per-profile path it
  upserts ``concurrency`` profiles at a time.
* **acknowledge** alone moves the checkpoint: batch after batch in Efficy order, each only once all its
  imports and writes are acknowledged, with the batch's fingerprints, links and report rows in the same
  transaction as the checkpoint. A crash or a cancel resumes after the last acknowledged batch; the
  fingerprints make a redone batch cost no write.

Memory is bounded by the settings (pages ahead, batches in flight, the import files' spool size), not by the
number of contacts: import rows and their acknowledgement data go to spooled temporary files.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple, cast

import structlog
import trio

from crmsync.connectors.apsis import ApsisClient
from crmsync.connectors.apsis.imports import ImportLayout
from crmsync.connectors.apsis.problems import ConsentReportExpiredError, ImportFailedError
from crmsync.connectors.apsis.records import (
    ATTR_CRMID,
    ATTR_EMAIL,
    CHANNEL_EMAIL,
    CHANNEL_SMS,
    ImportSettings,
)
from crmsync.connectors.efficy import EfficyClient, EfficyContact
from crmsync.connectors.efficy.paging import ContactPage, encode_position
from crmsync.connectors.efficy.ranges import read_pages
from crmsync.connectors.errors import AuthError, FatalApiError
from crmsync.daemon.integrations.base import FlowError, FullSyncStep
from crmsync.daemon.integrations.efficy_apsis import store
from crmsync.daemon.integrations.efficy_apsis.bulk import (
    FILE_NAMES,
    ImportBatch,
    LedgerEntry,
    ReportedConsents,
    addressed,
    import_row,
    plan_outcome,
    with_query_membership,
)
from crmsync.daemon.integrations.efficy_apsis.consent_backflow import report_requests
from crmsync.daemon.integrations.efficy_apsis.full_sync_settings import FullSyncSettings
from crmsync.daemon.integrations.efficy_apsis.rules import (
    OPT_IN,
    OPT_OUT,
    Plan,
    SyncSpec,
    fingerprint,
    plan_contact,
    version_str,
)
from crmsync.daemon.integrations.efficy_apsis.writer import Written, check_apsis_optouts, settled, write_one
from crmsync.daemon.runs import RunContext

log = structlog.get_logger("crmsync.daemon.integrations.efficy_apsis.full_sync")

MODE_KEY = "full_sync_mode"
REPORT_ATTEMPTS = 3
REPORT_CHUNK = 5000  # reported opt-outs stored per transaction
ACK_CHUNK = 5000  # acknowledged rows committed per transaction
#: contacts whose settled store writes and report rows the bulk plan stage holds before flushing them (they
#: wait for no import: flushing them early keeps peak memory independent of ``import_rows``)
SETTLED_CHUNK = 5000

Acknowledge = Callable[[FullSyncStep, Sequence[store.TxFn]], Awaitable[bool]]


class PageRead(NamedTuple):
    """A page of contacts and when its read began (what a link sighting is dated by)."""

    page: ContactPage
    read_at: datetime


@dataclass
class _PageJob:
    """Per-profile path: one page's writes, acknowledged as a unit."""

    contacts: int
    next_position: str | None
    total: int | None
    results: list[Written] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)


@dataclass
class _BulkInputs:
    """The bulk path's inputs that do not come from Efficy's pages, loaded from the start of the run."""

    versions: dict[str, str] = field(default_factory=dict)
    error: BaseException | None = None
    loaded: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class FullSync:
    """Holds what a full sync needs across its stages (clients, settings, the plan's counters)."""

    def __init__(self, *, efficy: EfficyClient, apsis: ApsisClient, spec: SyncSpec, integration: str,
                 settings: FullSyncSettings, sms_address_attribute: str, queries: dict[str, int] | None = None):
        self.efficy = efficy
        self.apsis = apsis
        self.spec = spec
        self.integration = integration
        self.settings = settings
        self.queries = dict(queries or {})  # query tag -> K_QUERY
        self.address_attributes = {CHANNEL_EMAIL: ATTR_EMAIL, CHANNEL_SMS: sms_address_attribute}
        self.import_settings = ImportSettings(
            keyspace=apsis.keyspace, address_attributes=self.address_attributes,
            resubscribe_if_opted_out=False, clear_existing_attributes=settings.clear_existing_attributes,
            max_file_bytes=settings.import_file_bytes)
        self.pages_read = 0
        self.per_profile_writes = 0  # contacts with per-profile calls after their import (bulk path)
        self._open_batches: set[ImportBatch] = set()
        self._bulk_inputs = _BulkInputs()
        self._page_query_tags: dict[str, set[str]] = {}

    # -- the pipeline ------------------------------------------------------------------------------------

    async def run(self, position: str | None, run: RunContext, acknowledge: Acknowledge) -> bool:
        """Sync from ``position`` to the end; True when the end was acknowledged, False when
        ``acknowledge`` asked to stop (the daemon is stopping) after a batch."""
        first: PageRead | None = None
        pages_send, pages_recv = trio.open_memory_channel[PageRead](self.settings.read_ahead)
        acks_send, acks_recv = trio.open_memory_channel[Any](self.settings.batches_in_flight)
        try:
            async with trio.open_nursery() as nursery:
                # What the bulk path needs besides Efficy's pages (the consent reports, which APSIS prepares
                # one a second; the query members; the attribute versions) starts at t=0, beside the first
                # page, and is dropped if that page says per-profile. The plan stage waits for all of it.
                may_import = bool(self.settings.import_threshold) if position is None else \
                    await self._mode(position, None, run)
                self._bulk_inputs = _BulkInputs()
                if may_import:
                    nursery.start_soon(self._load_bulk_inputs, run, self._bulk_inputs)
                if position is None:
                    first = await self._read_page(None, run)
                    use_import = await self._mode(position, first.page, run)
                else:
                    use_import = may_import
                if not use_import:
                    self._bulk_inputs.scope.cancel()
                nursery.start_soon(self._read, position, first, pages_send, run)
                if use_import:
                    nursery.start_soon(self._plan_bulk, pages_recv, acks_send, run, nursery)
                else:
                    nursery.start_soon(self._plan_upsert, pages_recv, acks_send, run, nursery)
                finished = await self._acknowledge(acks_recv, run, acknowledge)
                nursery.cancel_scope.cancel()  # stopping: whatever is in flight is redone on resume
        except BaseExceptionGroup as group:
            raise _first_cause(group) from None
        else:
            log.info("full_sync_pipeline_done", finished=finished, pages=self.pages_read,
                     per_profile_writes=self.per_profile_writes)
        finally:
            for batch in self._open_batches:  # stopped or failed with batches in flight: free their files
                batch.close()
            self._open_batches.clear()
        return finished

    async def _read_page(self, position: str | None, run: RunContext) -> PageRead:
        read_at = run.clock.now()  # the page is read at or after this moment (link sightings, issue 7 item 7)
        page = await self.efficy.list_contacts(position, page_size=self.settings.page_size,
                                               include_profiles=True)
        self.pages_read += 1
        return PageRead(page, read_at)

    async def _read(self, position: str | None, first: PageRead | None,
                    send: trio.MemorySendChannel[PageRead], run: RunContext) -> None:
        """Read stage: pages in key order, as far ahead as the channel allows, on ``read_sessions`` Efficy
        sessions (key ranges read in parallel, delivered in key order: :mod:`crmsync.connectors.efficy.ranges`)."""
        async with send:
            if first is not None:
                await send.send(first)
                position = first.page.next_position
                if position is None:
                    return

            async def deliver(page: ContactPage, read_at: datetime) -> None:
                self.pages_read += 1
                await send.send(PageRead(page, read_at))

            sessions = [self.efficy] + [self.efficy.new_session() for _ in range(self.settings.read_sessions - 1)]
            await read_pages(sessions, position, deliver, page_size=self.settings.page_size, now=run.clock.now)

    async def _mode(self, position: str | None, first: ContactPage | None, run: RunContext) -> bool:
        """Per-profile or import, decided on the first page from the total and kept for the whole sync
        (also across a resume)."""
        if position is None:
            total = first.total if first is not None else None
            threshold = self.settings.import_threshold
            use = bool(threshold) and total is not None and total >= threshold
            await run.flush(store.kv_set(self.integration, MODE_KEY, "import" if use else "upsert"))
            log.info("full_sync_mode", mode="import" if use else "upsert", total=total)
            return use
        return (await run.db.tx(store.kv_get, self.integration, MODE_KEY)) == "import"

    async def _plan_contacts(self, read: PageRead, run: RunContext, *, reported: bool
                             ) -> tuple[list[tuple[Plan, EfficyContact]], list[store.TxFn],
                                        dict[str, list[Any]]]:
        """The rules over one page: writes to make, the store writes of settled contacts (their report rows
        recorded) and of every contact's link sightings (facts of the read, whatever is written next), and
        the page's reported APSIS opt-outs."""
        page = read.page
        run.fetched(len(page.records))
        ids = [c.contact_id for c in page.records]
        rules = self.spec.consents

        def load(c: Any) -> tuple[dict[str, store.ContactState], dict[str, list[Any]], dict[str, set[str]]]:
            states = store.load_states(c, self.integration, ids, rules)
            if not reported:
                return states, {}, {}
            return (states, store.reported_optouts(c, self.integration, ids),
                    store.query_tags_of(c, self.integration, ids))

        states, optouts, self._page_query_tags = await run.db.tx(load)
        now = run.now_iso()
        writes: list[tuple[Plan, EfficyContact]] = []
        plans: list[Plan] = []
        settled_tx: list[store.TxFn] = []
        for contact in page.records:
            st = states[contact.contact_id]
            plan = plan_contact(contact, self.spec, known=st, read_at=read.read_at)
            plans.append(plan)
            if plan.action == "write":
                writes.append((plan, contact))
            else:
                w = settled(plan, contact, self.integration, now)
                w.report(run)
                settled_tx.extend(w.tx)
        settled_tx.insert(0, store.page_sightings(self.integration, plans))  # the page's link sightings
        return writes, settled_tx, optouts

    # -- per-profile path ----------------------------------------------------------------------------------

    async def _plan_upsert(self, pages: trio.MemoryReceiveChannel[PageRead], acks: trio.MemorySendChannel[Any],
                           run: RunContext, nursery: trio.Nursery) -> None:
        gate = trio.Semaphore(self.settings.concurrency)  # shared by every page in flight
        async with acks, pages:
            async for read in pages:
                page = read.page
                writes, settled_tx, _ = await self._plan_contacts(read, run, reported=False)
                if settled_tx:
                    await run.flush(*settled_tx)
                job = _PageJob(len(page.records), page.next_position, page.total)
                nursery.start_soon(self._write_page, job, writes, gate, run)
                await acks.send(job)

    async def _write_page(self, job: _PageJob, writes: list[tuple[Plan, EfficyContact]], gate: trio.Semaphore,
                          run: RunContext) -> None:
        results: list[Written | None] = [None] * len(writes)
        now = run.now_iso()

        async def one(i: int, plan: Plan, contact: EfficyContact) -> None:
            async with gate:
                results[i] = await write_one(self.apsis, plan, contact, self.spec, self.integration, now)

        async with trio.open_nursery() as n:
            for i, (plan, contact) in enumerate(writes):
                n.start_soon(one, i, plan, contact)
        job.results = [r for r in results if r is not None]
        job.done.set()

    # -- bulk path -----------------------------------------------------------------------------------------

    async def _load_bulk_inputs(self, run: RunContext, inputs: _BulkInputs) -> None:
        """Held until the plan stage asks (:meth:`_await_bulk_inputs`), so that a failure here cannot fail a
        sync the first page turns to the per-profile path."""
        with inputs.scope:
            try:
                async with trio.open_nursery() as loading:
                    loading.start_soon(self._load_report, run)
                    loading.start_soon(self._load_query_members, run)
                    inputs.versions = await self.apsis.attribute_versions()
            except BaseExceptionGroup as group:
                cause = _first_cause(group)
                if isinstance(cause, trio.Cancelled):
                    raise
                inputs.error = cause
            except Exception as exc:
                inputs.error = exc
            inputs.loaded.set()

    async def _await_bulk_inputs(self) -> dict[str, str]:
        """The attribute versions, once APSIS's opt-outs and the query members are all in the store."""
        await self._bulk_inputs.loaded.wait()
        if self._bulk_inputs.error is not None:
            raise self._bulk_inputs.error
        return self._bulk_inputs.versions

    async def _load_report(self, run: RunContext) -> None:
        """APSIS's opt-outs on the mapped slots, one streamed consent report per channel, into the store."""
        await run.db.tx(store.clear_reported_optouts(self.integration))
        mapped = frozenset(rule.slot for rule in self.spec.consents)

        async def one(channel: str, topics: Sequence[str]) -> None:
            for attempt in range(1, REPORT_ATTEMPTS + 1):
                try:
                    count = await self._read_report(run, channel, topics, mapped)
                    log.info("full_sync_optouts_read", channel=channel, optouts=count)
                    return
                except ConsentReportExpiredError:
                    if attempt == REPORT_ATTEMPTS:
                        raise
                    log.warning("apsis_consent_report_expired", channel=channel, attempt=attempt)

        async with trio.open_nursery() as nursery:  # the channels' reports are prepared at the same time
            for channel, topics in report_requests(self.spec.consents):
                nursery.start_soon(one, channel, topics)

    async def _load_query_members(self, run: RunContext) -> None:
        """The tag queries' members (one Efficy call per query), kept in the store for the plan stage."""
        for tag, query_id in sorted(self.queries.items()):
            # the ids packed, straight from the streamed answer into one transaction: memory stays flat
            members = await self.efficy.query_members(query_id)
            count = await run.db.tx(store.replace_query_members(self.integration, tag, members))
            log.info("full_sync_query_members_read", tag=tag, members=count)

    async def _read_report(self, run: RunContext, channel: str, topics: Sequence[str], mapped: frozenset[Any]
                           ) -> int:
        chunk: list[tuple[str, str, str, str | None]] = []
        count = 0
        async with aclosing(self.apsis.consent_report(topics, channel)) as report:
            async for row in report:
                if row.type != OPT_OUT or row.key not in mapped:
                    continue
                chunk.append((row.profile_key, row.topic, row.channel, row.modified_at))
                count += 1
                if len(chunk) >= REPORT_CHUNK:
                    await run.db.tx(store.put_reported_optouts(self.integration, chunk))
                    chunk = []
        if chunk:
            await run.db.tx(store.put_reported_optouts(self.integration, chunk))
        return count

    def _layouts(self) -> list[ImportLayout]:
        attributes = tuple(sorted({a for _, a in self.spec.attributes} | {ATTR_CRMID, ATTR_EMAIL}))
        slots_in = tuple(sorted((r.slot for r in self.spec.consents), key=lambda ck: (ck.topic, ck.channel)))
        addresses = tuple(sorted({self.address_attributes[ck.channel] for ck in slots_in}))
        tags = tuple(sorted(self.spec.managed_tags)) if self.settings.tags.enabled else ()
        common = {"settings": self.import_settings, "tag_settings": self.settings.tags}
        return [ImportLayout(OPT_IN, False, attributes, slots_in, tags, **common),  # type: ignore[arg-type]
                ImportLayout(OPT_IN, True, addresses, slots_in, **common),  # type: ignore[arg-type]
                ImportLayout(OPT_OUT, False, addresses, slots_in, **common)]  # type: ignore[arg-type]

    async def _plan_bulk(self, pages: trio.MemoryReceiveChannel[PageRead], acks: trio.MemorySendChannel[Any],
                         run: RunContext, nursery: trio.Nursery) -> None:
        async with acks, pages:
            versions = await self._await_bulk_inputs()  # opt-outs complete before any plan depending on them
            layouts = self._layouts()
            for layout in layouts:  # a configuration problem shows before any import starts
                try:
                    layout.request(versions)
                except ValueError as exc:
                    raise FlowError(f"bulk import impossible: {exc}") from exc
            s = self.settings
            seq = 0

            def new_batch() -> ImportBatch:
                nonlocal seq
                seq += 1
                batch = ImportBatch(seq, layouts, max_bytes=s.import_file_bytes, max_rows=s.import_rows,
                                    spool_bytes=s.spool_bytes)
                self._open_batches.add(batch)
                return batch

            batch = new_batch()
            settled_tx: list[store.TxFn] = []
            settled_contacts = 0  # contacts whose settled writes (sightings, unchanged, skipped) are pending
            total: int | None = None  # Efficy's count on the first page: where the tail batches start
            before = tapered = 0  # contacts in closed batches; closed batches cut short for the tail

            async def close(batch: ImportBatch) -> None:
                nonlocal settled_tx, before, tapered
                before += batch.contacts
                tapered += batch.max_rows < s.import_rows
                if settled_tx:
                    await run.flush(*settled_tx)
                    settled_tx = []
                nursery.start_soon(self._write_batch, batch, versions, run)
                await acks.send(batch)

            async for read in pages:
                page = read.page
                writes, page_settled, reported = await self._plan_contacts(read, run, reported=True)
                settled_tx.extend(page_settled)
                settled_contacts += len(page.records)
                if settled_contacts >= SETTLED_CHUNK:  # memory: a batch's settled writes are not held to its end
                    await run.flush(*settled_tx)
                    settled_tx, settled_contacts = [], 0
                source = cast(ApsisClient, ReportedConsents(reported))
                by_id = {plan.contact_id: (plan, contact) for plan, contact in writes}
                now = run.now_iso()
                for contact in page.records:
                    cid = contact.contact_id
                    if cid in by_id:
                        plan, _ = by_id[cid]
                        assert plan.desired is not None
                        sent, optouts_per_profile = addressed(plan.desired, plan.current,
                                                              self.address_attributes)
                        if plan.current is not None and not plan.obsolete_optouts and \
                                fingerprint(sent) == fingerprint(plan.current):
                            w = settled(replace(plan, action="unchanged", desired=sent), contact,
                                        self.integration, now)
                            w.report(run)
                            settled_tx.extend(w.tx)
                        else:
                            if sent is not plan.desired:
                                plan = replace(plan, desired=sent)
                            if cid in reported:
                                desired, seen, records = await check_apsis_optouts(source, plan, contact,
                                                                                   self.spec)
                            else:  # what the check returns when APSIS lists no opt-out for the profile
                                desired, seen, records = sent, plan.current, []
                            if self.queries:
                                desired = with_query_membership(desired, self.spec.query_tags, frozenset(
                                    self._page_query_tags.get(cid, ())))
                            row = import_row(desired, plan.current, seen, reported.get(cid, ()),
                                             managed_tags=self.spec.managed_tags, tags_in_import=s.tags.enabled,
                                             clear_in_import=s.clear_existing_attributes,
                                             per_profile_optouts=optouts_per_profile)
                            entry = LedgerEntry(cid, plan_outcome(plan), (), fingerprint(desired),
                                                version_str(contact.modified_at), tuple(records),
                                                plan.obsolete_optouts, row.post_add_tags, row.post_remove_tags,
                                                row.post_clear, row.post_optouts)
                            if not batch.add(cid, desired, row, entry):
                                await close(batch)
                                batch = new_batch()
                                if not batch.add(cid, desired, row, entry):
                                    raise FlowError(f"contact {cid} does not fit in an empty import file")
                    batch.contacts += 1
                    batch.end_key = int(cid) if cid.isdigit() else batch.end_key
                if page.total is not None:
                    batch.total = total = page.total
                batch.max_rows = tail_batch_rows(s.import_rows, s.import_tail_batches, total, before, tapered)
                if page.next_position is None:
                    batch.exhausted = True
                if batch.exhausted or batch.rows == 0 or not batch.fits():
                    await close(batch)
                    if batch.exhausted:
                        return
                    batch = new_batch()

    async def _write_batch(self, batch: ImportBatch, versions: dict[str, str], run: RunContext) -> None:
        """Write stage of the bulk path: the batch's files at once (the client keeps the account's import
        limits), then the per-profile follow-ups of the rows whose files completed."""
        try:
            async with trio.open_nursery() as n:
                for index, writer in enumerate(batch.writers):
                    if writer is not None and writer.rows:
                        n.start_soon(self._import_file, batch, index, versions)
            post = [e for e in batch.entries()
                    if e.has_post and not any(i in batch.file_errors for i in e.files)] if batch.posts else []
            if post:
                self.per_profile_writes += len(post)
                gate = trio.Semaphore(self.settings.concurrency)

                async def one(entry: LedgerEntry) -> None:
                    async with gate:
                        try:
                            for ck in entry.post_optouts:  # an opt-out always travels, address or not
                                await self.apsis.set_consent(entry.contact_id, ck.topic, ck.channel, OPT_OUT)
                            if entry.post_clear:
                                await self.apsis.patch_attributes(entry.contact_id,
                                                                  dict.fromkeys(entry.post_clear))
                            if entry.post_add_tags or entry.post_remove_tags:
                                await self.apsis.patch_tags(entry.contact_id, entry.post_add_tags,
                                                            entry.post_remove_tags)
                        except AuthError:
                            raise
                        except FatalApiError as exc:
                            batch.post_errors[entry.contact_id] = exc.message

                async with trio.open_nursery() as n:
                    for entry in post:
                        n.start_soon(one, entry)
        finally:
            batch.written.set()

    async def _import_file(self, batch: ImportBatch, index: int, versions: dict[str, str]) -> None:
        writer = batch.writers[index]
        assert writer is not None
        try:
            result = await self.apsis.run_import_stream(writer.layout.request(versions), writer.file(),
                                                        rows=writer.rows)
            log.info("full_sync_import_done", batch=batch.seq, file=FILE_NAMES[index], rows=writer.rows,
                     bytes=writer.bytes, import_id=result.import_id)
        except AuthError:
            raise
        except (ImportFailedError, FatalApiError) as exc:
            log.warning("apsis_import_failed", batch=batch.seq, file=FILE_NAMES[index], error=exc.message,
                        rows=writer.rows)
            batch.file_errors[index] = exc.message

    # -- acknowledge stage ---------------------------------------------------------------------------------

    async def _acknowledge(self, acks: trio.MemoryReceiveChannel[Any], run: RunContext,
                           acknowledge: Acknowledge) -> bool:
        """The only stage that moves the checkpoint: units in order, each once all its writes are in."""
        async with acks:
            async for unit in acks:
                if isinstance(unit, _PageJob):
                    await unit.done.wait()
                    tx: list[store.TxFn] = []
                    for w in unit.results:
                        w.report(run)
                        tx.extend(w.tx)
                    step = FullSyncStep(unit.next_position, unit.contacts, unit.total)
                else:
                    step, tx = await self._ack_batch(unit, run)
                go_on = await acknowledge(step, tx)
                if step.next_position is None:
                    return True
                if not go_on:
                    return False
        await trio.lowlevel.checkpoint()  # a cancelled pipeline closes the channel early: not a failure
        raise FlowError("the full sync's plan stage ended before the last page")

    async def _ack_batch(self, batch: ImportBatch, run: RunContext) -> tuple[FullSyncStep, list[store.TxFn]]:
        await batch.written.wait()
        for event in batch.waits:
            await event.wait()
        now = run.now_iso()
        fps: list[tuple[str, str, str | None]] = []
        tx: list[store.TxFn] = []
        try:
            for entry in batch.entries():
                cid = entry.contact_id
                failed = [batch.file_errors[i] for i in entry.files if i in batch.file_errors]
                message = failed[0] if failed else batch.post_errors.get(cid)
                if message is not None:
                    run.record("rejected", crm_id=cid, messaging_id=cid, message=message)
                    continue
                note = None
                if entry.has_post:  # what the import could not carry, counted in the report
                    note = "per-profile after import: " + ", ".join(
                        part for part, on in (("tags", entry.post_add_tags or entry.post_remove_tags),
                                              ("attributes cleared", entry.post_clear),
                                              ("opt-out without address", entry.post_optouts)) if on)
                run.record(entry.outcome, crm_id=cid, messaging_id=cid, message=note)
                fps.append((cid, entry.fingerprint, entry.version))
                tx += [store.put_optout(self.integration, r) for r in entry.put_optouts]
                tx += [store.drop_optout(self.integration, r) for r in entry.drop_optouts]
                if len(fps) >= ACK_CHUNK:  # acknowledged by APSIS: safe to record before the checkpoint
                    await run.flush(store.written_many(self.integration, fps, now), *tx)
                    fps, tx = [], []
        finally:
            batch.close()
            self._open_batches.discard(batch)
        if fps:
            tx.insert(0, store.written_many(self.integration, fps, now))
        position = None if batch.exhausted else (encode_position(batch.end_key) if batch.end_key is not None
                                                 else None)
        if position is None and not batch.exhausted:
            raise FlowError("an import batch without a position")
        return FullSyncStep(position, batch.contacts, batch.total), tx


def tail_batch_rows(import_rows: int, tail_batches: int, total: int | None, before: int, tapered: int) -> int:
    """Rows of the batch after ``before`` contacts. ``import_rows``, except once what is left of ``total``
    fits in one batch: then it is cut in ``tail_batches`` batches, each half of what is left (the last takes
    the rest), so that the last batch, whose upload, processing and acknowledgement nothing else overlaps,
    is small. A few imports more per sync (two files a batch), far inside 10 imports a minute."""
    if total is None or tail_batches <= 1:
        return import_rows
    left = total - before
    if left > import_rows or tapered >= tail_batches - 1:
        return import_rows
    return max(1, left // 2)


def _first_cause(group: BaseExceptionGroup) -> BaseException:
    """The exception a stage failure means: the one non-cancellation among the stages' exceptions (a
    failing stage cancels the others), else the cancellation itself, so callers see ``FlowError``,
    ``ApiError`` or ``Cancelled`` as from a plain call."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    causes = [e for e in leaves if not isinstance(e, trio.Cancelled)]
    if len(causes) == 1:
        return causes[0]
    if not causes and leaves:
        return leaves[0]
    return group


__all__ = ["Acknowledge", "FullSync", "FullSyncSettings"]
