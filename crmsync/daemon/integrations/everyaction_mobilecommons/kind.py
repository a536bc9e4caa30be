"""The plug between the daemon and the two connectors: config, schedules, API clients and the two flows."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import structlog
import trio

from crmsync.clock import WallClock
from crmsync.connectors.everyaction import EveryActionClient
from crmsync.connectors.mobilecommons import MobileCommonsClient
from crmsync.daemon.integrations.base import FlowError, IntegrationKind, SandboxPart
from crmsync.daemon.integrations.everyaction_mobilecommons.config import EveryActionMobileCommonsConfig
from crmsync.daemon.integrations.everyaction_mobilecommons.ea_to_mc import run_ea_to_mc
from crmsync.daemon.integrations.everyaction_mobilecommons.mc_to_ea import run_mc_to_ea
from crmsync.daemon.integrations.registry import register
from crmsync.daemon.runs import RunContext
from crmsync.daemon.schedule import Daily, Interval, Schedule
from crmsync.daemon.secrets import Secret

log = structlog.get_logger("crmsync.integrations.everyaction_mobilecommons.kind")

EA_TO_MC = "ea_to_mc"
MC_TO_EA = "mc_to_ea"


#: connections per pool shard: httpcore scans every connection of a pool (a poll() each) on every request, so
#: many workers on one pool spend more CPU on that scan than on the sync itself
CONNECTIONS_PER_SHARD = 4


class ShardedTransport(httpx.AsyncBaseTransport):
    """Several small connection pools behind one transport; each request goes to the least busy one."""

    def __init__(self, connections: int, per_shard: int = CONNECTIONS_PER_SHARD):
        count = max(1, -(-connections // per_shard))
        limits = httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
        tls = httpx.create_ssl_context()  # one for all shards: each costs milliseconds and memory to make
        self._shards = [httpx.AsyncHTTPTransport(verify=tls, limits=limits) for _ in range(count)]
        self._busy = [0] * count

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = min(range(len(self._shards)), key=self._busy.__getitem__)
        self._busy[index] += 1
        try:
            return await self._shards[index].handle_async_request(request)
        finally:
            self._busy[index] -= 1

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


def pooled_http(base_url: str, workers: int, transport: httpx.AsyncBaseTransport | None = None,
                timeout: float = 30.0) -> httpx.AsyncClient:
    """One HTTP client per API with a kept-alive connection for each worker, in small pool shards (see
    :class:`ShardedTransport`); ``transport`` (tests: an in-process simulator) replaces the network."""
    return httpx.AsyncClient(base_url=base_url, transport=transport or ShardedTransport(workers),
                             timeout=timeout, follow_redirects=False)


async def _shielded_close(http: httpx.AsyncClient) -> None:
    with trio.CancelScope(shield=True):
        await http.aclose()


def _reveal(value: Any) -> str | None:
    return value.reveal() if isinstance(value, Secret) else None


def first_nightly_not_before(activated_at: datetime, tz: Any) -> datetime:
    """"The first data sync will run the following morning": never on the activation's own evening.

    Activated at or after noon (local time): not before the next local midnight. Activated before noon: the
    coming night is already "the following morning", so no extra delay. The timer then picks the first
    nightly slot strictly after max(now, this instant)."""
    local = activated_at.astimezone(tz)
    if local.hour < 12:
        return activated_at
    midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), tzinfo=tz)
    return midnight - timedelta(seconds=1)


@register
class EveryActionMobileCommons(IntegrationKind):
    kind = "everyaction_mobilecommons"
    systems = ("everyaction", "mobilecommons")
    config_model = EveryActionMobileCommonsConfig
    scheduled_flows = (EA_TO_MC, MC_TO_EA)
    client_attributes = {"ea": "everyaction", "mc": "mobilecommons"}  # dry runs wrap these (issue 11)

    def __init__(self, ctx: Any, config: Any):
        super().__init__(ctx, config)
        self.ea: EveryActionClient | None = None
        self.mc: MobileCommonsClient | None = None

    @property
    def cfg(self) -> EveryActionMobileCommonsConfig:
        assert isinstance(self.config, EveryActionMobileCommonsConfig)
        return self.config

    def default_schedules(self) -> dict[str, Schedule]:
        start, end = self.cfg.day_hours
        return {EA_TO_MC: Daily(self.cfg.nightly_at), MC_TO_EA: Interval(self.cfg.day_every, start, end)}

    def first_run_not_before(self, flow: str, activated_at: Any) -> Any:
        if flow != EA_TO_MC or activated_at is None:
            return activated_at
        tz = ZoneInfo(self.cfg.timezone) if self.cfg.timezone else self.ctx.extra.get("timezone", UTC)
        return first_nightly_not_before(activated_at, tz)

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        ea_cfg, mc_cfg = self.cfg.everyaction, self.cfg.mobilecommons
        ea_key = _reveal(ea_cfg.api_key)
        assert ea_key is not None  # required by the config model
        workers, timeout = self.cfg.workers, self.ctx.http_timeout
        async with contextlib.AsyncExitStack() as stack:
            ea_http = pooled_http(ea_cfg.host, workers, self.ctx.transports.get("everyaction"), timeout)
            stack.push_async_callback(_shielded_close, ea_http)
            mc_http = pooled_http(mc_cfg.base_url, workers, self.ctx.transports.get("mobilecommons"), timeout)
            stack.push_async_callback(_shielded_close, mc_http)
            self.ea = EveryActionClient(
                ea_cfg.application_name, ea_key, db_mode=ea_cfg.db_mode, base_url=ea_cfg.host,
                poll_interval=ea_cfg.export_poll_interval.total_seconds(),
                job_timeout=ea_cfg.export_timeout.total_seconds(),
                exclude_changes_from_self=ea_cfg.exclude_changes_from_self,
                contact_columns=ea_cfg.contact_columns(), max_concurrency=workers, http=ea_http,
                observer=self.ctx.observer,
            )
            self.mc = MobileCommonsClient(
                mc_cfg.base_url, login=mc_cfg.login if mc_cfg.auth == "basic" else None,
                password=_reveal(mc_cfg.password), api_token=_reveal(mc_cfg.token),
                company_key=mc_cfg.company_key, constituent_id_field=mc_cfg.constituent_id_field,
                range_format=mc_cfg.range_format, max_concurrency=workers, http=mc_http,
                observer=self.ctx.observer,
            )
            try:
                yield
            finally:
                self.ea = self.mc = None

    async def run_flow(self, flow: str, run: RunContext) -> None:
        if self.ea is None or self.mc is None:
            raise FlowError(f"integration {self.name!r} is not open")
        if flow == EA_TO_MC:
            await run_ea_to_mc(self.cfg, self.ea, self.mc, run)
        elif flow == MC_TO_EA:
            await run_mc_to_ea(self.cfg, self.ea, self.mc, run)
        else:
            raise FlowError(f"{self.kind} has no flow {flow!r}")

    @classmethod
    async def sandbox(cls, *, name: str, clock: WallClock, contacts: int, secrets_dir: Path,
                      nursery: trio.Nursery) -> SandboxPart | None:
        from crmsync.daemon.integrations.everyaction_mobilecommons.sandbox import build_sandbox

        return await build_sandbox(name=name, clock=clock, contacts=contacts, secrets_dir=secrets_dir,
                                   nursery=nursery)
