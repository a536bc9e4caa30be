"""A test-only integration kind with two fake connectors, proving the daemon's machinery without any vendor.

* ``FakeSource``: a paged list of records ``{"id": "r1", "version": 1}``; pages can be slowed down so a test can
  cancel or crash a full sync in the middle;
* ``FakeDestination``: a dict of written records plus an ordered log of writes, so tests can check order,
  idempotency (a rewrite of the same version is a no-op) and that nothing was lost.

Both live in :data:`WORLDS`, keyed by integration name, so a test can look at them after the daemon ran.
Importing this module registers the kind ``fake`` (config: ``[daemon] plugins = ["tests.fake_kind"]``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from crmsync.connectors.errors import RetriableApiError
from crmsync.daemon.config import IntegrationConfig
from crmsync.daemon.integrations.base import (
    FlowError,
    FullSyncStep,
    IntegrationKind,
    WebhookEvent,
    WebhookRejected,
)
from crmsync.daemon.integrations.registry import register
from crmsync.daemon.runs import RunContext
from crmsync.daemon.schedule import Daily, Interval, Schedule
from crmsync.state import QueuedEvent


@dataclass
class FakeSource:
    records: list[dict[str, Any]] = field(default_factory=list)
    page_delay: float = 0.0
    pages_read: list[int] = field(default_factory=list)  # offsets read, in order

    def page(self, offset: int, size: int) -> list[dict[str, Any]]:
        self.pages_read.append(offset)
        return self.records[offset: offset + size]


@dataclass
class FakeDestination:
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: list[tuple[str, str, int]] = field(default_factory=list)  # (via, id, version)
    writes: int = 0

    def write(self, via: str, record: dict[str, Any]) -> str:
        current = self.records.get(record["id"])
        if current is not None and current["version"] >= record["version"]:
            return "unchanged"  # idempotent, and never a stale overwrite
        self.writes += 1
        self.records[record["id"]] = dict(record)
        self.log.append((via, record["id"], record["version"]))
        return "updated" if current is not None else "created"


@dataclass
class World:
    source: FakeSource = field(default_factory=FakeSource)
    dest: FakeDestination = field(default_factory=FakeDestination)
    flow_runs: list[tuple[str, str]] = field(default_factory=list)  # (flow, wall time iso)
    open_attempts: int = 0
    flaky_failures: int = 0
    flow_delay: float = 0.0  # scheduled/on-demand flows take this long (so a test can cancel one)
    flow_result: str = "success"  # how on-demand/scheduled runs end: success, partial (a rejected record), failed


WORLDS: dict[str, World] = {}


def world(name: str) -> World:
    return WORLDS.setdefault(name, World())


class FakeConfig(IntegrationConfig):
    records: int = 0
    page_size: int = 10
    fail_open: int = 0  # open() raises this many times first (a broken client, a bug)


@register
class FakeKind(IntegrationKind):
    kind = "fake"
    config_model = FakeConfig
    scheduled_flows = ("nightly", "tick")
    on_demand_flows = ("once",)
    supports_full_sync = True
    supports_webhooks = True

    def __init__(self, ctx: Any, config: IntegrationConfig):
        super().__init__(ctx, config)
        w = world(ctx.name)
        assert isinstance(config, FakeConfig)
        if config.records and not w.source.records:
            w.source.records = [{"id": f"r{i}", "version": 1} for i in range(config.records)]

    @property
    def w(self) -> World:
        return world(self.name)

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        assert isinstance(self.config, FakeConfig)
        self.w.open_attempts += 1
        if self.w.open_attempts <= self.config.fail_open:
            raise RuntimeError("client construction failed")
        yield

    def default_schedules(self) -> dict[str, Schedule]:
        from datetime import time, timedelta

        return {"nightly": Daily(time(2, 0)), "tick": Interval(timedelta(minutes=5), time(8, 0), time(21, 0))}

    async def run_flow(self, flow: str, run: RunContext) -> None:
        self.w.flow_runs.append((flow, run.clock.now().isoformat()))
        if self.w.flow_delay:
            await trio.sleep(self.w.flow_delay)
        run.fetched(1)
        if self.w.flow_result == "failed":
            raise FlowError("the fake API refused the export: HTTP 400 unknown column Email")
        if self.w.flow_result == "partial":
            run.record("rejected", crm_id="y", message="error 19: Invalid opt-in path")
        run.record("unchanged", crm_id="x")

    async def full_sync_step(self, position: str | None, run: RunContext) -> FullSyncStep:
        assert isinstance(self.config, FakeConfig)
        offset = int(position or 0)
        if self.w.source.page_delay:
            await trio.sleep(self.w.source.page_delay)
        page = self.w.source.page(offset, self.config.page_size)
        run.fetched(len(page))
        for record in page:
            run.record(self.w.dest.write("full_sync", record), crm_id=record["id"], messaging_id=record["id"])
        nxt = offset + len(page)
        return FullSyncStep(str(nxt) if nxt < len(self.w.source.records) else None, len(page),
                            len(self.w.source.records))

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> list[WebhookEvent]:
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise WebhookRejected(f"not JSON: {exc}") from None
        if not isinstance(data, list) or not all(
            isinstance(e, dict) and isinstance(e.get("id"), str) and isinstance(e.get("version"), int) for e in data
        ):
            raise WebhookRejected("expected a list of {id: str, version: int}")
        return [WebhookEvent({"id": e["id"], "version": e["version"]}, f"{e['id']}:{e['version']}") for e in data]

    async def process_events(self, events: list[QueuedEvent], run: RunContext) -> None:
        for event in events:
            rid = event.payload["id"]
            if rid.startswith("poison"):  # a bug met by one odd record: fails every time
                raise RuntimeError(f"cannot handle {rid}")
            if rid.startswith("flaky") and self.w.flaky_failures > 0:  # an outage: fails for a while
                self.w.flaky_failures -= 1
                raise RetriableApiError("fake", "service unavailable", status=503)
            run.fetched()
            outcome = self.w.dest.write("realtime", event.payload)
            run.record(outcome, crm_id=event.payload["id"])
