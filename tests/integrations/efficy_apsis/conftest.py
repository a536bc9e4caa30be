from __future__ import annotations

from datetime import UTC, datetime

import pytest

from crmsync.clock import WallClock


@pytest.fixture
def clock() -> WallClock:
    return WallClock(start=datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
