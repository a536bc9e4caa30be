"""Prometheus metrics, prefix ``crmsync_``, in a registry of their own (one per daemon, so tests can run
several). :class:`Metrics` is also the connectors' :class:`~crmsync.connectors.http.RequestObserver`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
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
            "crmsync_last_success_timestamp_seconds", "Unix time of the last successful run",
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
        self.queue_depth = Gauge(
            "crmsync_realtime_queue_depth", "Events waiting in the durable real-time queue",
            ["integration"], registry=r,
        )
        self.dead_letters = Counter(
            "crmsync_realtime_dead_letters_total", "Queued events set aside after repeated non-transient failures",
            ["integration"], registry=r,
        )
        self.webhooks = Counter(
            "crmsync_webhook_requests_total", "Webhook requests by integration and HTTP status",
            ["integration", "status"], registry=r,
        )
        self.api_requests = Counter(
            "crmsync_api_requests_total", "External API requests by system and status class",
            ["system", "status_class"], registry=r,
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
        self.paused = Gauge(
            "crmsync_integration_paused", "1 when the integration is paused (crmsync pause)", ["integration"],
            registry=r,
        )
        self.control_commands = Counter(
            "crmsync_control_commands_total", "Control-socket commands by command and result",
            ["cmd", "result"], registry=r,
        )

    # RequestObserver
    def api_request(self, system: str, status_class: str) -> None:
        self.api_requests.labels(system, status_class).inc()

    def rate_limit_wait(self, system: str, seconds: float) -> None:
        self.rate_limit_waits.labels(system).inc()
        self.rate_limit_wait_seconds.labels(system).inc(max(0.0, seconds))

    def record(self, integration: str, flow: str, outcome: str) -> None:
        self.records.labels(integration, flow, outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
