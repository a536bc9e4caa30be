"""Fixtures: a simulated wall clock, an APSIS simulator on it, and a client wired to the simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from trio.testing import MockClock

from crmsync.clock import WallClock
from crmsync.connectors.apsis.client import ApsisClient
from crmsync.connectors.apsis.simulator import ApsisSimulator
from crmsync.connectors.simkit import asgi_client

SECRET = "s3cr3t-value-never-logged"


@pytest.fixture
def clock(autojump_clock: MockClock) -> WallClock:
    """Simulated wall time on trio's MockClock: every test here can sleep through hours instantly."""
    return WallClock(start=datetime(2024, 3, 14, 9, 0, tzinfo=UTC))


@pytest.fixture
def sim(clock: WallClock) -> ApsisSimulator:
    return ApsisSimulator(clock, client_id="crmsync", client_secret=SECRET)


@pytest.fixture
async def make_client(sim: ApsisSimulator, clock: WallClock) -> AsyncIterator[Callable[..., ApsisClient]]:
    made: list[ApsisClient] = []

    def make(target: ApsisSimulator | None = None, **kwargs: Any) -> ApsisClient:
        app = target or sim
        options: dict[str, Any] = {"client_id": "crmsync", "client_secret": SECRET, "clock": clock,
                                   "import_poll_interval": 1.0}
        options.update(kwargs)
        client = ApsisClient("http://sim.test", http=asgi_client(app), **options)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.http.aclose()


@pytest.fixture
def client(make_client: Callable[..., ApsisClient]) -> ApsisClient:
    return make_client()
