"""Dry runs: ``run-flow NAME FLOW --dry-run`` and ``full-sync NAME --dry-run``.

A dry run reads both systems exactly as a real run would and records a normal synchronization report
(``counts`` and ``rows``; the run's trigger is ``dry_run``), without any write call, identifier link, cursor,
checkpoint or fingerprint change. It uses its own instance of the integration kind (so it works on an
inactive or paused integration and never disturbs a real run), whose API clients are wrapped in a
:class:`~crmsync.daemon.write_recorder.WriteRecorder` (reads pass, writes are recorded and acknowledged),
and whose store is a scratch copy taken at the start (deleted at the end): the flow's own store writes land
there only. Only the report rows and the run itself are stored. Nothing is counted in
the metrics.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import trio

from crmsync.connectors.errors import ApiError
from crmsync.daemon.integrations.base import FlowError, FullSyncStep, IntegrationKind
from crmsync.daemon.runs import RunContext, TxFn
from crmsync.daemon.runtime import FULL_SYNC_FLOW
from crmsync.daemon.write_recorder import (
    NEW_PROFILE_ID,
    NEW_VAN_ID,
    DryRunRefused,
    WriteLog,
    WriteRecorder,
)
from crmsync.state import Database
from crmsync.state import queries as q

if TYPE_CHECKING:
    from crmsync.daemon.supervisor import Supervisor

log = structlog.get_logger("crmsync.daemon.dry_run")

TRIGGER = "dry_run"
SHOWN = 1000


class DryRunContext(RunContext):
    """A run whose report rows and counts go to the store, and everything else to a scratch copy of it.

    ``db`` (what the flow reads and writes through ``db.tx`` and ``flush(also...)``) is a throw-away copy of
    the store taken when the run starts: within the run, a flow sees the links, fingerprints and cursors it
    would have written (a full sync's tags step sees the profiles it linked), exactly as a real run does;
    the copy is deleted afterwards.
    """

    def __init__(self, *, db: Database, scratch: Database, **kwargs: Any):
        super().__init__(db=db, **kwargs)
        self.store = db
        self.db = scratch

    def record(self, outcome: str, *, crm_id: str | None = None, messaging_id: str | None = None,
               reason: str | None = None, message: str | None = None) -> None:
        if crm_id == str(NEW_VAN_ID):
            crm_id = "(new)"  # a record the run would create
        super().record(outcome, crm_id=crm_id, messaging_id=messaging_id, reason=reason, message=message)

    async def flush(self, *also: TxFn) -> None:
        rows, self._rows = self._rows, []
        counts, now = self.counts.as_dict(), self.now_iso()

        def tx(c: Any) -> None:
            if rows:
                q.add_report_rows(c, self.run_id, rows, now)
            q.update_run_counts(c, self.run_id, counts)

        def scratch(c: Any) -> None:  # links, cursors, fingerprints, history: only into the scratch copy
            for fn in also:
                fn(c)

        await self.store.tx(tx)
        if also:
            await self.db.tx(scratch)


@contextlib.asynccontextmanager
async def scratch_copy(db: Database) -> AsyncIterator[Database]:
    """A throw-away copy of the store (SQLite's online backup; WAL readers see a consistent snapshot)."""
    fd, raw = tempfile.mkstemp(prefix="crmsync-dry-run-", suffix=".db", dir=Path(db.path).parent)
    os.close(fd)

    def copy() -> None:
        source, target = sqlite3.connect(db.path), sqlite3.connect(raw)
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()

    try:
        if db.inline:
            copy()
        else:
            await trio.to_thread.run_sync(copy)
        scratch = await Database.open(raw, inline=db.inline, durable=False)  # deleted afterwards
        try:
            yield scratch
        finally:
            with trio.CancelScope(shield=True):
                await scratch.aclose()
    finally:
        for leftover in (raw, raw + "-wal", raw + "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


@contextlib.asynccontextmanager
async def recording_kind(sup: Supervisor, name: str, writes: WriteLog, *, reuse_open: bool = False
                         ) -> AsyncIterator[IntegrationKind]:
    """An instance of the integration's kind whose API clients are open and wrapped in write recorders.

    By default a fresh instance with its own clients. ``reuse_open`` (explain: one record, often several in a
    row): when the integration runs, a shallow copy of its kind sharing its open clients (and their tokens,
    e.g. APSIS allows only a few token requests a minute); the running kind itself is not touched."""
    from crmsync.daemon.supervisor import CommandError

    live = sup.kinds[name]
    if reuse_open and name in sup.runtimes and live.client_attributes and all(
            getattr(live, attr, None) is not None for attr in live.client_attributes):
        view = copy.copy(live)
        for attr, system in live.client_attributes.items():
            setattr(view, attr, WriteRecorder(system, getattr(live, attr), writes))
        yield view
        return
    kind = sup._build_kind(name, sup.config)
    if not kind.client_attributes:
        raise CommandError("unsupported", f"{kind.kind} does not support dry runs (its clients are not declared)")
    async with kind.open():
        originals = {attr: getattr(kind, attr) for attr in kind.client_attributes}
        try:
            for attr, system in kind.client_attributes.items():
                setattr(kind, attr, WriteRecorder(system, originals[attr], writes))
            yield kind
        finally:
            for attr, client in originals.items():  # the kind closes its real clients
                setattr(kind, attr, client)


async def run_dry(sup: Supervisor, name: str, flow: Any) -> dict[str, Any]:
    from crmsync.daemon.supervisor import CommandError

    live = sup._kind(name)
    if not isinstance(flow, str) or not flow:
        raise CommandError("bad_request", "a flow name is required")
    if flow == FULL_SYNC_FLOW:
        if not live.supports_full_sync:
            raise CommandError("unsupported", f"{live.kind} has no full sync")
    elif flow not in live.flows():
        raise CommandError("unknown_flow", f"{live.kind} has no flow {flow!r}; it has {', '.join(live.flows())}")
    if not live.client_attributes:
        raise CommandError("unsupported", f"{live.kind} does not support dry runs")
    writes = WriteLog()
    run_id = await sup.db.tx(q.start_run, name, flow, TRIGGER, sup.clock.now().isoformat())
    status = "failed"
    error: str | None = None
    run: DryRunContext | None = None
    with structlog.contextvars.bound_contextvars(integration=name, flow=flow, run_id=run_id, dry_run=True):
        log.info("dry_run_started")
        try:
            async with scratch_copy(sup.db) as scratch, recording_kind(sup, name, writes) as kind:
                run = DryRunContext(db=sup.db, scratch=scratch, clock=sup.clock, integration=name, flow=flow,
                                    run_id=run_id)
                await _body(kind, flow)(run)
                await run.flush()
            status = run.final_status()
        except (ApiError, FlowError, DryRunRefused) as exc:
            error = str(exc)
            log.warning("dry_run_failed", error=error)
        except trio.Cancelled:
            status = "cancelled"
            raise
        except Exception as exc:  # a bug: record it, keep the daemon up
            error = f"{type(exc).__name__}: {exc}"
            log.exception("dry_run_crashed")
        finally:
            counts = run.counts.as_dict() if run is not None else {}
            with trio.CancelScope(shield=True):
                await sup.db.tx(q.finish_run, run_id, status, counts, error, sup.clock.now().isoformat())
        log.info("dry_run_finished", status=status, withheld_writes=len(writes.writes))
    report = await sup.report(name, run_id, limit=SHOWN)
    return {**report, "flow": flow, "run_id": run_id, "dry_run": True,
            "intended_writes_total": len(writes.writes),
            "intended_writes": [w.as_dict() for w in writes.writes[:SHOWN]]}


def _body(kind: IntegrationKind, flow: str) -> Callable[[RunContext], Awaitable[None]]:
    async def full_sync(run: RunContext) -> None:
        async def acknowledge(step: FullSyncStep, tx: Sequence[Callable[[Any], Any]]) -> bool:
            await run.flush(*tx)  # into the scratch store; no checkpoint: a dry full sync is not resumable
            return True

        await kind.full_sync_run(None, run, acknowledge)
        await kind.full_sync_finished(run)

    async def one_flow(run: RunContext) -> None:
        await kind.run_flow(flow, run)

    return full_sync if flow == FULL_SYNC_FLOW else one_flow


__all__ = ["NEW_PROFILE_ID", "DryRunContext", "recording_kind", "run_dry"]
