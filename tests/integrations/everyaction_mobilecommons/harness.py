"""A world for end-to-end tests: both simulators, a daemon (Supervisor) against them, one simulated clock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import trio

from crmsync.clock import WallClock
from crmsync.connectors.everyaction import SIM_API_KEY, EveryActionSimulator
from crmsync.connectors.mobilecommons import MobileCommonsSimulator
from crmsync.daemon.config import Config, config_from_mapping
from crmsync.daemon.metrics import Metrics
from crmsync.daemon.supervisor import Supervisor
from crmsync.state import Database
from crmsync.state import queries as q

NAME = "ea-mc"
# Wednesday 2026-10-28, 13:00 in New York (17:00 UTC): activation happens in the afternoon
START = datetime(2026, 10, 28, 17, 0, tzinfo=UTC)


def make_config(tmp_path: Path, path_id: str | None, **section: Any) -> Config:
    (tmp_path / "ea.key").write_text(SIM_API_KEY + "\n")
    (tmp_path / "mc.pw").write_text("sim-password\n")
    mappings = section.pop("field_mappings", {"first_name": {"required": True}})
    return config_from_mapping({
        "daemon": {"state_dir": str(tmp_path), "timezone": "America/New_York",
                   "control_socket": str(tmp_path / "control.sock")},
        "http": {"webhook_listen": "127.0.0.1:0"},
        "integrations": {NAME: {
            "kind": "everyaction_mobilecommons",
            "everyaction": {"application_name": "crmsyncTest", "api_key_file": str(tmp_path / "ea.key"),
                            "host": "http://ea.test/v4"},
            "mobilecommons": {"auth": "basic", "login": "api@example.org",
                              "password_file": str(tmp_path / "mc.pw"), "base_url": "http://mc.test/api"},
            **({"default_opt_in_path_id": path_id} if path_id else {}),
            "field_mappings": mappings,
            **section,
        }},
    })


class CountingTransport(httpx.AsyncBaseTransport):
    """An in-process transport that remembers every (method, path): how tests count write calls."""

    def __init__(self, app: Any, calls: list[tuple[str, str]]):
        self.inner = httpx.ASGITransport(app=app)
        self.calls = calls

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.method, request.url.path))
        return await self.inner.handle_async_request(request)


WRITE_PATHS = ("/api/profile_update", "/api/profile_opt_out")


@dataclass
class World:
    clock: WallClock
    ea: EveryActionSimulator
    mc: MobileCommonsSimulator
    path_id: str
    campaign_id: str
    db: Database
    supervisor: Supervisor | None = None
    calls: list[tuple[str, str]] | None = None

    def transports(self) -> dict[str, httpx.AsyncBaseTransport]:
        self.calls = []
        return {"everyaction": CountingTransport(self.ea, self.calls),
                "mobilecommons": CountingTransport(self.mc, self.calls)}

    def write_calls(self) -> list[tuple[str, str]]:
        """Writes to either API: MC profile_update/opt_out, VAN POST people/... (but not find/exports)."""
        out = []
        for method, path in self.calls or []:
            if path in WRITE_PATHS:
                out.append((method, path))
            elif method == "POST" and path.startswith("/v4/people") and not path.endswith("/find"):
                out.append((method, path))
        return out

    async def start(self, nursery: trio.Nursery, config: Config) -> Supervisor:
        self.supervisor = Supervisor(config, self.db, Metrics(), self.clock, transports=self.transports())
        await nursery.start(self.supervisor.run)
        return self.supervisor

    async def run(self, flow: str) -> dict[str, Any]:
        assert self.supervisor is not None
        await trio.sleep(1)  # what was just seeded lies strictly before the run (export windows are [from, to))
        result = await self.supervisor.run_flow(NAME, flow, wait=True)
        return await self.supervisor.report(NAME, result["run_id"])

    async def runs(self, flow: str | None = None) -> list[dict[str, Any]]:
        return list(reversed(await self.db.tx(q.list_runs, NAME, 1000, flow)))


async def make_world(tmp_path: Path) -> World:
    clock = WallClock(start=START)
    ea = EveryActionSimulator(clock, polls_to_complete=2, rows_per_file=3)
    mc = MobileCommonsSimulator(clock)
    campaign = mc.add_campaign("Supporters")
    path = mc.add_opt_in_path(campaign.id, "Web join", welcome_message="Welcome to Supporters!")
    db = await Database.open(tmp_path / "state.db", inline=True, durable=False)
    return World(clock, ea, mc, path.id, campaign.id, db)


def rows_by_crm(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["crm_id"]: r for r in report["rows"] if r["crm_id"]}


def welcomes(world: World, phone: str) -> int:
    digits = "1" + phone[-10:]
    return sum(1 for w in world.mc.welcome_messages if w.phone_number == digits)
