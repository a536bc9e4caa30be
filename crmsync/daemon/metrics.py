"""Prometheus metrics, prefix ``crmsync_``, in a registry of their own (one per daemon, so tests can run
several). :class:`Metrics` is also the connectors' :class:`~crmsync.connectors.http.RequestObserver`.

Alerts need series that exist before the first event: ``increase(crmsync_runs_total{status="failed"}[1h])``
sees nothing when the series is born at 1. So :meth:`Metrics.init_integration` creates every labelled series
an alert reads (each configured integration and flow, each run status, each system) at 0 when the daemon
starts, and restores what the store knows (last success, consecutive failures). Gauges that describe the
store (queue depth and age, dead letters, full sync required, integration state) are refreshed from it at
each scrape (:meth:`Metrics.set_store_state`), so they are exact after a restart too.

``_created`` series are disabled: they doubled the exposition and read as sample values under the family's
HELP (``crmsync_records_created``).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from crmsync import __version__

disable_created_metrics()

CONTENT_TYPE = CONTENT_TYPE_LATEST

RUN_STATUSES = ("success", "partial", "failed", "cancelled")
RECORD_OUTCOMES = ("created", "updated", "unchanged", "rejected", "skipped")
INTEGRATION_STATES = ("active", "backoff", "error", "inactive")
RETRY_REASONS = ("rate_limited", "server_error", "timeout", "connection", "malformed")

# External API round trips: most are tens to hundreds of ms; EveryAction export polls and APSIS consent
# report downloads take longer.
API_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

@dataclass(frozen=True)
class StoreState:
    """What the store says about one integration, read in one transaction at scrape time."""

    queue_depth: int
    oldest_queued_at: float | None  # Unix time the oldest pending event was received
    dead_letters: int
    full_sync_required: bool
    state: str  # one of INTEGRATION_STATES


class Metrics:
    def __init__(self, now: Callable[[], float] | None = None) -> None:
        self.now = now or time.time  # the wall clock of queue ages (tests pass their clock)
        r = self.registry = CollectorRegistry(auto_describe=True)
        self._record_children: dict[tuple[str, str, str], Counter] = {}
        # the standard process_* (CPU, memory, open fds, start time) and python_* families
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.build_info = Info("crmsync_build", "crmsync version and Python runtime (value always 1)",
                               registry=r)
        self.build_info.info({"version": __version__, "python": platform.python_version(),
                              "implementation": platform.python_implementation()})
        self.records = Counter(
            "crmsync_records_total", "Records processed, by integration, flow and outcome",
            ["integration", "flow", "outcome"], registry=r,
        )
        self.runs = Counter(
            "crmsync_runs_total", "Finished runs, by integration, flow and status",
            ["integration", "flow", "status"], registry=r,
        )
        self.run_duration = Histogram(
            "crmsync_run_duration_seconds", "Duration of runs", ["integration", "flow"], registry=r,
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
        )
        self.last_success = Gauge(
            "crmsync_last_success_timestamp_seconds",
            "Unix time of the last successful (or partial) run; restored from the store at start",
            ["integration", "flow"], registry=r,
        )
        self.consecutive_failures = Gauge(
            "crmsync_consecutive_failed_runs", "Failed runs in a row, latest first (0 after a success)",
            ["integration", "flow"], registry=r,
        )
        self.full_sync_done = Gauge(
            "crmsync_full_sync_records_done", "Records written by the current or last full sync",
            ["integration"], registry=r,
        )
        self.full_sync_total = Gauge(
            "crmsync_full_sync_records_total_expected", "Records the current full sync expects (0: unknown)",
            ["integration"], registry=r,
        )
        self.full_sync_running = Gauge(
            "crmsync_full_sync_running", "1 while a full sync runs", ["integration"], registry=r,
        )
        self.full_sync_required = Gauge(
            "crmsync_full_sync_required", "1 when a config change or lost cursor asks for a full sync",
            ["integration"], registry=r,
        )
        self.queue_depth = Gauge(
            "crmsync_realtime_queue_depth", "Events waiting in the durable real-time queue",
            ["integration"], registry=r,
        )
        self.queue_age = Gauge(
            "crmsync_realtime_queue_oldest_age_seconds",
            "Age of the oldest event waiting in the real-time queue (0 when empty)", ["integration"], registry=r,
        )
        self.dead_letters = Gauge(
            "crmsync_realtime_dead_letters", "Queued events set aside after repeated non-transient failures, "
            "stored now", ["integration"], registry=r,
        )
        self.webhooks = Counter(
            "crmsync_webhook_requests_total", "Webhook requests by integration and HTTP status",
            ["integration", "status"], registry=r,
        )
        self.webhook_replays = Counter(
            "crmsync_webhook_replays_total", "Signed webhook bodies refused as replays (nothing stored)",
            ["integration"], registry=r,
        )
        self.api_requests = Counter(
            "crmsync_api_requests_total", "External API requests by system and status class",
            ["system", "status_class"], registry=r,
        )
        self.api_latency = Histogram(
            "crmsync_api_request_duration_seconds", "External API request latency by system (one attempt)",
            ["system"], registry=r, buckets=API_LATENCY_BUCKETS,
        )
        self.api_retries = Counter(
            "crmsync_api_retries_total", "External API requests retried, by system and reason",
            ["system", "reason"], registry=r,
        )
        self.rate_limit_waits = Counter(
            "crmsync_rate_limit_waits_total", "Times a client waited because of a rate limit",
            ["system"], registry=r,
        )
        self.rate_limit_wait_seconds = Counter(
            "crmsync_rate_limit_wait_seconds_total", "Seconds spent waiting on rate limits",
            ["system"], registry=r,
        )
        self.active = Gauge(
            "crmsync_integration_active", "1 when the integration is active", ["integration"], registry=r,
        )
        self.state = Gauge(
            "crmsync_integration_state", "1 for the integration's current state: active (running), backoff "
            "(retrying after an outage), error (crashed, restarting with backoff), inactive",
            ["integration", "state"], registry=r,
        )
        self.paused = Gauge(
            "crmsync_integration_paused", "1 when the integration is paused (crmsync pause)", ["integration"],
            registry=r,
        )
        self.control_commands = Counter(
            "crmsync_control_commands_total", "Control-socket commands by command and result",
            ["cmd", "result"], registry=r,
        )

    # -- series that exist from the start ------------------------------------------------------------------

    def init_integration(self, integration: str, flows: Iterable[str], systems: Iterable[str] = (), *,
                         last_success: dict[str, float] | None = None,
                         consecutive_failures: dict[str, int] | None = None) -> None:
        """Create every series an alert reads for this integration, at 0 or at the value the store holds."""
        last_success = last_success or {}
        consecutive_failures = consecutive_failures or {}
        for flow in flows:
            for status in RUN_STATUSES:
                self.runs.labels(integration, flow, status)
            for outcome in RECORD_OUTCOMES:
                self.records.labels(integration, flow, outcome)
            self.run_duration.labels(integration, flow)
            if flow in last_success:  # no series for a flow that never succeeded: an alert says so
                self.last_success.labels(integration, flow).set(last_success[flow])
            self.consecutive_failures.labels(integration, flow).set(consecutive_failures.get(flow, 0))
        for gauge in (self.full_sync_done, self.full_sync_total, self.full_sync_running, self.full_sync_required,
                      self.queue_depth, self.queue_age, self.dead_letters, self.active):
            gauge.labels(integration)
        self.set_state(integration, "inactive")
        for system in systems:
            self.init_system(system)

    def init_system(self, system: str) -> None:
        for reason in RETRY_REASONS:
            self.api_retries.labels(system, reason)
        self.rate_limit_waits.labels(system)
        self.rate_limit_wait_seconds.labels(system)
        self.api_latency.labels(system)

    def forget_integration(self, integration: str) -> None:
        """An integration removed from the config: its store gauges would otherwise stay frozen."""
        for gauge in (self.full_sync_done, self.full_sync_total, self.full_sync_running, self.full_sync_required,
                      self.queue_depth, self.queue_age, self.dead_letters, self.active):
            try:
                gauge.remove(integration)
            except KeyError:
                pass
        for state in INTEGRATION_STATES:
            try:
                self.state.remove(integration, state)
            except KeyError:
                pass

    def set_state(self, integration: str, state: str) -> None:
        for s in INTEGRATION_STATES:
            self.state.labels(integration, s).set(1 if s == state else 0)

    def set_store_state(self, integration: str, st: StoreState) -> None:
        self.queue_depth.labels(integration).set(st.queue_depth)
        age = max(0.0, self.now() - st.oldest_queued_at) if st.oldest_queued_at is not None else 0.0
        self.queue_age.labels(integration).set(age)
        self.dead_letters.labels(integration).set(st.dead_letters)
        self.full_sync_required.labels(integration).set(int(st.full_sync_required))
        self.active.labels(integration).set(int(st.state != "inactive"))
        self.set_state(integration, st.state)

    def run_finished(self, integration: str, flow: str, status: str, duration_s: float,
                     finished_at: float) -> None:
        self.runs.labels(integration, flow, status).inc()
        self.run_duration.labels(integration, flow).observe(duration_s)
        if status in ("success", "partial"):
            self.last_success.labels(integration, flow).set(finished_at)
            self.consecutive_failures.labels(integration, flow).set(0)
        elif status == "failed":
            self.consecutive_failures.labels(integration, flow).inc()

    # -- RequestObserver -----------------------------------------------------------------------------------

    def api_request(self, system: str, status_class: str, duration_s: float | None = None) -> None:
        self.api_requests.labels(system, status_class).inc()
        if duration_s is not None:
            self.api_latency.labels(system).observe(duration_s)

    def api_retry(self, system: str, reason: str) -> None:
        self.api_retries.labels(system, reason).inc()

    def rate_limit_wait(self, system: str, seconds: float) -> None:
        self.rate_limit_waits.labels(system).inc()
        self.rate_limit_wait_seconds.labels(system).inc(max(0.0, seconds))

    def record(self, integration: str, flow: str, outcome: str) -> None:
        # called once per synced record: the labelled child is looked up once per (integration, flow, outcome)
        key = (integration, flow, outcome)
        child = self._record_children.get(key)
        if child is None:
            child = self._record_children[key] = self.records.labels(integration, flow, outcome)
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
