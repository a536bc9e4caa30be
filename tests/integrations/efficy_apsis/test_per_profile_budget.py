"""Issue 8 item 2: the per-profile path works at the API budget.

The configured ``full_sync.concurrency`` is reached (the APSIS client's own cap no longer holds it at 4),
and the integration's one token bucket keeps every flow within APSIS's 100 requests/s (no 429).
"""

from __future__ import annotations

from pathlib import Path

import trio

from crmsync.clock import WallClock
from crmsync.connectors.apsis import ApsisSimulator
from tests.integrations.efficy_apsis.harness import NAME, make_config, world


async def test_full_sync_concurrency_is_reached_and_the_shared_bucket_keeps_under_100_per_second(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    apsis = ApsisSimulator(clock, client_id="crmsync", client_secret="apsis-test-secret",
                           public_url="http://apsis.test", latency=0.2)
    config = make_config(tmp_path, full_sync={"concurrency": 8, "page_size": 100},
                         apsis={"max_concurrency": 4})
    async with world(tmp_path, clock, contacts=300, config=config, apsis=apsis) as w:
        started = trio.current_time()
        await w.supervisor.full_sync(NAME)
        fs = await w.wait_full_sync()
        elapsed = trio.current_time() - started
        assert fs["state"] == "completed"
        assert apsis.max_in_flight == 8  # the configured concurrency, not the client's default cap of 4
        assert apsis.rate_limited == 0  # the token bucket kept every second within the account's 100
        calls = len(apsis.requests)
        assert calls / elapsed <= 100
