"""``crmsync explain NAME RECORD``: why this person is (not) synced, rule by rule, without writing anything.

The record is found by either system's id, a phone number or an email address (each kind says how). Every
rule of the integration is evaluated against the live records of both systems and shown with the values it
looked at and its verdict. Then the kind's own per-record sync code runs once for that record, exactly as
the next real run would, against write-recording clients (:mod:`crmsync.daemon.write_recorder`) and a store
whose transactions all roll back: its outcome is the verdict, and its withheld calls are "what a sync would
write". Last, the record's latest report rows. Nothing is written anywhere, not even a run.

Each kind provides ``explain_record(kind, record, context)`` in its package's ``explain`` module; see
:data:`EXPLAINERS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from crmsync.connectors.errors import ApiError
from crmsync.daemon.integrations.base import IntegrationKind
from crmsync.daemon.runs import RunContext, TxFn
from crmsync.daemon.write_recorder import NEW_VAN_ID, DryRunRefused, ReadOnlyDatabase, WriteLog
from crmsync.state import Database

if TYPE_CHECKING:
    from crmsync.daemon.supervisor import Supervisor

log = structlog.get_logger("crmsync.daemon.explain")

#: kind -> module with ``async def explain_record(kind, record, ctx) -> dict``
EXPLAINERS = {
    "everyaction_mobilecommons": "crmsync.daemon.integrations.everyaction_mobilecommons.explain",
    "efficy_apsis": "crmsync.daemon.integrations.efficy_apsis.explain",
}
REPORT_ROWS = 10


class RecordNotFound(Exception):
    """Neither system has a record matching what was asked."""


class ExplainRun(RunContext):
    """A run that stores nothing: report rows stay in memory, the store is read through rolled-back
    transactions, the flow's own writes (links, cursors, fingerprints...) are dropped."""

    def __init__(self, *, db: Database, **kwargs: Any):
        super().__init__(db=db, run_id=0, **kwargs)
        self.db = ReadOnlyDatabase(db)  # type: ignore[assignment]
        self.rows: list[dict[str, Any]] = []

    def record(self, outcome: str, *, crm_id: str | None = None, messaging_id: str | None = None,
               reason: str | None = None, message: str | None = None) -> None:
        if crm_id == str(NEW_VAN_ID):
            crm_id = "(new)"
        super().record(outcome, crm_id=crm_id, messaging_id=messaging_id, reason=reason, message=message)
        self.rows.append({"crm_id": crm_id, "messaging_id": messaging_id, "outcome": outcome, "reason": reason,
                          "message": message})

    async def flush(self, *also: TxFn) -> None:
        self._rows = []


@dataclass
class ExplainContext:
    """What a kind's explainer gets: the store (read-only), the clock, and runs that write nothing."""

    integration: str
    db: ReadOnlyDatabase
    store: Database
    clock: Any
    writes: WriteLog
    sections: list[dict[str, Any]] = field(default_factory=list)

    def new_run(self, flow: str) -> ExplainRun:
        return ExplainRun(db=self.store, clock=self.clock, integration=self.integration, flow=flow)

    async def verdict(self, flow: str, sync: Callable[[ExplainRun], Awaitable[Any]]) -> dict[str, Any]:
        """Run the flow's per-record code once; its report row is the verdict, its withheld calls the writes."""
        run = self.new_run(flow)
        start = len(self.writes.writes)
        error = None
        try:
            await sync(run)
        except (ApiError, DryRunRefused) as exc:
            error = str(exc)
        rows = run.rows or ([{"outcome": "rejected", "message": error}] if error else [])
        return {"rows": rows, "outcome": rows[-1]["outcome"] if rows else "not_synced",
                "reason": rows[-1].get("reason") if rows else None,
                "message": rows[-1].get("message") if rows else None, "error": error,
                "would_write": [w.as_dict() for w in self.writes.writes[start:]]}


def rule(name: str, looked_at: dict[str, Any], verdict: str, note: str | None = None) -> dict[str, Any]:
    """One line of an explanation: a rule, the values it looked at, and its verdict (pass, fail, or a value)."""
    return {"rule": name, "looked_at": looked_at, "verdict": verdict, "note": note}


async def explain(sup: Supervisor, name: str, record: Any) -> dict[str, Any]:
    from crmsync.daemon.dry_run import recording_kind
    from crmsync.daemon.supervisor import CommandError

    live: IntegrationKind = sup._kind(name)
    if not isinstance(record, str | int) or not str(record).strip():
        raise CommandError("bad_request", "record: an id in either system, a phone number or an email address")
    module = EXPLAINERS.get(live.kind)
    if module is None or not live.client_attributes:
        raise CommandError("unsupported", f"{live.kind} cannot explain records")
    explainer = importlib.import_module(module)
    writes = WriteLog()
    ctx = ExplainContext(name, ReadOnlyDatabase(sup.db), sup.db, sup.clock, writes)
    async with recording_kind(sup, name, writes, reuse_open=True) as kind:
        try:
            result: dict[str, Any] = await explainer.explain_record(kind, str(record).strip(), ctx)
        except RecordNotFound as exc:
            raise CommandError("not_found", str(exc)) from None
    ids = [result.get("crm_id"), result.get("messaging_id")]
    result["report_rows"] = await sup.db.tx(_report_rows, name, ids[0], ids[1], REPORT_ROWS)
    result.update(integration=name, kind=live.kind, record=str(record))
    log.info("record_explained", record_ids=ids)
    return result


async def resolve_ids(sup: Supervisor, name: str, record: str) -> tuple[str | None, str | None]:
    """A person's ids in both systems, found in the live systems the way ``explain`` finds a record."""
    from crmsync.daemon.dry_run import recording_kind
    from crmsync.daemon.supervisor import CommandError

    live = sup._kind(name)
    module = EXPLAINERS.get(live.kind)
    if module is None or not live.client_attributes:
        raise CommandError("unsupported", f"{live.kind} cannot look records up")
    ctx = ExplainContext(name, ReadOnlyDatabase(sup.db), sup.db, sup.clock, WriteLog())
    async with recording_kind(sup, name, ctx.writes, reuse_open=True) as kind:
        try:
            ids: tuple[str | None, str | None] = await importlib.import_module(module).resolve_ids(
                kind, record, ctx)
        except RecordNotFound as exc:
            raise CommandError("not_found", str(exc)) from None
    return ids


def _report_rows(c: Any, integration: str, crm_id: str | None, messaging_id: str | None, limit: int
                 ) -> list[dict[str, Any]]:
    """The record's newest report rows (real runs and dry runs), newest first."""
    if not crm_id and not messaging_id:
        return []
    rows = c.execute(
        "SELECT r.run_id, runs.flow, runs.trigger, r.seq, r.crm_id, r.messaging_id, r.outcome, r.reason, "
        "r.message, r.at FROM report_rows r JOIN runs ON runs.id = r.run_id WHERE runs.integration = ? "
        "AND (r.crm_id = ? OR r.messaging_id = ?) ORDER BY r.run_id DESC, r.seq DESC LIMIT ?",
        (integration, crm_id or "\0", messaging_id or "\0", limit)).fetchall()
    return [dict(r) for r in rows]
