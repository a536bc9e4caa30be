"""Bulk path: the checkpoint never passes an unacknowledged import, and a crash resumes exactly."""

from __future__ import annotations

from pathlib import Path

import trio

from crmsync.clock import WallClock
from crmsync.connectors.apsis import ApsisSimulator
from crmsync.connectors.efficy.simulator import EfficySimulator
from crmsync.state import queries as q
from tests.integrations.efficy_apsis.harness import NAME, make_config, world
from tests.integrations.efficy_apsis.test_full_sync import assert_exact, eligible, page_starts


async def test_bulk_checkpoint_never_passes_an_unacknowledged_import_and_a_crash_resumes_exactly(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    efficy = EfficySimulator(clock, api_key="efficy-test-key")
    apsis = ApsisSimulator(clock, client_id="crmsync", client_secret="apsis-test-secret",
                           public_url="http://apsis.test", import_rows_per_second=1.0)  # 10 s per 10 rows
    config = make_config(tmp_path, full_sync={"import_threshold": 1, "import_rows": 8, "page_size": 10})
    seen: list[tuple[int, int]] = []
    async with world(tmp_path, clock, contacts=60, config=config, efficy=efficy, apsis=apsis) as w:
        w.efficy.faults.slow(3.0, times=1000)
        await w.supervisor.full_sync(NAME)
        for _ in range(200):
            await trio.sleep(1)
            fs = await w.db.tx(q.get_full_sync, NAME)
            assert fs is not None
            done_ids = [c["K_CONTACT"] for c in w.efficy.contacts()[:fs["done"]]]
            in_apsis = [cid for cid in done_ids if cid in eligible(w) and w.apsis.profile(str(cid))]
            # every eligible contact before the checkpoint is in APSIS: no checkpoint past an unfinished import
            assert len(in_apsis) == len([cid for cid in done_ids if cid in eligible(w)])
            seen.append((fs["done"], len(w.apsis.profiles())))
            if 16 <= fs["done"] < 60:
                break  # the process dies here, with batches after the checkpoint in flight
        fs = await w.db.tx(q.get_full_sync, NAME)
        assert fs is not None and fs["state"] == "running" and 0 < fs["done"] < 60
        checkpoint = fs["position"]
    assert any(profiles > 0 for _, profiles in seen)

    efficy.faults.clear()
    efficy.rpc_log.clear()
    async with world(tmp_path, clock, efficy=efficy, apsis=apsis, activate=False) as w:
        fs = await w.wait_full_sync()  # resumes by itself on start
        assert fs["state"] == "completed" and fs["done"] == 60
        assert page_starts(efficy)[0] == int(checkpoint.split(":")[1])  # from the checkpoint
        await assert_exact(w)
