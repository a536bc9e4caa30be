"""The periodic ``tags`` flow: query members get the tag, those who left the query lose it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from crmsync.clock import WallClock
from crmsync.daemon.integrations.efficy_apsis import store, tags
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


async def _fully_synced(w: Any) -> tuple[list[int], list[int]]:
    """A full sync, then the contacts it put in APSIS and those it did not (failing the sync conditions)."""
    await w.supervisor.full_sync(NAME)
    assert (await w.wait_full_sync())["state"] == "completed"
    ids = [c["K_CONTACT"] for c in w.efficy.contacts()]
    return ([cid for cid in ids if w.apsis.profile(str(cid))],
            [cid for cid in ids if not w.apsis.profile(str(cid))])


async def test_a_run_mixing_every_outcome_reports_each_candidate_once_in_order(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    """Candidates needing no APSIS call (never synced, tag already right) are decided without a task, the
    others patched: every candidate still gets its one report row, in the flow's candidate order."""
    async with world(tmp_path, clock, contacts=24) as w:
        synced, never = await _fully_synced(w)
        assert len(synced) >= 6 and never
        w.efficy.add_query("VIP", synced[:4], query_id=99990001)
        await w.supervisor.run_flow(NAME, "tags", wait=True)  # synced[:4] tagged
        members = [synced[0], synced[1], synced[4], synced[5], never[0]]  # 2 stay, 2 join, 2 leave, 1 unsynced
        w.efficy.add_query("VIP", members, query_id=99990001)
        writes = w.apsis.write_calls
        result = await w.supervisor.run_flow(NAME, "tags", wait=True)
        rows = [r for r in await w.rows(result["run"]["id"]) if r["crm_id"] in {str(c) for c in synced + never}]
        expected = {str(synced[0]): "unchanged", str(synced[1]): "unchanged", str(synced[4]): "updated",
                    str(synced[5]): "updated", str(synced[2]): "updated", str(synced[3]): "updated",
                    str(never[0]): "skipped"}
        candidates = sorted(expected, key=lambda k: (len(k), k))  # the query's tag runs first, then profiles'
        assert [r["crm_id"] for r in rows[:len(candidates)]] == candidates
        assert {r["crm_id"]: r["outcome"] for r in rows[:len(candidates)]} == expected
        assert w.apsis.write_calls - writes == 4
        assert {cid for cid in synced if VIP in w.apsis.tags_of(str(cid))} == {synced[0], synced[1], synced[4],
                                                                               synced[5]}


async def test_a_flow_that_crashes_midway_still_remembers_whom_it_tagged(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 8 item 1: "a crash mid-flow must not lose the memory of who was tagged". The flow stops after its
    first chunk was tagged in APSIS; those contacts then leave the query, and the next run must untag them."""
    monkeypatch.setattr(tags, "CHUNK", 2)
    async with world(tmp_path, clock, contacts=20) as w:
        w.efficy.add_query("VIP", [], query_id=99990001)  # nobody has the tag after the full sync
        await w.supervisor.full_sync(NAME)
        assert (await w.wait_full_sync())["state"] == "completed"
        synced = sorted((c["K_CONTACT"] for c in w.efficy.contacts() if w.apsis.profile(str(c["K_CONTACT"]))),
                        key=lambda k: (len(str(k)), str(k)))
        first, rest = synced[:2], synced[2:4]
        w.efficy.add_query("VIP", [*first, *rest], query_id=99990001)
        load_states = store.load_states
        tag_chunks = 0

        def crash_on_second_tag_chunk(c: Any, integration: str, ids: Any, rules: Any) -> Any:
            nonlocal tag_chunks
            if not rules:  # the tags flow's loads (syncs load with the consent rules)
                tag_chunks += 1
                if tag_chunks == 2:
                    raise sqlite3.OperationalError("disk I/O error")
            return load_states(c, integration, ids, rules)

        monkeypatch.setattr(store, "load_states", crash_on_second_tag_chunk)
        result = await w.supervisor.run_flow(NAME, "tags", wait=True)
        assert result["run"]["status"] == "failed"
        assert {cid for cid in synced if VIP in w.apsis.tags_of(str(cid))} == set(first)
        monkeypatch.setattr(store, "load_states", load_states)

        w.efficy.add_query("VIP", rest, query_id=99990001)  # the first chunk's contacts left the query
        result = await w.supervisor.run_flow(NAME, "tags", wait=True)
        assert result["run"]["status"] == "success"
        assert {cid for cid in synced if VIP in w.apsis.tags_of(str(cid))} == set(rest)


async def test_members_never_synced_are_reported_skipped_and_not_remembered_as_tagged(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    """The module's contract: only linked profiles are tagged; members never synced are reported skipped
    ``not_synced`` (each run, as long as they are members), and crmsync does not count them as tagged."""
    async with world(tmp_path, clock, contacts=24) as w:
        synced, never = await _fully_synced(w)
        assert synced and never
        w.efficy.add_query("VIP", [synced[0], never[0]], query_id=99990001)
        for _ in range(2):
            result = await w.supervisor.run_flow(NAME, "tags", wait=True)
            rows = {r["crm_id"]: r for r in await w.rows(result["run"]["id"])}
            assert rows[str(never[0])]["outcome"] == "skipped"
            assert rows[str(never[0])]["reason"] == "not_synced"
            assert await w.db.tx(store.get_members, NAME, VIP) == {str(synced[0])}
        assert not w.apsis.profile(str(never[0]))
