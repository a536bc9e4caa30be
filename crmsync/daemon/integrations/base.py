"""What an integration kind is: the plug between the daemon's machinery and two connectors.

The daemon owns time, concurrency and durability (timers, the full-sync worker, the real-time queue, runs and
reports, shutdown); a kind owns what moves and how. A kind subclasses :class:`IntegrationKind` and overrides:

* ``config_model``: its pydantic config section (subclass of ``IntegrationConfig``);
* ``scheduled_flows`` and :meth:`default_schedules`: the flows the timers fire;
* :meth:`open`: an async context manager holding its API clients while the integration is active;
* :meth:`run_flow`: one run of a scheduled or on-demand flow;
* for full syncs, ``supports_full_sync = True`` and :meth:`full_sync_step` (read one page at ``position``,
  write it, return where the next page starts; or :meth:`full_sync_run`, the whole sync as a pipeline that
  acknowledges units in order),
  write it, return where the next page starts) plus :meth:`full_sync_finished`;
* for real-time, :meth:`parse_webhook` (pure: bytes in, events out; raises :class:`WebhookRejected`) and
  :meth:`process_events` (one batch from the durable queue, in arrival order);
* :meth:`config_change_note`: when a reload changes something that needs a full sync (consent mappings);
* :meth:`sandbox`: the simulators and demo data for ``crmsync sandbox``.

The sync rules themselves (mapping, eligibility, conditions, consent, diffing) live in the kind's ``rules``
module as plain functions: no trio, no I/O.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
import trio

from crmsync.clock import WallClock
from crmsync.connectors.http import RequestObserver
from crmsync.daemon.config import IntegrationConfig
from crmsync.daemon.schedule import Schedule
from crmsync.state import Database, QueuedEvent

if TYPE_CHECKING:
    from crmsync.daemon.runs import RunContext


class WebhookRejected(ValueError):
    """The webhook body is malformed or not for us: answered 400, nothing stored."""


class FlowError(Exception):
    """A flow cannot run (bad state, unknown flow): reported to the caller, the daemon carries on."""


@dataclass(frozen=True)
class WebhookEvent:
    """One queued real-time event. ``dedupe_key`` makes a replayed delivery a no-op (None: no dedupe)."""

    payload: dict[str, Any]
    dedupe_key: str | None = None


@dataclass(frozen=True)
class FullSyncStep:
    """The result of one acknowledged page of a full sync."""

    next_position: str | None  # None when the source is exhausted
    processed: int
    total: int | None = None  # total records, when the source knows it


#: ``acknowledge(step, tx)`` of :meth:`IntegrationKind.full_sync_run`: checkpoint ``step`` together with the
#: store writes ``tx`` (one transaction); returns whether to go on (False: the daemon is stopping).
FullSyncAcknowledge = Callable[[FullSyncStep, Sequence[Callable[[Any], Any]]], Awaitable[bool]]


@dataclass
class IntegrationContext:
    """What the daemon gives a kind: its name, the store, the clock, and an observer for API metrics."""

    name: str
    db: Database
    clock: WallClock
    observer: RequestObserver
    state_dir: Path
    http_timeout: float = 30.0
    # tests (and benchmarks) hand in httpx transports per system ("everyaction", "apsis", ...) so that API
    # clients talk to in-process simulators; empty in production
    transports: dict[str, httpx.AsyncBaseTransport] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SandboxPart:
    """What a kind contributes to ``crmsync sandbox``.

    The kind's :meth:`IntegrationKind.sandbox` starts its simulators on loopback in the nursery it is given
    and returns: the ``[integrations.NAME]`` config section pointing at them; ``kickoff``, flows to run once
    as soon as the daemon is up (so a newcomer sees reports at once; ``full_sync`` allowed);
    ``after_start(webhook_url)``, a task to run beside the daemon (a simulator's webhook sender), where
    ``webhook_url`` is this integration's ``POST /webhooks/NAME`` address; ``description``, lines for the
    banner.
    """

    config: dict[str, Any]
    kickoff: list[str] = field(default_factory=list)
    after_start: Callable[[str], Awaitable[None]] | None = None
    description: list[str] = field(default_factory=list)
    #: a record the demo data skips, for the banner's ``crmsync explain NAME RECORD`` example (issue 11)
    explain_example: str | None = None
    explain_note: str | None = None


class IntegrationKind:
    kind: ClassVar[str] = ""
    config_model: ClassVar[type[IntegrationConfig]] = IntegrationConfig
    scheduled_flows: ClassVar[tuple[str, ...]] = ()
    on_demand_flows: ClassVar[tuple[str, ...]] = ()  # flows run_flow accepts besides the scheduled ones
    supports_full_sync: ClassVar[bool] = False
    supports_webhooks: ClassVar[bool] = False
    systems: ClassVar[tuple[str, ...]] = ()  # external systems' names, as in crmsync_api_* metrics labels
    realtime_batch_size: ClassVar[int] = 100
    realtime_coalesce_s: ClassVar[float] = 0.5  # after a wake-up, wait this long to batch a burst of webhooks
    #: attributes holding API clients while open, and their system ("everyaction", "apsis", ...): dry runs and
    #: ``explain`` wrap them in a write recorder (crmsync/daemon/write_recorder.py); empty: not supported
    client_attributes: ClassVar[Mapping[str, str]] = {}

    def __init__(self, ctx: IntegrationContext, config: IntegrationConfig):
        self.ctx = ctx
        self.config = config

    @property
    def name(self) -> str:
        return self.ctx.name

    # -- schedules ---------------------------------------------------------------------------------------

    def default_schedules(self) -> dict[str, Schedule]:
        return {}

    def schedules(self) -> dict[str, Schedule]:
        merged = self.default_schedules()
        for flow, spec in self.config.schedules.items():
            merged[flow] = spec.to_schedule()
        return merged

    def flows(self) -> tuple[str, ...]:
        return self.scheduled_flows + self.on_demand_flows

    # -- resources ---------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        """Hold API clients while active. Default: nothing to open."""
        yield

    # -- flows -------------------------------------------------------------------------------------------

    async def run_flow(self, flow: str, run: RunContext) -> None:
        raise FlowError(f"{self.kind} has no flow {flow!r}")

    def first_run_not_before(self, flow: str, activated_at: Any) -> Any:
        """The earliest instant a scheduled flow may first fire after activation (default: at once)."""
        return activated_at

    # -- full sync ---------------------------------------------------------------------------------------

    async def full_sync_step(self, position: str | None, run: RunContext) -> FullSyncStep:
        raise FlowError(f"{self.kind} has no full sync")

    async def full_sync_run(self, position: str | None, run: RunContext, acknowledge: FullSyncAcknowledge
                            ) -> bool:
        """The whole full sync from ``position``: calls ``acknowledge(step, tx)`` for each acknowledged unit,
        in order (the daemon checkpoints ``step.next_position`` in one transaction with ``tx``; it answers
        False when the daemon is stopping). Returns True once the last unit (``next_position`` None) was
        acknowledged, False when it stopped early. The default runs :meth:`full_sync_step` page by page; a
        kind may override it with a pipeline that reads ahead of its writes."""
        while True:
            step = await self.full_sync_step(position, run)
            go_on = await acknowledge(step, ())
            if step.next_position is None:
                return True
            if not go_on:
                return False
            position = step.next_position

    async def full_sync_finished(self, run: RunContext) -> None:
        """Called once after the last page was acknowledged (e.g. to sync tags)."""

    def full_sync_mappings(self) -> dict[str, Any]:
        """What decides what a full sync writes. A cancelled full sync resumes from its checkpoint only while
        this is unchanged (else the pages already done were written under other mappings). Default: the whole
        section but its notes, time zone, webhook and schedules (a changed connection starts over too)."""
        return self.config.model_dump(exclude={"notes", "timezone", "webhook", "schedules"})

    # -- real time ---------------------------------------------------------------------------------------

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> list[WebhookEvent]:
        raise WebhookRejected(f"{self.kind} takes no webhooks")

    async def process_events(self, events: list[QueuedEvent], run: RunContext) -> None:
        raise FlowError(f"{self.kind} has no real-time flow")

    # -- reload ------------------------------------------------------------------------------------------

    def config_change_note(self, old: IntegrationConfig) -> str | None:
        """Return a reason when moving from ``old`` to this config requires a full sync."""
        return None

    # -- sandbox -----------------------------------------------------------------------------------------

    @classmethod
    async def sandbox(cls, *, name: str, clock: WallClock, contacts: int, secrets_dir: Path,
                      nursery: trio.Nursery) -> SandboxPart | None:
        return None
