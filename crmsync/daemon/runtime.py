"""One active integration at run time: its timers, its full-sync worker and its real-time consumer.

Everything an integration does runs in this runtime's nursery, under one cancel scope owned by the
supervisor: deactivating the integration cancels exactly its tasks and nothing else.

Durability rules kept here (the kinds rely on them):

* a run's report rows, and the flow's cursor/links written through ``run.flush(...)``, commit together;
* a full sync checkpoints its position only after the kind acknowledged a page or batch (``acknowledge``),
  in the same transaction as that page's report rows; after a crash or restart it resumes from there;
* queued real-time events are removed only after ``process_events`` returned, and are held back while a full
  sync runs (then drained in arrival order);
* on a graceful stop, the full sync and scheduled flows stop at their next safe point (between pages), a full
  sync stays marked running so that it resumes on the next start;
* a cancelled (or failed) full sync resumes from its checkpoint on the next ``full-sync`` when the mappings
  it started with are unchanged (:func:`full_sync_plan`), unless asked to start over.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from functools import partial
from typing import Any

import structlog
import trio

from crmsync.connectors.errors import ApiError, AuthError, RetriableApiError
from crmsync.daemon.intake import QueueDepth
from crmsync.daemon.integrations.base import FlowError, FullSyncStep, IntegrationKind
from crmsync.daemon.metrics import Metrics
from crmsync.daemon.pause import PauseGate, paused_since
from crmsync.daemon.runs import RunContext
from crmsync.daemon.schedule import Schedule, next_fire
from crmsync.state import consent_history
from crmsync.state import queries as q

log = structlog.get_logger("crmsync.daemon.runtime")

FULL_SYNC_FLOW = "full_sync"
REALTIME_FLOW = "realtime"
REALTIME_MAX_BACKOFF = 300.0
FULL_SYNC_MAPPINGS_KEY = "full_sync.mappings"  # kv: digest of the mappings the current full sync started with
REALTIME_MAX_EVENT_ATTEMPTS = 5  # non-transient failures of one event before it is set aside


class FlowBusy(Exception):
    pass


class IntegrationRuntime:
    def __init__(self, kind: IntegrationKind, metrics: Metrics, tz: Any, retention: tuple[int, int], *,
                 queue_depth: QueueDepth | None = None):
        self.kind = kind
        self.name = kind.name
        self.ctx = kind.ctx
        self.db = kind.ctx.db
        self.clock = kind.ctx.clock
        self.metrics = metrics
        self.queue_depth = queue_depth or QueueDepth(metrics)  # kept in memory: lowered as events are consumed
        self.tz = tz
        self.retention_days, self.retention_runs = retention
        self.scope = trio.CancelScope()
        self.stopped = trio.Event()
        self.stopping = False
        self.nursery: trio.Nursery | None = None
        self.next_runs: dict[str, datetime] = {}
        self.schedules: dict[str, Schedule] = kind.schedules()
        self._locks: dict[str, trio.Lock] = {}
        self._running: dict[int, tuple[str, trio.CancelScope]] = {}
        self._done_events: dict[int, trio.Event] = {}
        self._wait_scopes: set[trio.CancelScope] = set()
        self.full_sync_idle = trio.Event()
        self.full_sync_idle.set()
        self.full_sync_progress: dict[str, Any] | None = None
        self._full_sync_cancel_requested = False
        self._queue_wakeup = trio.Event()
        self.activated_at: datetime | None = None
        self.in_backoff = False  # the real-time consumer waits out an outage (integration state "backoff")
        self.on_healthy: Callable[[], None] | None = None
        self.consent_history_retention_days = 0  # 0: keep the consent history (an audit trail)
        self.pause_gate = PauseGate()  # shut while paused: timers, the queue and full-sync pages wait

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        structlog.contextvars.bind_contextvars(integration=self.name)
        try:
            with self.scope:
                status = await self.db.tx(q.get_status, self.name)
                if status:
                    self.activated_at = datetime.fromisoformat(status["since"])
                if await self.db.tx(paused_since, self.name):
                    self.pause_gate.pause()
                async with self.kind.open(), trio.open_nursery() as nursery:
                    self.nursery = nursery
                    for flow, schedule in self.schedules.items():
                        nursery.start_soon(self._timer, flow, schedule)
                    if self.kind.supports_webhooks:
                        nursery.start_soon(self._realtime_consumer)
                    fs = await self.db.tx(q.get_full_sync, self.name)
                    if fs and fs["state"] == "running" and self.kind.supports_full_sync:
                        log.info("full_sync_resuming", position=fs["position"], done=fs["done"])
                        await self.start_full_sync(resume=True)
                    task_status.started()
                    self.healthy()
        finally:
            self.nursery = None
            self.metrics.full_sync_running.labels(self.name).set(0)
            self.stopped.set()

    def healthy(self) -> None:
        """Hook for the supervisor: this runtime is up (clears a previous crash from status)."""
        if self.on_healthy is not None:
            self.on_healthy()

    def request_stop(self) -> None:
        """Graceful: stop waiting for timers and queue; running flows stop at their next safe point."""
        self.stopping = True
        for scope in list(self._wait_scopes):
            scope.cancel()

    def cancel(self) -> None:
        self.scope.cancel()

    async def _interruptible_wait(self, fn: Callable[[], Awaitable[Any]]) -> bool:
        """Await ``fn()`` unless a graceful stop is requested; returns False when stopping."""
        if self.stopping:
            return False
        with trio.CancelScope() as scope:
            self._wait_scopes.add(scope)
            try:
                await fn()
            finally:
                self._wait_scopes.discard(scope)
        return not scope.cancelled_caught and not self.stopping

    # -- running flows -----------------------------------------------------------------------------------

    def lock(self, flow: str) -> trio.Lock:
        return self._locks.setdefault(flow, trio.Lock())

    def running_flows(self) -> dict[int, str]:
        return {run_id: flow for run_id, (flow, _) in self._running.items()}

    def done_event(self, run_id: int) -> trio.Event | None:
        return self._done_events.get(run_id)

    async def start_flow(self, flow: str, trigger: str) -> int:
        """Start a run of ``flow`` in this runtime's nursery; returns its run id at once."""
        if self.nursery is None or self.stopping:
            raise FlowError(f"integration {self.name!r} is stopping")
        if flow not in self.kind.flows():
            raise FlowError(f"{self.kind.kind} has no flow {flow!r}; it has {', '.join(self.kind.flows())}")
        if self.lock(flow).locked():
            raise FlowBusy(f"{flow} is already running for {self.name}")
        run_id: int = await self.nursery.start(self._execute, flow, trigger, self._flow_body(flow))
        return run_id

    def _flow_body(self, flow: str) -> Callable[[RunContext], Awaitable[None]]:
        async def body(run: RunContext) -> None:
            await self.kind.run_flow(flow, run)

        return body

    async def _execute(
        self,
        flow: str,
        trigger: str,
        body: Callable[[RunContext], Awaitable[None]],
        on_finish: Callable[[str, RunContext], Awaitable[None]] | None = None,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> str:
        lock = self.lock(flow)
        if lock.locked():
            raise FlowBusy(f"{flow} is already running for {self.name}")
        async with lock:
            now = self.clock.now().isoformat()
            run_id = await self.db.tx(q.start_run, self.name, flow, trigger, now)
            run = RunContext(
                db=self.db, clock=self.clock, integration=self.name, flow=flow, run_id=run_id,
                on_record=self.metrics.record,
            )
            run.should_stop = lambda: self.stopping
            scope = trio.CancelScope()
            done = trio.Event()
            self._running[run_id] = (flow, scope)
            self._done_events[run_id] = done
            task_status.started(run_id)
            started = time.monotonic()
            status = "failed"
            # tasks inherit the context of whoever started them (maybe a control connection): bind explicitly
            with structlog.contextvars.bound_contextvars(integration=self.name, flow=flow, run_id=run_id):
                log.info("run_started", trigger=trigger)
                try:
                    with scope:
                        await body(run)
                    status = "cancelled" if scope.cancelled_caught else run.final_status()
                except trio.Cancelled:
                    status = "cancelled"
                    raise
                except (ApiError, FlowError) as exc:
                    run.error = str(exc)
                    log.warning("run_failed", error=str(exc))
                except Exception as exc:  # a bug or an unexpected answer: record it, keep the daemon up
                    run.error = f"{type(exc).__name__}: {exc}"
                    log.exception("run_crashed")
                finally:
                    with trio.CancelScope(shield=True):
                        with trio.move_on_after(30):
                            if on_finish is not None:
                                await on_finish(status, run)
                            await self._finish(run, status, started)
                    self._running.pop(run_id, None)
                    done.set()
                    # keep the event a little for waiters; drop old ones
                    if len(self._done_events) > 100:
                        for rid in sorted(self._done_events)[:-50]:
                            self._done_events.pop(rid, None)
            return status

    async def _finish(self, run: RunContext, status: str, started: float) -> None:
        now_dt = self.clock.now()
        now = now_dt.isoformat()
        counts = run.counts.as_dict()
        older = datetime.fromtimestamp(now_dt.timestamp() - self.retention_days * 86400, now_dt.tzinfo).isoformat()

        keep_consents = self.consent_history_retention_days
        consent_cutoff = (datetime.fromtimestamp(now_dt.timestamp() - keep_consents * 86400, now_dt.tzinfo)
                          .isoformat() if keep_consents else None)

        def finish(c: Any) -> None:
            q.finish_run(c, run.run_id, status, counts, run.error, now)
            if status in ("success", "partial"):
                q.record_last_success(c, self.name, run.flow, now)
            q.prune(c, self.name, run.flow, older, self.retention_runs)
            if consent_cutoff is not None:  # the consent history has its own retention (default: kept)
                consent_history.prune(c, self.name, consent_cutoff)

        try:
            await run.flush(finish)
        except Exception:
            log.exception("run_finish_failed")
        self.metrics.run_finished(self.name, run.flow, status, time.monotonic() - started, now_dt.timestamp())
        log.info("run_finished", status=status, counts=counts, error=run.error)

    def cancel_runs(self, only: str | None = None) -> list[dict[str, Any]]:
        """Cancel the full sync (marked cancelled: the next start can resume it) and any running flow, or
        only the flow ``only``; returns what was cancelled."""
        cancelled = []
        for run_id, (flow, scope) in list(self._running.items()):
            if only is not None and flow != only:
                continue
            if flow == REALTIME_FLOW:
                continue  # a real-time batch is short; cancelling it only delays the queue
            if flow == FULL_SYNC_FLOW:
                self._full_sync_cancel_requested = True
            scope.cancel()
            cancelled.append({"run_id": run_id, "flow": flow})
        return cancelled

    # -- timers ------------------------------------------------------------------------------------------

    async def _timer(self, flow: str, schedule: Schedule) -> None:
        with structlog.contextvars.bound_contextvars(integration=self.name, flow=flow):
            while not self.stopping:
                after = self.clock.now()
                not_before = self.kind.first_run_not_before(flow, self.activated_at or after)
                if not_before is not None and not_before > after:
                    after = not_before
                fire_at = next_fire(schedule, after, self.tz)
                self.next_runs[flow] = fire_at
                if not await self._interruptible_wait(partial(self.clock.sleep_until, fire_at)):
                    return
                if not await self._interruptible_wait(self.pause_gate.wait_open):
                    return  # a slot due while paused fires once, on resume
                try:
                    await self._execute(flow, "schedule", self._flow_body(flow))
                except FlowBusy:
                    log.info("scheduled_run_skipped", reason="previous run still going")

    # -- full sync ---------------------------------------------------------------------------------------

    def full_sync_running(self) -> bool:
        return not self.full_sync_idle.is_set()

    async def start_full_sync(self, *, resume: bool = False) -> int:
        if not self.kind.supports_full_sync:
            raise FlowError(f"{self.kind.kind} has no full sync")
        if self.nursery is None or self.stopping:
            raise FlowError(f"integration {self.name!r} is stopping")
        if self.full_sync_running():
            raise FlowBusy(f"a full sync is already running for {self.name}")
        self.full_sync_idle = trio.Event()
        self._full_sync_cancel_requested = False
        try:
            run_id: int = await self.nursery.start(
                self._execute, FULL_SYNC_FLOW, "resume" if resume else "command",
                self._make_full_sync_body(resume), self._full_sync_finish,
            )
        except BaseException:
            self.full_sync_idle.set()
            raise
        return run_id

    def _make_full_sync_body(self, resume: bool) -> Callable[[RunContext], Awaitable[None]]:
        async def body(run: RunContext) -> None:
            now = run.now_iso()
            if resume:
                await self.db.tx(q.resume_full_sync, self.name, run.run_id, now)
            else:
                digest = mappings_digest(self.kind)

                def start(c: Any) -> None:
                    q.start_full_sync(c, self.name, run.run_id, now)
                    q.kv_set(c, self.name, FULL_SYNC_MAPPINGS_KEY, digest)
                await self.db.tx(start)
            fs = await self.db.tx(q.get_full_sync, self.name)
            assert fs is not None
            position: str | None = fs["position"]
            done: int = fs["done"]
            total: int | None = fs["total"]
            started_done, started_at = done, trio.current_time()
            self._progress(run.run_id, done, total, 0.0, fs["started_at"])
            self.metrics.full_sync_running.labels(self.name).set(1)
            log.info("full_sync_page_loop", resume=resume, position=position, done=done)
            async def acknowledge(step: FullSyncStep, tx: Sequence[Callable[[Any], Any]]) -> bool:
                nonlocal done, position, total
                done += step.processed
                position = step.next_position
                total = step.total if step.total is not None else total
                at = run.now_iso()
                await run.flush(*tx, partial(_checkpoint, name=self.name, position=position, done=done,
                                             total=total, at=at))
                elapsed = trio.current_time() - started_at
                rate = (done - started_done) / elapsed if elapsed > 0 else 0.0
                self._progress(run.run_id, done, total, rate, fs["started_at"])
                # paused: hold after this checkpoint; stopping while paused resumes from it
                if self.pause_gate.paused and not await self._interruptible_wait(self.pause_gate.wait_open):
                    return False
                return not self.stopping

            if self.pause_gate.paused and not await self._interruptible_wait(self.pause_gate.wait_open):
                run.interrupted = True  # stopping while paused: resumes from the checkpoint
                return
            if not await self.kind.full_sync_run(position, run, acknowledge):
                log.info("full_sync_paused_for_stop", position=position, done=done)
                run.interrupted = True
                return
            await self.kind.full_sync_finished(run)

        return body

    def _progress(self, run_id: int, done: int, total: int | None, rate: float, started_at: str) -> None:
        self.full_sync_progress = {
            "run_id": run_id, "done": done, "total": total, "rate_per_s": round(rate, 1), "started_at": started_at,
        }
        self.metrics.full_sync_done.labels(self.name).set(done)
        self.metrics.full_sync_total.labels(self.name).set(total or 0)

    async def _full_sync_finish(self, status: str, run: RunContext) -> None:
        now = run.now_iso()
        try:
            if status in ("success", "partial"):
                def done(c: Any) -> None:
                    q.finish_full_sync(c, self.name, "completed", now)
                    q.set_full_sync_required(c, self.name, False, None)
                await self.db.tx(done)
            elif status == "cancelled" and self._full_sync_cancel_requested:
                await self.db.tx(q.finish_full_sync, self.name, "cancelled", now)
            elif status == "failed":
                await self.db.tx(q.finish_full_sync, self.name, "failed", now)
            # cancelled by a stop: stays 'running' so that the next start resumes it
        finally:
            self.metrics.full_sync_running.labels(self.name).set(0)
            self.full_sync_idle.set()
            self.wake_queue()

    # -- real time ---------------------------------------------------------------------------------------

    def wake_queue(self) -> None:
        self._queue_wakeup.set()

    async def _realtime_consumer(self) -> None:
        """Drain the durable queue in arrival order, one run per batch.

        A failed batch is retried one event at a time (``isolate``), so that one event that keeps failing
        for a non-transient reason (a bug met by one odd record) cannot stall the queue: after
        ``REALTIME_MAX_EVENT_ATTEMPTS`` such failures it becomes a dead letter (kept, counted in status).
        Transient failures (retriable API errors after the client's own retries, refused credentials) never
        count: the event waits, with backoff, however long the outage lasts.
        """
        backoff = 1.0
        isolate = False
        with structlog.contextvars.bound_contextvars(integration=self.name, flow=REALTIME_FLOW):
            while not self.stopping:
                if not await self._interruptible_wait(self.pause_gate.wait_open):
                    return
                if not await self._interruptible_wait(self.full_sync_idle.wait):
                    return
                wakeup = self._queue_wakeup = trio.Event()
                limit = 1 if isolate else self.kind.realtime_batch_size
                events = await self.db.tx(q.peek_pending, self.name, limit)
                if not events:
                    if not await self._interruptible_wait(wakeup.wait):
                        return
                    # webhooks come in bursts: gather a moment so one run covers the burst
                    if not await self._interruptible_wait(partial(trio.sleep, self.kind.realtime_coalesce_s)):
                        return
                    continue
                if self.full_sync_running():
                    continue
                seqs = [e.seq for e in events]
                failure: dict[str, Any] = {}

                async def body(run: RunContext, events: list[Any] = events, seqs: list[int] = seqs,
                               failure: dict[str, Any] = failure) -> None:
                    try:
                        await self.kind.process_events(events, run)
                    except (RetriableApiError, AuthError) as exc:
                        failure.update(transient=True, error=str(exc))
                        raise
                    except Exception as exc:
                        failure.update(transient=False, error=f"{type(exc).__name__}: {exc}")
                        raise
                    await run.flush(lambda c: q.ack_queue(c, self.name, seqs))
                    self.queue_depth.change(self.name, -len(seqs))

                status = await self._execute(REALTIME_FLOW, "webhook", body)
                if status == "failed":
                    error = str(failure.get("error") or "batch failed")
                    if len(events) > 1:
                        isolate = True  # find the event at fault: retry one at a time, at once
                        continue
                    event = events[0]
                    if not failure.get("transient", True) and event.attempts + 1 >= REALTIME_MAX_EVENT_ATTEMPTS:
                        await self.db.tx(q.dead_letter, self.name, event.seq, error, self.clock.now().isoformat())
                        self.queue_depth.change(self.name, -1)
                        self.metrics.dead_letters.labels(self.name).inc()
                        log.error("realtime_event_dead_lettered", seq=event.seq, error=error,
                                  attempts=event.attempts + 1, payload=event.payload)
                        continue
                    await self.db.tx(q.fail_queue, self.name, event.seq, error, self.clock.now().isoformat())
                    log.warning("realtime_event_retry", delay_s=backoff, seq=event.seq, error=error)
                    self.in_backoff = True
                    if not await self._interruptible_wait(partial(trio.sleep, backoff)):
                        return
                    backoff = min(backoff * 2, REALTIME_MAX_BACKOFF)
                else:
                    backoff = 1.0
                    isolate = False
                    self.in_backoff = False


def _checkpoint(c: Any, *, name: str, position: str | None, done: int, total: int | None, at: str) -> None:
    q.checkpoint_full_sync(c, name, position, done, total, at)


def mappings_digest(kind: IntegrationKind) -> str:
    """A digest of what decides what a full sync writes (see ``IntegrationKind.full_sync_mappings``)."""
    text = json.dumps(kind.full_sync_mappings(), sort_keys=True, default=repr)  # a Secret's repr hides it
    return hashlib.sha256(text.encode()).hexdigest()


def full_sync_plan(fs: dict[str, Any] | None, started_with: str | None, now_digest: str) -> dict[str, Any]:
    """What the next ``full-sync`` will do: ``{"action": "resume" | "start", "reason": ...}``.

    Resume only from a checkpoint of a cancelled or failed full sync whose mappings are known to be the ones
    configured now; anything else starts over (pages done under other mappings would stay wrong)."""
    if fs is None:
        return {"action": "start", "reason": "no full sync has run yet"}
    if fs["state"] == "completed":
        return {"action": "start", "reason": "the last full sync completed"}
    if fs["state"] == "running":
        return {"action": "resume", "reason": "a full sync is running (after a restart it resumes by itself)"}
    if fs["position"] is None:
        return {"action": "start", "reason": f"the last full sync was {fs['state']} before its first checkpoint"}
    if started_with is None:
        return {"action": "start", "reason": f"the last full sync was {fs['state']}, and the mappings it used "
                                             "are not known"}
    if started_with != now_digest:
        return {"action": "start", "reason": f"the last full sync was {fs['state']}, and the mappings changed "
                                             "since"}
    return {"action": "resume", "reason": f"the last full sync was {fs['state']} after {fs['done']} records; "
                                          "the mappings are unchanged (--from-start starts over)"}
