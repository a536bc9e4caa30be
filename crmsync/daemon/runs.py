"""One run of one flow: its counts, its report rows, and how it ends.

A flow receives a :class:`RunContext` and reports every record it touched with :meth:`RunContext.record`.
Rows are buffered and written with :meth:`RunContext.flush`, which can carry the flow's own writes (a cursor,
links, fingerprints) in the same transaction: the report, the links and the cursor advance together or not
at all.

Statuses: ``success`` (nothing rejected), ``partial`` (some records rejected by an API), ``failed`` (the run
stopped on an error), ``cancelled`` (cancelled, or interrupted by a stop).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from crmsync.clock import WallClock
from crmsync.redaction import redact
from crmsync.state import Database
from crmsync.state import queries as q
from crmsync.state.queries import ReportRow

OUTCOMES = ("created", "updated", "unchanged", "rejected", "skipped")
RUN_STATUSES = ("running", "success", "partial", "failed", "cancelled")
FLUSH_EVERY = 500

TxFn = Callable[[sqlite3.Connection], Any]


@dataclass
class Counts:
    fetched: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "fetched": self.fetched,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "skipped": dict(sorted(self.skipped.items())),
        }


class RunContext:
    """Handed to a flow for the duration of one run."""

    def __init__(
        self,
        *,
        db: Database,
        clock: WallClock,
        integration: str,
        flow: str,
        run_id: int,
        on_record: Callable[[str, str, str], None] | None = None,
    ):
        self.db = db
        self.clock = clock
        self.integration = integration
        self.flow = flow
        self.run_id = run_id
        self.counts = Counts()
        self._error: str | None = None
        # set when the run stopped early at a safe point because the daemon is stopping
        self.interrupted = False
        # flows poll this between batches; the runtime points it at its graceful-stop flag
        self.should_stop: Callable[[], bool] = lambda: False
        self._rows: list[ReportRow] = []
        self._on_record = on_record
        self.log = structlog.get_logger("crmsync.run").bind(integration=integration, flow=flow, run_id=run_id)

    @property
    def error(self) -> str | None:
        return self._error

    @error.setter
    def error(self, text: str | None) -> None:
        # kept in the store and shown by runs/report: never with a secret (crmsync.redaction)
        self._error = redact(text, cut=True) if text is not None else None

    def now_iso(self) -> str:
        return self.clock.now().isoformat()

    # -- counting ----------------------------------------------------------------------------------------

    def fetched(self, n: int = 1) -> None:
        self.counts.fetched += n

    def record(
        self,
        outcome: str,
        *,
        crm_id: str | None = None,
        messaging_id: str | None = None,
        reason: str | None = None,
        message: str | None = None,
    ) -> None:
        """One record's outcome. ``skipped`` needs a ``reason``; ``rejected`` should carry the API's message."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        if outcome == "skipped":
            if not reason:
                raise ValueError("a skipped record needs a reason")
            self.counts.skipped[reason] += 1
        else:
            setattr(self.counts, outcome, getattr(self.counts, outcome) + 1)
        self._rows.append(ReportRow(outcome, crm_id, messaging_id, reason,
                                    redact(message, cut=True) if message is not None else None))
        if self._on_record:
            self._on_record(self.integration, self.flow, outcome)

    def skip(self, reason: str, *, crm_id: str | None = None, messaging_id: str | None = None,
             message: str | None = None) -> None:
        self.record("skipped", crm_id=crm_id, messaging_id=messaging_id, reason=reason, message=message)

    @property
    def pending_rows(self) -> int:
        return len(self._rows)

    # -- persistence -------------------------------------------------------------------------------------

    async def flush(self, *also: TxFn) -> None:
        """Write buffered report rows and counts, plus ``also`` (the flow's own writes), in one transaction."""
        rows, self._rows = self._rows, []
        counts = self.counts.as_dict()
        now = self.now_iso()

        def tx(c: sqlite3.Connection) -> None:
            if rows:
                q.add_report_rows(c, self.run_id, rows, now)
            q.update_run_counts(c, self.run_id, counts)
            for fn in also:
                fn(c)

        try:
            await self.db.tx(tx)
        except BaseException:
            self._rows = rows + self._rows  # not written: keep them for the final flush
            raise

    async def maybe_flush(self) -> None:
        if len(self._rows) >= FLUSH_EVERY:
            await self.flush()

    def final_status(self) -> str:
        if self.interrupted:
            return "cancelled"
        if self.error is not None:
            return "failed"
        return "partial" if self.counts.rejected else "success"
