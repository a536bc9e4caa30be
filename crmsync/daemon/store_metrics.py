"""The metrics that come from the store: restored when the daemon starts, refreshed at each scrape.

A counter kept in memory forgets at restart; the store does not. So the last success of each flow and its
failure streak are read back at start, and the gauges describing stored state (queue depth and age, dead
letters, full sync required, integration state) are read in one transaction each time ``/metrics`` is
scraped: they are then exact whoever changed the store (a reload, a kind, a previous process).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from crmsync.daemon.intake import QueueDepth
from crmsync.daemon.integrations.base import IntegrationKind
from crmsync.daemon.metrics import Metrics, StoreState
from crmsync.daemon.runtime import FULL_SYNC_FLOW, REALTIME_FLOW, IntegrationRuntime
from crmsync.state import Database
from crmsync.state import queries as q


def monitored_flows(kind: IntegrationKind) -> tuple[str, ...]:
    """Every flow that can produce runs: scheduled, on demand, full sync, real time."""
    return tuple(dict.fromkeys(kind.flows() + ((FULL_SYNC_FLOW,) if kind.supports_full_sync else ())
                               + ((REALTIME_FLOW,) if kind.supports_webhooks else ())))


def _timestamp(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


async def init_integration_metrics(db: Database, metrics: Metrics, name: str, kind: IntegrationKind) -> None:
    """Create the integration's series (see :meth:`Metrics.init_integration`) with what the store knows."""
    flows = monitored_flows(kind)

    def read(c: Any) -> dict[str, tuple[str | None, int]]:
        return {flow: q.flow_health(c, name, flow) for flow in flows}

    health = await db.tx(read)
    last_success = {flow: ts for flow, (iso, _) in health.items() if (ts := _timestamp(iso)) is not None}
    metrics.init_integration(name, flows, kind.systems, last_success=last_success,
                             consecutive_failures={flow: n for flow, (_, n) in health.items()})


def integration_state(active: bool, runtime: IntegrationRuntime | None, error: str | None) -> str:
    if not active:
        return "inactive"
    if error is not None or runtime is None:
        return "error"  # crashed: the supervisor restarts it with backoff
    if runtime.in_backoff:
        return "backoff"
    return "active"


async def refresh_store_metrics(db: Database, metrics: Metrics, kinds: Mapping[str, IntegrationKind],
                                runtimes: Mapping[str, IntegrationRuntime], errors: Mapping[str, str],
                                queue_depth: QueueDepth | None = None) -> None:
    names = list(kinds)

    def read(c: Any) -> dict[str, tuple[dict[str, Any], tuple[int, str | None, int]]]:
        return {n: (q.get_status(c, n) or {}, q.queue_summary(c, n)) for n in names}

    for name, (status, (depth, oldest, dead)) in (await db.tx(read)).items():
        active = bool(status.get("active"))
        if queue_depth is not None:  # the in-memory counter, re-synced: events queued by a flow count too
            queue_depth.load({name: depth})
        metrics.set_store_state(name, StoreState(
            queue_depth=depth, oldest_queued_at=_timestamp(oldest), dead_letters=dead,
            full_sync_required=bool(status.get("full_sync_required")),
            state=integration_state(active, runtimes.get(name), errors.get(name)),
        ))
