"""Wall-clock time as the daemon and the simulators see it.

Schedules are wall-clock ("nightly at 02:00 in America/New_York") but sleeping must go through trio's clock,
so that tests with ``trio.testing.MockClock(autojump_threshold=0)`` can jump a simulated week in
milliseconds. :class:`WallClock` is that bridge:

* ``WallClock()`` reads the real time (``time.time()``) and sleeps in bounded slices, so that NTP steps or a
  suspended VM are noticed within :data:`MAX_SLICE` seconds;
* ``WallClock(start=datetime(...))`` is a simulated clock: ``now()`` is ``start`` plus the trio time elapsed
  since the clock was first read inside ``trio.run``. Simulators take the same object, so "updated in the past
  48 hours" means the same thing on both sides.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import trio

MAX_SLICE = 300.0  # seconds; how long we trust trio's monotonic clock without re-reading the wall clock


class WallClock:
    def __init__(self, start: datetime | None = None):
        if start is not None and start.tzinfo is None:
            raise ValueError("WallClock start must be timezone-aware")
        self._start = start
        self._origin: float | None = None

    @property
    def simulated(self) -> bool:
        return self._start is not None

    def now(self) -> datetime:
        """The current time, timezone-aware in UTC."""
        if self._start is None:
            return datetime.now(UTC)
        if self._origin is None:
            self._origin = trio.current_time()
        return self._start + timedelta(seconds=trio.current_time() - self._origin)

    def timestamp(self) -> float:
        return self.now().timestamp()

    def advance_origin(self, seconds: float) -> None:
        """Simulated clocks only: move wall time forward without sleeping (tests of "two days later")."""
        if self._start is None:
            raise RuntimeError("cannot advance a real clock")
        self._start += timedelta(seconds=seconds)

    async def sleep_until(self, when: datetime) -> None:
        """Sleep until wall time ``when`` (re-checking the wall clock at least every MAX_SLICE seconds)."""
        while True:
            remaining = (when - self.now()).total_seconds()
            if remaining <= 0:
                return
            await trio.sleep(min(remaining, MAX_SLICE) if self._start is None else remaining)


def utcnow_real() -> datetime:
    return datetime.fromtimestamp(time.time(), UTC)
