"""Shared fixtures: a simulator on a simulated wall clock and a client wired to it without sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from crmsync.clock import WallClock
from crmsync.connectors.http import RetryPolicy
from crmsync.connectors.mobilecommons.client import MobileCommonsClient
from crmsync.connectors.mobilecommons.simulator import MobileCommonsSimulator
from crmsync.connectors.simkit import asgi_client

START = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
LOGIN = "api@example.org"
PASSWORD = "s3cret-Pa55"
TOKEN = "tok-abcdef123456"


@pytest.fixture
def clock() -> WallClock:
    return WallClock(start=START)


@pytest.fixture
def sim(clock: WallClock) -> MobileCommonsSimulator:
    return MobileCommonsSimulator(clock, login=LOGIN, password=PASSWORD, api_token=TOKEN)


@pytest.fixture
async def client(sim: MobileCommonsSimulator) -> AsyncIterator[MobileCommonsClient]:
    async with asgi_client(sim) as http:
        yield MobileCommonsClient(
            "http://sim.test/api", login=LOGIN, password=PASSWORD, http=http,
            retry=RetryPolicy(attempts=4, base_delay=0.5, max_delay=5.0),
        )
