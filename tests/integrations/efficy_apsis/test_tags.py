"""The periodic ``tags`` flow: query members get the tag, those who left the query lose it."""

from __future__ import annotations

from pathlib import Path

import trio

from crmsync.clock import WallClock
from tests.integrations.efficy_apsis.harness import NAME, PROSPECT, VIP, world


async def test_query_members_are_tagged_and_leavers_untagged(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    async with world(tmp_path, clock, contacts=20) as w:
        await w.supervisor.full_sync(NAME)
        assert (await w.wait_full_sync())["state"] == "completed"
        synced = [c["K_CONTACT"] for c in w.efficy.contacts() if w.apsis.profile(str(c["K_CONTACT"]))]
        stay, leave, join = synced[0], synced[2], synced[1]
        w.efficy.add_query("VIP", [stay, leave], query_id=99990001)  # the saved query now returns two
        writes_before = w.apsis.write_calls
        result = await w.supervisor.run_flow(NAME, "tags", wait=True)
        assert result["run"]["status"] == "success"
        tagged = {cid for cid in synced if VIP in w.apsis.tags_of(str(cid))}
        assert tagged == {stay, leave}
        # membership changes: one leaves, one joins; the flow follows, untagging the leaver
        w.efficy.add_query("VIP", [stay, join], query_id=99990001)
        await w.supervisor.run_flow(NAME, "tags", wait=True)
        tagged = {cid for cid in synced if VIP in w.apsis.tags_of(str(cid))}
        assert tagged == {stay, join}
        # a third run with no change costs no APSIS write
        writes = w.apsis.write_calls
        run = (await w.supervisor.run_flow(NAME, "tags", wait=True))["run"]
        assert w.apsis.write_calls == writes and run["counts"]["updated"] == 0
        assert writes > writes_before


async def test_profile_tags_are_reconciled_even_when_a_webhook_was_missed(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    async with world(tmp_path, clock, contacts=12) as w:
        await w.supervisor.full_sync(NAME)
        assert (await w.wait_full_sync())["state"] == "completed"
        holders = [c["K_CONTACT"] for c in w.efficy.contacts()
                   if 2 in c["profile_ids"] and w.apsis.profile(str(c["K_CONTACT"]))]
        assert holders and all(PROSPECT in w.apsis.tags_of(str(cid)) for cid in holders)
        gone = holders[0]
        w.efficy.remove_profile_from_contact(gone, 2)
        w.efficy.drain_outbox()  # the webhook for this change is lost
        run = (await w.supervisor.run_flow(NAME, "tags", wait=True))["run"]
        assert run["status"] == "success"
        assert PROSPECT not in w.apsis.tags_of(str(gone))
        assert all(PROSPECT in w.apsis.tags_of(str(cid)) for cid in holders[1:])


async def test_a_run_mixing_every_outcome_reports_each_candidate_once_in_order(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    """Candidates needing no APSIS call (never synced, tag already right) are decided without a task, the
    others patched: every candidate still gets its one report row, in the flow's candidate order."""
    async with world(tmp_path, clock, contacts=24) as w:
        await w.supervisor.full_sync(NAME)
        assert (await w.wait_full_sync())["state"] == "completed"
        ids = [c["K_CONTACT"] for c in w.efficy.contacts()]
        synced = [cid for cid in ids if w.apsis.profile(str(cid))]
        never = [cid for cid in ids if not w.apsis.profile(str(cid))]
        assert len(synced) >= 6 and never
        w.efficy.add_query("VIP", synced[:4], query_id=99990001)
        await w.supervisor.run_flow(NAME, "tags", wait=True)  # synced[:4] tagged
        members = [synced[0], synced[1], synced[4], synced[5], never[0]]  # 2 stay, 2 join, 2 leave, 1 unsynced
        w.efficy.add_query("VIP", members, query_id=99990001)
        writes = w.apsis.write_calls
        result = await w.supervisor.run_flow(NAME, "tags", wait=True)
        rows = [r for r in await w.rows(result["run"]["id"]) if r["crm_id"] in {str(c) for c in ids}]
        expected = {str(synced[0]): "unchanged", str(synced[1]): "unchanged", str(synced[4]): "updated",
                    str(synced[5]): "updated", str(synced[2]): "updated", str(synced[3]): "updated",
                    str(never[0]): "skipped"}
        candidates = sorted(expected, key=lambda k: (len(k), k))  # the query's tag runs first, then profiles'
        assert [r["crm_id"] for r in rows[:len(candidates)]] == candidates
        assert {r["crm_id"]: r["outcome"] for r in rows[:len(candidates)]} == expected
        assert w.apsis.write_calls - writes == 4
        assert {cid for cid in synced if VIP in w.apsis.tags_of(str(cid))} == {synced[0], synced[1], synced[4],
                                                                               synced[5]}
