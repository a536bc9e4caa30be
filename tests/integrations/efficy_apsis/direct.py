"""The efficy_apsis flows driven directly, without the supervisor's timers: each call is one run.

Regression tests that move a simulated wall clock across months, and the stateful test, need runs to happen
exactly when the test says (no 15-minute backflow timer firing during a jump of three months). The flows,
the store, the simulators and the HTTP clients are the real ones; only the scheduling is the test's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from crmsync.clock import WallClock
from crmsync.connectors.apsis import ApsisSimulator
from crmsync.connectors.efficy.simulator import EfficySimulator
from crmsync.daemon.config import Config
from crmsync.daemon.integrations.base import IntegrationContext
from crmsync.daemon.integrations.efficy_apsis.config import EfficyApsisConfig
from crmsync.daemon.integrations.efficy_apsis.kind import EfficyApsisKind
from crmsync.daemon.metrics import Metrics
from crmsync.daemon.runs import RunContext
from crmsync.state import Database
from crmsync.state import queries as q
from tests.integrations.efficy_apsis.harness import NAME, make_config


@dataclass
class Flows:
    efficy: EfficySimulator
    apsis: ApsisSimulator
    db: Database
    kind: EfficyApsisKind
    clock: WallClock

    async def _run(self, flow: str, body: Callable[[RunContext], Awaitable[None]]) -> RunContext:
        run_id = await self.db.tx(q.start_run, NAME, flow, "test", self.clock.now().isoformat())
        run = RunContext(db=self.db, clock=self.clock, integration=NAME, flow=flow, run_id=run_id)
        await body(run)
        await run.flush()
        await self.db.tx(q.finish_run, run_id, run.final_status(), run.counts.as_dict(), run.error,
                         self.clock.now().isoformat())
        return run

    async def rows(self, run: RunContext) -> list[dict[str, Any]]:
        return await self.db.tx(q.report_rows, run.run_id, 100000)

    # -- webhooks and the real-time queue --------------------------------------------------------------

    async def deliver(self, body: bytes) -> int:
        """What the HTTP layer does with an authenticated webhook: parse, then queue durably."""
        events = self.kind.parse_webhook({}, body)
        items = [(e.dedupe_key, e.payload) for e in events]
        return await self.db.tx(q.enqueue, NAME, items, self.clock.now().isoformat())

    async def push(self, *contact_ids: int, operation: str = "updated") -> int:
        """A generic-connector webhook naming these contacts."""
        body = json.dumps([{"record_id": str(c), "operation": operation} for c in contact_ids]).encode()
        return await self.deliver(body)

    async def realtime(self, limit: int = 100) -> RunContext | None:
        """One batch of the queue, acknowledged only after it was processed (as the daemon does)."""
        events = await self.db.tx(q.peek_pending, NAME, limit)
        if not events:
            return None
        seqs = [e.seq for e in events]

        async def body(run: RunContext) -> None:
            await self.kind.process_events(events, run)
            await run.flush(lambda c: q.ack_queue(c, NAME, seqs))

        return await self._run("realtime", body)

    # -- the other flows --------------------------------------------------------------------------------

    async def full_sync(self) -> RunContext:
        async def body(run: RunContext) -> None:
            async def acknowledge(step: Any, tx: Any) -> bool:
                await run.flush(*tx)  # as the daemon does, less the checkpoint
                return True

            await self.kind.full_sync_run(None, run, acknowledge)

        return await self._run("full_sync", body)

    async def backflow(self) -> RunContext:
        return await self._run("consent_backflow", lambda run: self.kind.run_flow("consent_backflow", run))


@asynccontextmanager
async def flows(tmp_path: Path, clock: WallClock, *, config: Config | None = None,
                efficy: EfficySimulator | None = None, apsis: ApsisSimulator | None = None,
                db_path: Path | None = None,
                transports: dict[str, httpx.AsyncBaseTransport] | None = None) -> AsyncIterator[Flows]:
    """Both simulators (CRM Profiles 1 Newsletter and 2 Offers), a store, and the kind's clients open."""
    efficy = efficy or EfficySimulator(clock, api_key="efficy-test-key")
    apsis = apsis or ApsisSimulator(clock, client_id="crmsync", client_secret="apsis-test-secret",
                                    public_url="http://apsis.test")
    if not efficy.profiles():
        efficy.add_profile("Newsletter", 1)
        efficy.add_profile("Offers", 2)
        efficy.add_query("VIP", predicate=lambda c: int(c["K_CONTACT"]) % 2 == 0, query_id=99990001)
    config = config or make_config(tmp_path)
    icfg = config.integrations[NAME]
    assert isinstance(icfg, EfficyApsisConfig)
    db = await Database.open(db_path or tmp_path / "crmsync.db", inline=True, durable=False)
    transports = transports or {"efficy": httpx.ASGITransport(app=efficy),  # type: ignore[arg-type]
                                "apsis": httpx.ASGITransport(app=apsis)}  # type: ignore[arg-type]
    ctx = IntegrationContext(name=NAME, db=db, clock=clock, observer=Metrics(), state_dir=tmp_path,
                             transports=transports)
    kind = EfficyApsisKind(ctx, icfg)
    try:
        async with kind.open():
            yield Flows(efficy, apsis, db, kind, clock)
    finally:
        await db.aclose()
