"""The supervisor: one child runtime per active integration, and the operations the control socket exposes.

Activation is persisted in the store, so an integration that was active comes back active after a restart
(and a full sync that was running resumes). ``reload`` restarts only the integrations whose config changed.
"""

from __future__ import annotations

import hashlib
import os
import time
import traceback
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import structlog
import trio

from crmsync import __version__
from crmsync.clock import WallClock
from crmsync.daemon.config import Config
from crmsync.daemon.intake import IntakeResult, QueueDepth, WebhookIntake
from crmsync.daemon.integrations import registry
from crmsync.daemon.integrations.base import FlowError, IntegrationContext, IntegrationKind, WebhookRejected
from crmsync.daemon.metrics import Metrics
from crmsync.daemon.pause import paused_since, set_paused
from crmsync.daemon.runtime import (
    FULL_SYNC_FLOW,
    FULL_SYNC_MAPPINGS_KEY,
    REALTIME_FLOW,
    FlowBusy,
    IntegrationRuntime,
    full_sync_plan,
    mappings_digest,
)
from crmsync.daemon.store_metrics import init_integration_metrics, refresh_store_metrics
from crmsync.state import Database
from crmsync.state import queries as q
from crmsync.state.dead_letters import oldest_dead

log = structlog.get_logger("crmsync.daemon.supervisor")

CRASH_BACKOFF_START = 5.0
CRASH_BACKOFF_MAX = 300.0
MAX_TRACE_PARTS = 6  # traceback parts kept for status: the exception line and the innermost frames


