"""Shared fixtures: a fresh store, a simulated wall clock, and an in-process daemon with the fake kind."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import settings

import tests.fake_kind as fake_kind
from crmsync.clock import WallClock
from crmsync.daemon.config import Config, config_from_mapping
from crmsync.daemon.metrics import Metrics
from crmsync.daemon.supervisor import Supervisor
from crmsync.state import Database

# Property tests: CI runs the default profile (a few hundred examples per stateful test in well under a minute);
# HYPOTHESIS_PROFILE=nightly runs the long search (see docs/testing.md).
settings.register_profile("ci", max_examples=200, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("nightly", max_examples=100_000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long search runs for hours: the per-test timeout (pyproject, pytest-timeout) is for CI's runs."""
    if settings.get_current_profile_name() == "nightly":
        for item in items:
            item.add_marker(pytest.mark.timeout(0))


@pytest.fixture(autouse=True)
def _fresh_fake_worlds() -> None:
    fake_kind.WORLDS.clear()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    # inline: these tests run under MockClock, which would jump time during a worker-thread hop
    database = await Database.open(tmp_path / "test.db", inline=True, durable=False)
    yield database
    await database.aclose()


def fake_config(tmp_path: Path, integrations: dict[str, dict[str, Any]], **daemon: Any) -> Config:
    return config_from_mapping({
        "daemon": {"state_dir": str(tmp_path), "plugins": ["tests.fake_kind"], "timezone": "America/New_York",
                   "control_socket": str(tmp_path / "control.sock"), **daemon},
        "http": {"webhook_listen": "127.0.0.1:0"},
        "integrations": {name: {"kind": "fake", **cfg} for name, cfg in integrations.items()},
    })


@pytest.fixture
def sim_clock() -> WallClock:
    # midnight in New York on a Thursday before the US daylight-saving change of Sunday 2026-11-01
    return WallClock(start=datetime(2026, 10, 29, 4, 0, tzinfo=UTC))


async def start_supervisor(nursery: trio.Nursery, config: Config, db: Database, clock: WallClock) -> Supervisor:
    supervisor = Supervisor(config, db, Metrics(), clock)
    await nursery.start(supervisor.run)
    return supervisor
