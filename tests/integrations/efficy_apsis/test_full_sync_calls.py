"""Issue 8 item 1: a bulk full sync is really bulk. Call counts are deterministic, so they are asserted."""

from __future__ import annotations

from pathlib import Path

import trio

from crmsync.clock import WallClock
from tests.integrations.efficy_apsis.harness import NAME, NEWS_SMS, VIP, make_config, world


async def test_a_10k_contact_bulk_full_sync_makes_at_most_100_apsis_calls_and_a_rerun_writes_nothing(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    config = make_config(tmp_path, full_sync={"import_threshold": 1, "page_size": 500})
    async with world(tmp_path, clock, contacts=10_000, config=config) as w:
        no_mobile = [c["K_CONTACT"] for c in w.efficy.contacts()[::10]]
        for cid in no_mobile:  # no SMS address: no SMS consent is sent (issue 7 item 8), nor a call per profile
            w.efficy.update_contact(cid, MOBILE="")
        w.efficy.drain_outbox()
        await w.supervisor.full_sync(NAME)
        fs = await w.wait_full_sync()
        assert fs["state"] == "completed" and fs["done"] == 10_000
        calls = len(w.apsis.requests)
        run = await w.last_run("full_sync")
        assert run["status"] == "success"
        created = run["counts"]["created"]
        assert created == len(w.apsis.profiles()) > 5_000
        assert calls <= 100, calls  # 0.01 per contact
        assert w.apsis.writes["consent"] == w.apsis.writes["patch_tags"] == 0  # all in the import files
        assert w.apsis.rate_limited == 0
        for cid in no_mobile:
            assert NEWS_SMS not in w.apsis.consents_of(str(cid))
        # query tags travel in the imports too: the tags flow after the sync has nothing left to patch
        vip = [p.key for p in w.apsis.profiles() if VIP in p.tags]
        assert vip and all(int(key) % 2 == 0 for key in vip)

        writes = w.apsis.write_calls
        await w.supervisor.full_sync(NAME)
        await w.wait_full_sync()
        assert w.apsis.write_calls == writes  # a no-change rerun writes nothing
