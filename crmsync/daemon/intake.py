"""Webhook intake by group commit: requests that arrive within a few milliseconds share one store
transaction (one thread hop, one fsync), and each is answered only after that commit.

A request hands its parsed events to :meth:`WebhookIntake.submit` and waits. The committer task (owned by the
supervisor's nursery) takes what has arrived, waits at most ``window_s`` for more (or until ``max_batch``
requests), and commits the batch in one transaction: per request, the replay check on the digest of its signed
body, then its events. Every member then learns its own outcome; if the commit fails, every member is told so
(the HTTP layer answers 503) and nothing of the batch is stored.

Cancellation: a request cancelled before the committer took it is simply withdrawn (nothing stored); once
taken, the batch commits or fails as a whole whatever happens to the client, and is counted once. If the
committer itself is cancelled mid-transaction, the store rolls back (see :class:`~crmsync.state.Database`) and
every member is answered as failed.

The real-time queue depth is kept here as a counter (:class:`QueueDepth`), loaded from the store once at
start, raised on commit and lowered by the consumer: no COUNT(*) per request.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog
import trio

from crmsync.clock import WallClock
from crmsync.daemon.metrics import Metrics
from crmsync.state import Database
from crmsync.state import queries as q

log = structlog.get_logger("crmsync.daemon.intake")

# how often expired replay digests are pruned (inside a batch's transaction, so no extra hop)
DIGEST_PRUNE_EVERY_S = 60.0

Item = tuple[str | None, dict[str, Any]]


@dataclass(frozen=True)
class IntakeResult:
    accepted: int  # events newly queued
    replay: bool = False  # the same signed body was accepted within the replay window: nothing stored


class IntakeFailed(Exception):
    """The batch holding this request was not committed: nothing of it was stored (answer 5xx, retry)."""


class QueueDepth:
    """Events waiting in the durable real-time queue, per integration, mirrored in the metrics gauge."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics
        self._depth: dict[str, int] = {}

    def load(self, counts: dict[str, int]) -> None:
        for name, n in counts.items():
            self._set(name, n)

    def change(self, name: str, delta: int) -> None:
        if delta:
            self._set(name, self._depth.get(name, 0) + delta)

    def get(self, name: str) -> int:
        return self._depth.get(name, 0)

    def _set(self, name: str, n: int) -> None:
        self._depth[name] = max(0, n)
        self._metrics.queue_depth.labels(name).set(self._depth[name])


@dataclass(eq=False)
class _Request:
    integration: str
    digest: str
    items: list[Item]
    arrived: float = field(default_factory=trio.current_time)
    done: trio.Event = field(default_factory=trio.Event)
    taken: bool = False
    result: IntakeResult | None = None
    error: str | None = None


class WebhookIntake:
    def __init__(self, db: Database, clock: WallClock, metrics: Metrics, depth: QueueDepth, *,
                 window_s: float, max_batch: int, replay_window: timedelta):
        self.db = db
        self.clock = clock
        self.metrics = metrics
        self.depth = depth
        self.window_s = window_s
        self.max_batch = max_batch
        self.replay_window_s = replay_window.total_seconds()
        # test seam: called in the committer task with each batch's size, after it is taken and before its
        # transaction starts
        self.on_batch: Callable[[int], None] | None = None
        self.batches = 0  # transactions committed or attempted
        self._waiting: list[_Request] = []
        self._arrived = trio.Event()
        self._running = False
        self._last_prune = float("-inf")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.depth.load(await self.db.tx(q.pending_counts))
        self._running = True
        task_status.started()
        try:
            while True:
                if not self._waiting:
                    self._arrived = trio.Event()
                    await self._arrived.wait()
                if self.window_s > 0:
                    # the window runs from the oldest waiting request's arrival: requests that queued up during
                    # the previous commit have waited long enough already
                    with trio.move_on_at(self._waiting[0].arrived + self.window_s if self._waiting
                                         else trio.current_time() + self.window_s):
                        while len(self._waiting) < self.max_batch:
                            self._arrived = trio.Event()
                            await self._arrived.wait()
                batch, self._waiting = self._waiting[:self.max_batch], self._waiting[self.max_batch:]
                if batch:
                    await self._commit(batch)
        finally:
            self._running = False
            for r in self._waiting:
                r.error = "the daemon is stopping"
                r.done.set()
            self._waiting = []

    async def submit(self, integration: str, items: list[Item], digest: str) -> IntakeResult:
        """Queue ``items`` durably, deduplicated by ``digest`` within the replay window; raises IntakeFailed."""
        if not self._running:
            raise IntakeFailed("the webhook intake is not running")
        r = _Request(integration, digest, items)
        self._waiting.append(r)
        self._arrived.set()
        try:
            await r.done.wait()
        except trio.Cancelled:
            if not r.taken:  # withdrawn before its batch was formed: nothing stored, nothing counted
                self._waiting.remove(r)
            raise
        if r.result is None:
            raise IntakeFailed(r.error or "not stored")
        return r.result

    async def _commit(self, batch: list[_Request]) -> None:
        for r in batch:
            r.taken = True
        if self.on_batch is not None:
            self.on_batch(len(batch))
        self.batches += 1
        now = self.clock.timestamp()
        since = now - self.replay_window_s if self.replay_window_s > 0 else None
        prune = since is not None and now - self._last_prune >= DIGEST_PRUNE_EVERY_S
        members = [(r.integration, r.digest, r.items) for r in batch]
        try:
            outcomes = await self.db.tx(_commit_batch, members, self.clock.now().isoformat(), now, since, prune)
        except BaseException as exc:
            # one transaction: nothing of the batch is stored; every member is told
            error = "cancelled" if isinstance(exc, trio.Cancelled) else f"{type(exc).__name__}: {exc}"
            for r in batch:
                r.error = error
                r.done.set()
            if not isinstance(exc, Exception):
                raise
            log.error("webhook_batch_not_stored", requests=len(batch), error=error)
            return
        if prune:
            self._last_prune = now
        for r, result in zip(batch, outcomes, strict=True):
            r.result = result
            r.done.set()
            self.depth.change(r.integration, result.accepted)
            if result.replay:
                self.metrics.webhook_replays.labels(r.integration).inc()


def _commit_batch(c: sqlite3.Connection, members: list[tuple[str, str, list[Item]]], now_iso: str, now: float,
                  replay_since: float | None, prune: bool) -> list[IntakeResult]:
    out = []
    for integration, digest, items in members:
        if replay_since is not None:
            # checked and remembered in order, so a replay inside the same batch is caught too
            if q.seen_digest(c, integration, digest, replay_since):
                out.append(IntakeResult(0, replay=True))
                continue
            q.remember_digest(c, integration, digest, now)
        out.append(IntakeResult(q.enqueue(c, integration, items, now_iso)))
    if prune and replay_since is not None:
        q.prune_digests(c, replay_since)
    return out
