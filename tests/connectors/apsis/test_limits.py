"""APSIS's "N per window" quotas (10 import creations a minute, one consent report a second) are counted by
APSIS when a request *arrives*, and by the client when it *sends*: a request that takes longer on the way
than the one sent a window later must still not make the server count N + 1 in a window (issue 8: "no 429
in steady state"; the 1M-contact benchmark was answered one 429 on an import creation)."""

from __future__ import annotations

import trio
import trio.testing

from crmsync.connectors.apsis.limits import ImportLimiter, SlidingWindowLimiter


async def _send_times(limiter: SlidingWindowLimiter, n: int) -> list[float]:
    times = []
    for _ in range(n):
        await limiter.acquire()
        times.append(trio.current_time())
    return times


def _most_in_any_window(arrivals: list[float], window: float) -> int:
    arrivals = sorted(arrivals)
    return max(sum(1 for t in arrivals if start <= t < start + window) for start in arrivals)


async def test_import_creations_stay_within_ten_a_minute_as_apsis_counts_them_on_arrival(
        autojump_clock: trio.testing.MockClock) -> None:
    limiter = ImportLimiter(per_minute=10, concurrent=3)
    sent = await _send_times(limiter.creations, 30)
    # the worst case for the server's count: the first of each ten is slow on the way (up to the margin the
    # client keeps), the rest arrive at once
    margin = limiter.creations.margin
    assert margin >= 0.5
    for lag in (0.0, margin * 0.99):
        arrivals = [t + (lag if i % 10 == 0 else 0.0) for i, t in enumerate(sent)]
        assert _most_in_any_window(arrivals, 60.0) <= 10


async def test_the_margin_costs_no_more_than_the_margin_per_window(autojump_clock: trio.testing.MockClock) -> None:
    limiter = SlidingWindowLimiter(10, 60.0, margin=1.0)
    sent = await _send_times(limiter, 21)
    assert sent[10] - sent[0] == 61.0
    assert sent[20] - sent[10] == 61.0
    assert sent[9] - sent[0] == 0.0  # a burst of ten still goes at once