class CommandError(Exception):
    """An operation refused with a stable snake_case code (the control protocol's error codes)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Supervisor:
    def __init__(self, config: Config, db: Database, metrics: Metrics, clock: WallClock, *,
                 transports: dict[str, httpx.AsyncBaseTransport] | None = None):
        self.config = config
        self.db = db
        self.metrics = metrics
        self.clock = clock
        self.transports = transports or {}
        self.kinds: dict[str, IntegrationKind] = {}
        self.runtimes: dict[str, IntegrationRuntime] = {}
        self._nursery: trio.Nursery | None = None
        self._lock = trio.Lock()  # serialises activate/deactivate/reload
        self.errors: dict[str, str] = {}  # the last crash of each integration's runtime, for status
        self.error_traces: dict[str, str] = {}
        self.started_at = time.time()
        self.listen: dict[str, str | None] = {"webhooks": None, "metrics": None, "control": None}
        self.queue_depth = QueueDepth(metrics)
        self.intake = WebhookIntake(
            db, clock, metrics, self.queue_depth, window_s=config.http.webhook_commit_window_ms / 1000,
            max_batch=config.http.webhook_commit_max_requests, replay_window=config.http.webhook_replay_window)
        for name in config.integrations:
            self.kinds[name] = self._build_kind(name, config)

    # -- construction ------------------------------------------------------------------------------------

    def _build_kind(self, name: str, config: Config) -> IntegrationKind:
        icfg = config.integrations[name]
        kind_cls = registry.get_kind(icfg.kind)
        if kind_cls is None:  # config validation makes this unreachable
            raise CommandError("unknown_kind", f"unknown kind {icfg.kind!r}")
        ctx = IntegrationContext(
            name=name, db=self.db, clock=self.clock, observer=self.metrics,
            state_dir=Path(config.daemon.state_dir), transports=self.transports,
            extra={"timezone": config.timezone_of(name)},  # the zone the kind's schedules run in
        )
        return kind_cls(ctx, icfg)

    def _runtime(self, name: str) -> IntegrationRuntime:
        runtime = IntegrationRuntime(
            self.kinds[name], self.metrics, self.config.timezone_of(name),
            (self.config.daemon.report_retention_days, self.config.daemon.report_retention_runs),
            queue_depth=self.queue_depth,
        )
        runtime.on_healthy = partial(self._clear_error, name)
        runtime.consent_history_retention_days = self.config.daemon.consent_history_retention_days
        return runtime

    def _clear_error(self, name: str) -> None:
        self.errors.pop(name, None)
        self.error_traces.pop(name, None)

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        now = self.clock.now().isoformat()
        interrupted = await self.db.tx(q.interrupt_running_runs, now)
        if interrupted:
            log.info("runs_interrupted_by_previous_stop", count=interrupted)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.intake.run)
            statuses = {s["name"]: s for s in await self.db.tx(q.list_status)}
            for name in self.kinds:
                active = bool(statuses.get(name, {}).get("active"))
                await init_integration_metrics(self.db, self.metrics, name, self.kinds[name])
                self.metrics.active.labels(name).set(int(active))
                self.metrics.paused.labels(name).set(int(bool(await self.db.tx(paused_since, name))))
                if active:
                    await self._start(name)
            task_status.started()
            await trio.sleep_forever()

    async def _start(self, name: str) -> None:
        assert self._nursery is not None
        await self._nursery.start(self._supervise, name)
        log.info("integration_started", integration=name, kind=self.kinds[name].kind)

    async def _supervise(self, name: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run one integration; if it crashes outside a run (a bug, a broken client), log it, show it in
        status, and restart it with backoff. The other integrations and the daemon carry on."""
        delay = CRASH_BACKOFF_START
        started = False
        while True:
            runtime = self._runtime(name)
            self.runtimes[name] = runtime
            try:
                if started:
                    await runtime.run()
                else:
                    await runtime.run(task_status=task_status)
                    started = True
                return  # deactivated, stopped or removed
            except Exception as exc:
                if not started:
                    started = True
                    task_status.started()
                self.errors[name] = f"{type(exc).__name__}: {exc}"
                # what Kafka Connect shows as a task's trace: where it broke (the last frames), for status
                self.error_traces[name] = "".join(traceback.format_exception(exc)[-MAX_TRACE_PARTS:])
                log.exception("integration_crashed", integration=name, restart_in_s=delay)
            if self.runtimes.get(name) is not runtime or runtime.stopping:
                return  # stopped or replaced while crashing: do not come back
            await trio.sleep(delay)
            if self.runtimes.get(name) is not runtime:
                return
            delay = min(delay * 2, CRASH_BACKOFF_MAX)

    async def _stop(self, name: str, grace: float = 10.0) -> None:
        runtime = self.runtimes.pop(name, None)
        self._clear_error(name)
        if runtime is None:
            return
        runtime.request_stop()
        with trio.move_on_after(grace):
            await runtime.stopped.wait()
        runtime.cancel()
        await runtime.stopped.wait()
        log.info("integration_stopped", integration=name)

    async def shutdown(self, grace: float) -> None:
        """Graceful stop of every integration within ``grace`` seconds, then cancel what is left."""
        runtimes = list(self.runtimes.values())
        for r in runtimes:
            r.request_stop()
        with trio.move_on_after(grace):
            for r in runtimes:
                await r.stopped.wait()
        for r in runtimes:
            r.cancel()
        for r in runtimes:
            await r.stopped.wait()
        self.runtimes.clear()

    # -- commands ----------------------------------------------------------------------------------------

    def _kind(self, name: Any) -> IntegrationKind:
        if not isinstance(name, str) or not name:
            raise CommandError("bad_request", "an integration name is required")
        kind = self.kinds.get(name)
        if kind is None:
            raise CommandError("unknown_integration", f"no integration named {name!r}; "
                               f"configured: {', '.join(sorted(self.kinds)) or 'none'}")
        return kind

    def _active_runtime(self, name: str) -> IntegrationRuntime:
        self._kind(name)
        runtime = self.runtimes.get(name)
        if runtime is None:
            raise CommandError("not_active", f"integration {name!r} is not active; activate it first")
        return runtime

    async def activate(self, name: str) -> dict[str, Any]:
        kind = self._kind(name)
        async with self._lock:
            changed = await self.db.tx(q.set_active, name, kind.kind, True, self.clock.now().isoformat())
            if name not in self.runtimes:
                await self._start(name)
            self.metrics.active.labels(name).set(1)
        return {"integration": name, "active": True, "changed": changed}

    async def deactivate(self, name: str) -> dict[str, Any]:
        kind = self._kind(name)
        async with self._lock:
            changed = await self.db.tx(q.set_active, name, kind.kind, False, self.clock.now().isoformat())
            await self._stop(name)
            self.metrics.active.labels(name).set(0)
        return {"integration": name, "active": False, "changed": changed}

    async def pause(self, name: str) -> dict[str, Any]:
        """Hold timers, the real-time queue and full-sync pages; webhooks are still accepted and kept."""
        self._kind(name)
        async with self._lock:
            since = self.clock.now().isoformat()
            changed = await self.db.tx(set_paused, name, since)
            runtime = self.runtimes.get(name)
            if runtime is not None:
                runtime.pause_gate.pause()
            self.metrics.paused.labels(name).set(1)
            if changed:
                log.info("integration_paused", integration=name)
            held_since = await self.db.tx(paused_since, name)
        return {"integration": name, "paused": True, "since": held_since, "changed": changed}

    async def resume(self, name: str) -> dict[str, Any]:
        """Release what pause held: the queue drains in arrival order, a timer slot missed fires once."""
        self._kind(name)
        async with self._lock:
            changed = await self.db.tx(set_paused, name, None)
            runtime = self.runtimes.get(name)
            if runtime is not None:
                runtime.pause_gate.resume()
                runtime.wake_queue()
            self.metrics.paused.labels(name).set(0)
            if changed:
                log.info("integration_resumed", integration=name)
        return {"integration": name, "paused": False, "changed": changed}

    def _refuse_if_paused(self, name: str) -> None:
        runtime = self.runtimes.get(name)
        if runtime is not None and runtime.pause_gate.paused:
            raise CommandError("paused", f"integration {name!r} is paused; 'crmsync resume {name}' first")

    async def full_sync(self, name: str, from_start: bool = False) -> dict[str, Any]:
        """Start a full sync: resume a cancelled or failed one from its checkpoint when its mappings are
        unchanged (see ``full_sync_plan``), or start over (always with ``from_start``)."""
        kind = self._kind(name)
        if not kind.supports_full_sync:
            raise CommandError("unsupported", f"{kind.kind} has no full sync")
        runtime = self._active_runtime(name)
        self._refuse_if_paused(name)
        if runtime.full_sync_running():
            raise CommandError("already_running", f"a full sync is already running for {name}")
        plan = await self._full_sync_plan(name)
        resume = plan["action"] == "resume" and not from_start
        try:
            run_id = await runtime.start_full_sync(resume=resume)
        except FlowBusy as exc:
            raise CommandError("already_running", str(exc)) from None
        except FlowError as exc:
            raise CommandError("not_active", str(exc)) from None
        reason = "--from-start: starting over" if from_start and plan["action"] == "resume" else plan["reason"]
        return {"integration": name, "run_id": run_id, "flow": FULL_SYNC_FLOW,
                "resumed": resume, "reason": reason}

    async def _full_sync_plan(self, name: str) -> dict[str, Any]:
        def read(c: Any) -> tuple[dict[str, Any] | None, str | None]:
            return q.get_full_sync(c, name), q.kv_get(c, name, FULL_SYNC_MAPPINGS_KEY)

        fs, started_with = await self.db.tx(read)
        return full_sync_plan(fs, started_with, mappings_digest(self.kinds[name]))

    def _flow_names(self, kind: IntegrationKind) -> tuple[str, ...]:
        """Every flow name of a kind that runs, reports and status know (full_sync and realtime included)."""
        return kind.flows() + ((FULL_SYNC_FLOW,) if kind.supports_full_sync else ()) + (
            (REALTIME_FLOW,) if kind.supports_webhooks else ())

    def _check_flow(self, kind: IntegrationKind, flow: str) -> None:
        names = self._flow_names(kind)
        if flow not in names:
            raise CommandError("unknown_flow", f"{kind.kind} has no flow {flow!r}; it has {', '.join(names)}")

    async def cancel(self, name: str, flow: str | None = None) -> dict[str, Any]:
        kind = self._kind(name)
        if flow is not None:
            self._check_flow(kind, flow)
            if flow == REALTIME_FLOW:
                raise CommandError("unsupported", "the real-time queue is not cancelled (a batch is short); "
                                   f"'deactivate {name}' stops it")
        runtime = self._active_runtime(name)
        cancelled = runtime.cancel_runs(flow)
        if not cancelled:
            what = f"{flow} is not running" if flow else "no full sync or flow is running"
            raise CommandError("not_running", f"nothing to cancel: {what} for {name!r}")
        for item in cancelled:
            event = runtime.done_event(item["run_id"])
            if event is not None:
                with trio.move_on_after(30):
                    await event.wait()
        result: dict[str, Any] = {"integration": name, "cancelled": cancelled}
        if any(item["flow"] == FULL_SYNC_FLOW for item in cancelled):
            result["full_sync_next"] = await self._full_sync_plan(name)
        return result

    async def run_flow(self, name: str, flow: str, wait: bool = False) -> dict[str, Any]:
        kind = self._kind(name)
        if flow == FULL_SYNC_FLOW and kind.supports_full_sync:
            result = await self.full_sync(name)
            run_id = result["run_id"]
        else:
            if flow not in kind.flows():
                raise CommandError("unknown_flow", f"{kind.kind} has no flow {flow!r} to run; "
                                   f"it has {', '.join(self._runnable(kind)) or 'none'}")
            runtime = self._active_runtime(name)
            self._refuse_if_paused(name)
            try:
                run_id = await runtime.start_flow(flow, "command")
            except FlowBusy as exc:
                raise CommandError("already_running", str(exc)) from None
            except FlowError as exc:
                raise CommandError("flow_error", str(exc)) from None
        if wait:
            current = self.runtimes.get(name)
            event = current.done_event(run_id) if current else None
            if event is not None:
                await event.wait()
            run = await self.db.tx(q.get_run, run_id)
            return {"integration": name, "flow": flow, "run_id": run_id, "run": run,
                    "timezone": str(self.config.timezone_of(name))}
        return {"integration": name, "flow": flow, "run_id": run_id}

    def _runnable(self, kind: IntegrationKind) -> tuple[str, ...]:
        return kind.flows() + ((FULL_SYNC_FLOW,) if kind.supports_full_sync else ())

    async def runs(self, name: str, limit: int = 20, flow: str | None = None) -> dict[str, Any]:
        kind = self._kind(name)
        if flow is not None:
            self._check_flow(kind, flow)
        return {"integration": name, "timezone": str(self.config.timezone_of(name)),
                "runs": await self.db.tx(q.list_runs, name, limit, flow)}

    async def report(self, name: str, run_id: int | None = None, flow: str | None = None,
                     outcome: str | None = None, record: str | None = None, limit: int = 1000,
                     offset: int = 0) -> dict[str, Any]:
        """A run's report: ``run_id``, else the latest run (of ``flow``); rows filtered by ``outcome`` and
        ``record`` (its id in either system), paged by ``limit`` and ``offset``."""
        kind = self._kind(name)
        if flow is not None:
            self._check_flow(kind, flow)
        run: dict[str, Any] | None
        if run_id is None:
            runs = await self.db.tx(q.list_runs, name, 1, flow)
            if not runs:
                raise CommandError("no_runs", f"{name!r} has no {flow + ' ' if flow else ''}runs yet")
            run = runs[0]
        else:
            run = await self.db.tx(q.get_run, run_id)
            if run is None or run["integration"] != name:
                raise CommandError("unknown_run", f"{name!r} has no run {run_id}")
            if flow is not None and run["flow"] != flow:
                raise CommandError("unknown_run", f"run {run_id} of {name!r} is a {run['flow']} run, not {flow}")
        assert run is not None
        rid = run["id"]

        def read(c: Any) -> tuple[list[dict[str, Any]], int]:
            return (q.report_rows(c, rid, limit, offset, outcome=outcome, record=record),
                    q.count_report_rows(c, rid, outcome=outcome, record=record))

        rows, total_rows = await self.db.tx(read)
        return {
            "integration": name, "timezone": str(self.config.timezone_of(name)), "run": run,
            "counts": run["counts"] or _empty_counts(), "rows": rows, "rows_total": total_rows,
            "filters": {k: v for k, v in (("outcome", outcome), ("record", record)) if v is not None},
            "offset": offset,
        }

    async def reload(self, new: Config) -> dict[str, Any]:
        """Apply a validated config: only integrations that were added, removed or changed restart."""
        async with self._lock:
            old = self.config
            added = [n for n in new.integrations if n not in old.integrations]
            removed = [n for n in old.integrations if n not in new.integrations]
            changed = [n for n in new.integrations if n in old.integrations
                       and new.integrations[n] != old.integrations[n]]
            restart_needed = []
            if new.daemon.model_dump(exclude={"plugins"}) != old.daemon.model_dump(exclude={"plugins"}):
                restart_needed.append("daemon")
            if new.http != old.http:
                restart_needed.append("http")
            self.config = new.model_copy(update={"daemon": old.daemon, "http": old.http})
            for name in removed:
                await self._stop(name)
                self.kinds.pop(name, None)
                self.metrics.forget_integration(name)
            statuses = {s["name"]: s for s in await self.db.tx(q.list_status)}
            for name in changed + added:
                was_running = name in self.runtimes
                await self._stop(name)
                previous = self.kinds.get(name)
                self.kinds[name] = self._build_kind(name, self.config)
                await init_integration_metrics(self.db, self.metrics, name, self.kinds[name])
                if previous is not None:
                    note = self.kinds[name].config_change_note(previous.config)
                    if note:
                        await self.db.tx(self._require_full_sync, name, note, self.clock.now().isoformat())
                if was_running or statuses.get(name, {}).get("active"):
                    await self._start(name)
            return {"added": added, "removed": removed, "changed": changed,
                    "unchanged": [n for n in new.integrations if n not in added and n not in changed],
                    "restart_required_for": restart_needed}

    def _require_full_sync(self, c: Any, name: str, note: str, now: str) -> None:
        if q.get_status(c, name) is None:
            q.set_active(c, name, self.kinds[name].kind, False, now)
        q.set_full_sync_required(c, name, True, note)

    async def refresh_metrics(self) -> None:
        """Before a scrape: the gauges that describe the store, read from it (see store_metrics)."""
        await refresh_store_metrics(self.db, self.metrics, self.kinds, self.runtimes, self.errors,
                                    self.queue_depth)

    # -- webhooks ----------------------------------------------------------------------------------------

    async def accept_webhook(self, name: str, headers: Mapping[str, str], body: bytes) -> IntakeResult:
        """Parse and durably queue a webhook's events (group commit, see intake.py); the result says how many
        were new, or that the body is a replay. Raises WebhookRejected, or IntakeFailed (nothing stored)."""
        kind = self.kinds.get(name)
        if kind is None or not kind.supports_webhooks:
            raise CommandError("unknown_integration", f"no webhook endpoint for {name!r}")
        events = kind.parse_webhook(headers, body)
        if not events:
            raise WebhookRejected("the body holds no events")
        items = [(e.dedupe_key, e.payload) for e in events]
        result = await self.intake.submit(name, items, hashlib.sha256(body).hexdigest())
        runtime = self.runtimes.get(name)
        if runtime is not None and result.accepted:
            runtime.wake_queue()
        return result

    # -- status ------------------------------------------------------------------------------------------

    async def status(self, name: str | None = None) -> dict[str, Any]:
        if name:
            self._kind(name)
            return await self._integration_status(name, full=True)
        return {
            "daemon": {
                "version": __version__,
                "pid": os.getpid(),
                "uptime_s": round(time.time() - self.started_at, 1),
                "webhooks": self.listen.get("webhooks"),
                "metrics": self.listen.get("metrics"),
                "control_socket": self.listen.get("control"),
                "store": str(self.db.path),
                "config": self.config.source,
                "timezone": self.config.daemon.timezone,
            },
            "integrations": [await self._integration_status(n, full=False) for n in sorted(self.kinds)],
        }

    async def _integration_status(self, name: str, *, full: bool) -> dict[str, Any]:
        kind = self.kinds[name]
        runtime = self.runtimes.get(name)

        def read(c: Any) -> dict[str, Any]:
            st = q.get_status(c, name) or {}
            flows = {}
            for flow in self._flow_names(kind):
                last = q.last_run(c, name, flow)
                flows[flow] = {"last_run": _run_brief(last)}
            return {
                "status": st,
                "paused_since": paused_since(c, name),
                "flows": flows,
                "full_sync": q.get_full_sync(c, name),
                "full_sync_mappings": q.kv_get(c, name, FULL_SYNC_MAPPINGS_KEY) if kind.supports_full_sync else None,
                "queue_depth": q.queue_depth(c, name) if kind.supports_webhooks else 0,
                "dead_letters": q.count_dead_letters(c, name) if kind.supports_webhooks else 0,
                "dead_letters_oldest": oldest_dead(c, name) if kind.supports_webhooks else None,
                "cursors": q.list_cursors(c, name) if full else None,
                "links": q.count_links(c, name) if full else None,
            }

        data = await self.db.tx(read)
        st = data["status"]
        schedules = runtime.schedules if runtime else kind.schedules()
        for flow, info in data["flows"].items():
            info["schedule"] = schedules[flow].describe() if flow in schedules else (
                "continuous (webhook queue)" if flow == REALTIME_FLOW else "on command")
            nxt = runtime.next_runs.get(flow) if runtime else None
            info["next_run"] = nxt.isoformat() if nxt else None
            info["running"] = bool(runtime and flow in runtime.running_flows().values())
        fs = data["full_sync"]
        full_sync = None
        if fs:
            full_sync = {k: fs[k] for k in ("state", "run_id", "done", "total", "started_at", "updated_at",
                                             "finished_at")}
            if runtime and runtime.full_sync_progress and fs["state"] == "running":
                full_sync["rate_per_s"] = runtime.full_sync_progress["rate_per_s"]
        result: dict[str, Any] = {
            "name": name,
            "kind": kind.kind,
            "active": bool(st.get("active")),
            "since": st.get("since"),
            "timezone": str(self.config.timezone_of(name)),
            "paused": data["paused_since"] is not None,
            "paused_since": data["paused_since"],
            "notes": kind.config.notes,
            "running": runtime is not None and name not in self.errors,
            "error": self.errors.get(name),
            "error_trace": self.error_traces.get(name) if full else None,
            "full_sync_next": (full_sync_plan(fs, data["full_sync_mappings"], mappings_digest(kind))
                               if kind.supports_full_sync else None),
            "full_sync_required": bool(st.get("full_sync_required")),
            "full_sync_required_reason": st.get("full_sync_required_reason"),
            "full_sync": full_sync,
            "queue_depth": data["queue_depth"],
            "dead_letters": data["dead_letters"],
            "dead_letters_oldest": data["dead_letters_oldest"],
            "flows": data["flows"],
        }
        if full:
            result["cursors"] = data["cursors"]
            result["links"] = data["links"]
        return result


def _run_brief(run: dict[str, Any] | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {k: run[k] for k in ("id", "status", "started_at", "finished_at", "counts", "error")}


def _empty_counts() -> dict[str, Any]:
    return {"fetched": 0, "created": 0, "updated": 0, "unchanged": 0, "rejected": 0, "skipped": {}}
