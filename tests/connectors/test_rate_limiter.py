"""The APSIS token bucket (issue 8 item 2 and 6): the per-profile path works at the API budget, 100 requests
a second per account, never answered 429. With the configured defaults the bucket admits at most 100 calls in
any one second, and a caller that loses the event loop for a moment (a page being planned) does not lose the
budget of that moment: the rate over a sync stays >= 90 % of 100/s."""

from __future__ import annotations

import trio
import trio.testing

from crmsync.connectors.http import RateLimiter
from crmsync.daemon.integrations.efficy_apsis.config import ApsisSettings

DEFAULTS = ApsisSettings.model_fields


def _bucket() -> RateLimiter:
    return RateLimiter(DEFAULTS["rate_limit"].default, DEFAULTS["rate_burst"].default)


def _max_in_any_second(stamps: list[float]) -> int:
    best, lo = 0, 0
    for hi, t in enumerate(stamps):
        while stamps[lo] <= t - 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def test_default_bucket_never_admits_more_than_100_in_any_second(
        autojump_clock: trio.testing.MockClock) -> None:
    bucket = _bucket()
    stamps: list[float] = []

    async def caller(i: int) -> None:
        for n in range(120):
            await bucket.acquire()
            stamps.append(trio.current_time())
            if n % 7 == i % 7:
                await trio.sleep(0.3)  # idle now and then: the bucket refills up to its burst

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(caller, i)
    stamps.sort()
    assert _max_in_any_second(stamps) <= 100


async def test_a_caller_that_stalls_briefly_keeps_the_rate(autojump_clock: trio.testing.MockClock) -> None:
    """Every 10th call, the caller is busy for 40 ms (planning a page takes about that): the bucket must let
    the calls of that moment through after it, not drop them."""
    bucket = _bucket()
    started = trio.current_time()
    calls = 1000
    for n in range(calls):
        await bucket.acquire()
        if n % 10 == 9:
            await trio.sleep(0.04)
    rate = calls / (trio.current_time() - started)
    assert rate >= 90
