"""Bulk full sync reading Efficy key ranges with several sessions (issue 8 item 1): the checkpoint rule holds
as on one session (batches acknowledged in Efficy order, never past an unacknowledged import, exact resume
after a kill while ranges are in flight), and the APSIS state at the end is the same."""

from __future__ import annotations

from pathlib import Path

import trio

from crmsync.clock import WallClock
from crmsync.connectors.apsis import ApsisSimulator
from crmsync.connectors.efficy.paging import decode_position
from crmsync.connectors.efficy.simulator import EfficySimulator
from crmsync.state import queries as q
from tests.integrations.efficy_apsis.harness import NAME, make_config, world
from tests.integrations.efficy_apsis.test_bulk_parity import synced_world
from tests.integrations.efficy_apsis.test_full_sync import assert_exact, eligible


def range_reads(efficy: EfficySimulator) -> list[tuple[int, int]]:
    """The bounded key ranges ``(after, until]`` Efficy was asked for, in order."""
    ranges = []
    for body in efficy.rpc_log:
        for ctx in body:
            for f in ctx.get("@func", []):
                sql = f.get("sql", "")
                if f.get("@name") == "executesqlquery" and "from CONTACTS where" in sql and "<=" in sql:
                    after, until = str(f["queryparams"]).split("\n")
                    ranges.append((int(after), int(until)))
    return ranges


async def test_parallel_read_acknowledges_in_efficy_order_and_resumes_exactly_after_a_kill_mid_range(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    efficy = EfficySimulator(clock, api_key="efficy-test-key")
    apsis = ApsisSimulator(clock, client_id="crmsync", client_secret="apsis-test-secret",
                           public_url="http://apsis.test", import_rows_per_second=1.0)  # 10 s per 10 rows
    config = make_config(tmp_path, full_sync={"import_threshold": 1, "import_rows": 8, "page_size": 5,
                                              "read_sessions": 3})
    positions: list[int] = []
    async with world(tmp_path, clock, contacts=90, config=config, efficy=efficy, apsis=apsis) as w:
        w.efficy.faults.slow(3.0, times=1000)
        keys = [c["K_CONTACT"] for c in w.efficy.contacts()]
        await w.supervisor.full_sync(NAME)
        for _ in range(400):
            await trio.sleep(1)
            fs = await w.db.tx(q.get_full_sync, NAME)
            assert fs is not None
            if fs["position"] is None:
                continue
            upto = decode_position(fs["position"])
            positions.append(upto)
            # acknowledged in Efficy order: the count done is exactly the contacts up to the checkpoint
            assert fs["done"] == sum(1 for k in keys if k <= upto)
            # never past an unacknowledged import: every eligible contact up to the checkpoint is in APSIS
            due = [k for k in eligible(w) if k <= upto]
            assert all(w.apsis.profile(str(k)) is not None for k in due)
            if 25 <= fs["done"] < 70 and any(until > upto for _, until in range_reads(w.efficy)):
                break  # the process dies with key ranges beyond the checkpoint read or in flight
        fs = await w.db.tx(q.get_full_sync, NAME)
        assert fs is not None and fs["state"] == "running" and 25 <= fs["done"] < 70
        checkpoint = decode_position(fs["position"])
        assert len(range_reads(w.efficy)) > 0  # the ranges really were read on several sessions
    assert positions == sorted(positions)

    efficy.faults.clear()
    efficy.rpc_log.clear()
    async with world(tmp_path, clock, config=config, efficy=efficy, apsis=apsis, activate=False) as w:
        fs = await w.wait_full_sync()  # resumes by itself on start
        assert fs["state"] == "completed" and fs["done"] == 90
        assert min(after for after, _ in range_reads(efficy)) == checkpoint  # from the checkpoint, not before
        await assert_exact(w)


async def test_several_sessions_end_in_the_same_apsis_state_as_one(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    for sub in ("one", "three"):
        (tmp_path / sub).mkdir()
    one = await synced_world(tmp_path / "one", clock, threshold=1, page_size=4)
    three = await synced_world(tmp_path / "three", clock, threshold=1, page_size=4, read_sessions=3)
    assert one
    assert three == one
