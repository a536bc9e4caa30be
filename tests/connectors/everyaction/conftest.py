"""Fixtures: a simulator on a simulated wall clock and a client wired to it without sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from crmsync.clock import WallClock
from crmsync.connectors.everyaction.client import EveryActionClient
from crmsync.connectors.everyaction.simulator import SIM_API_KEY, EveryActionSimulator
from crmsync.connectors.http import RetryPolicy
from crmsync.connectors.simkit import asgi_client

START = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)
APP_NAME = "crmsyncTest"
BASE = "http://sim.test/v4"


@pytest.fixture
def wall() -> WallClock:
    return WallClock(start=START)


@pytest.fixture
def sim(wall: WallClock) -> EveryActionSimulator:
    return EveryActionSimulator(wall, rows_per_file=2)


@pytest.fixture
async def http(sim: EveryActionSimulator) -> AsyncIterator[httpx.AsyncClient]:
    client = asgi_client(sim)
    yield client
    await client.aclose()


def make_client(http: httpx.AsyncClient, *, api_key: str = SIM_API_KEY, db_mode: int = 1,
                **kwargs: object) -> EveryActionClient:
    return EveryActionClient(APP_NAME, api_key, db_mode=db_mode, base_url=BASE, http=http,
                             retry=RetryPolicy(attempts=4, base_delay=0.5, max_delay=30), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def client(http: httpx.AsyncClient) -> EveryActionClient:
    return make_client(http)
