"""Shared fixtures: a simulator on a simulated wall clock and a client wired to it without sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from crmsync.clock import WallClock
from crmsync.connectors.efficy.client import EfficyClient
from crmsync.connectors.efficy.simulator import EfficySimulator
from crmsync.connectors.http import RetryPolicy
from crmsync.connectors.simkit import asgi_client

API_KEY = "test-key-5f0c9a"
START = datetime(2024, 3, 14, 9, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> WallClock:
    return WallClock(start=START)


@pytest.fixture
async def sim(clock: WallClock) -> EfficySimulator:
    return EfficySimulator(clock, api_key=API_KEY)


def make_client(sim: EfficySimulator, **kwargs: object) -> EfficyClient:
    options: dict[str, object] = {"api_key": API_KEY, "retry": RetryPolicy(attempts=3, base_delay=0.01)}
    options.update(kwargs)
    return EfficyClient("http://sim.test", http=asgi_client(sim), **options)  # type: ignore[arg-type]


@pytest.fixture
async def client(sim: EfficySimulator) -> AsyncIterator[EfficyClient]:
    c = make_client(sim)
    try:
        yield c
    finally:
        await c.http.aclose()
