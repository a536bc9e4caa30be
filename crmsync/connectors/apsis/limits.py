"""Client-side limits for APSIS endpoints whose quota is "N per window" rather than a steady rate.

Why not the shared token bucket: a bucket of rate r and burst b admits b + r·T calls in any window T, so
"10 imports a minute" cannot be honoured by a bucket without halving throughput. A sliding window admits
exactly ``limit`` calls in any ``window`` seconds. Time is trio's clock, so MockClock tests jump through it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
import trio

log = structlog.get_logger("crmsync.connectors.apsis.limits")


class SlidingWindowLimiter:
    """At most ``limit`` acquisitions in any ``window + margin`` seconds (FIFO among waiters).

    ``margin``: the server counts a request when it arrives, the client when it sends; a request slower on the
    way than the one sent a window later would make the server count ``limit + 1`` (the 1M-contact benchmark
    was answered a 429 so). Keeping ``margin`` seconds more between the first and the ``limit + 1``-th send
    absorbs that much difference in transit time, for a throughput cost of ``margin / window``."""

    def __init__(self, limit: int, window: float, *, name: str = "limit", margin: float = 0.0):
        if limit < 1 or window <= 0 or margin < 0:
            raise ValueError("limit must be >= 1, window > 0 and margin >= 0")
        self.limit = limit
        self.window = window
        self.margin = margin
        self.name = name
        self._stamps: deque[float] = deque()
        self._lock = trio.Lock()

    async def acquire(self) -> float:
        """Wait for a slot; returns seconds waited."""
        asked = trio.current_time()
        span = self.window + self.margin
        async with self._lock:
            while True:
                now = trio.current_time()
                # a stamp frees its slot at ``stamp + span``, computed the same way here and for the wait below:
                # waking at that deadline must free it, whatever the float rounding (``now - span`` compared to
                # the stamp could keep it, and a wait of 0.0 would spin forever)
                while self._stamps and self._stamps[0] + span <= now:
                    self._stamps.popleft()
                if len(self._stamps) < self.limit:
                    self._stamps.append(now)
                    return now - asked
                frees_at = self._stamps[0] + span
                log.debug("window_wait", limiter=self.name, delay_s=round(frees_at - now, 3))
                await trio.sleep_until(frees_at)


class ImportLimiter:
    """APSIS imports: 10 creations a minute and at most 3 imports pending at once, per account (§7).

    :meth:`slot` holds a concurrency slot for the whole life of an import (create → upload → poll until a
    final status); :meth:`SlidingWindowLimiter.acquire` is taken for each creation request.
    """

    def __init__(self, per_minute: int = 10, concurrent: int = 3, *, window: float = 60.0):
        self.creations = SlidingWindowLimiter(per_minute, window, name="apsis_imports", margin=window / 60)
        self.running = trio.CapacityLimiter(concurrent)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self.running:
            yield
