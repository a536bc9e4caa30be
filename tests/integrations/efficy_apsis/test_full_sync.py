"""Full sync end to end: pages, progress, cancel, crash + resume, deferral of webhooks, import path, faults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from crmsync.clock import WallClock
from crmsync.connectors.apsis.records import ATTR_FIRSTNAME
from crmsync.connectors.efficy.simulator import EfficySimulator
from crmsync.state import queries as q
from tests.integrations.efficy_apsis.harness import NAME, NEWS, OFFERS, PROSPECT, VIP, World, make_config, world


def page_starts(efficy: EfficySimulator) -> list[int]:
    """The keyset positions of the contact pages Efficy was asked for, in order."""
    starts = []
    for body in efficy.rpc_log:
        for ctx in body:
            for f in ctx.get("@func", []):
                if f.get("@name") == "executesqlquery" and "CONTACTS where" in f.get("sql", ""):
                    starts.append(int(f["queryparams"]))
    return starts


def expected(w: World, cid: int) -> dict[Any, str]:
    c = w.efficy.contact(cid)
    news = "opt-in" if 1 in c["profile_ids"] else "opt-out"
    return {NEWS: news, OFFERS: "opt-in" if 2 in c["profile_ids"] else "opt-out"}


def eligible(w: World) -> list[int]:
    return [c["K_CONTACT"] for c in w.efficy.contacts() if c["OPENED"] and not c["ROBINSON"]]


async def assert_exact(w: World) -> None:
    ids = eligible(w)
    assert ids
    for cid in ids:
        consents = w.apsis.consents_of(str(cid))
        want = expected(w, cid)
        assert {k: consents.get(k) for k in want} == want, cid
        c = w.efficy.contact(cid)
        assert (PROSPECT in w.apsis.tags_of(str(cid))) == (2 in c["profile_ids"])
    skipped = [c["K_CONTACT"] for c in w.efficy.contacts() if c["K_CONTACT"] not in ids]
    assert skipped and all(w.apsis.profile(str(cid)) is None for cid in skipped)


@pytest.mark.parametrize("threshold", [0, 1], ids=["per-profile", "import"])
async def test_full_sync_is_exact_and_a_second_one_costs_no_write(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock, threshold: int) -> None:
    config = make_config(tmp_path, full_sync={"import_threshold": threshold})
    async with world(tmp_path, clock, contacts=35, config=config) as w:
        await w.supervisor.full_sync(NAME)
        fs = await w.wait_full_sync()
        assert fs["state"] == "completed" and fs["done"] == 35 and fs["total"] == 35
        await assert_exact(w)
        imports = w.apsis.writes["create_import"]
        assert (imports > 0) == bool(threshold)
        # the VIP query (even K_CONTACT) tags synced members at the end of the full sync
        for cid in eligible(w):
            assert (VIP in w.apsis.tags_of(str(cid))) == (cid % 2 == 0)
        run = await w.last_run("full_sync")
        assert run["status"] == "success"
        skipped = run["counts"]["skipped"]
        # i % 7 == 6 is closed (5 of 35); i % 5 == 4 is on the Robinson list (7, one of them also closed)
        assert skipped["condition_failed:OPENED=1"] == 5 and skipped["condition_failed:ROBINSON=0"] == 6
        assert run["counts"]["created"] == len(eligible(w)) == 24
        status = await w.supervisor.status(NAME)
        assert status["full_sync"]["done"] == 35

        before = w.apsis.write_calls
        await w.supervisor.full_sync(NAME)
        await w.wait_full_sync()
        assert w.apsis.write_calls == before  # unchanged profiles cost no write call
        run = await w.last_run("full_sync")
        assert run["counts"]["created"] == run["counts"]["updated"] == 0
        assert run["counts"]["unchanged"] >= len(eligible(w))


async def test_a_cancelled_full_sync_stops_and_a_crashed_one_resumes_from_its_checkpoint(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    efficy = EfficySimulator(clock, api_key="efficy-test-key")
    async with world(tmp_path, clock, contacts=60, efficy=efficy) as w:
        w.efficy.faults.slow(10.0, times=1000)  # every Efficy call takes 10 s
        await w.supervisor.full_sync(NAME)
        await trio.sleep(45)  # two pages (each: a page call and a links call) acknowledged
        result = await w.supervisor.cancel(NAME)
        assert result["cancelled"][0]["flow"] == "full_sync"
        fs = await w.db.tx(q.get_full_sync, NAME)
        assert fs is not None and fs["state"] == "cancelled" and fs["done"] == 20
        assert (await w.last_run("full_sync"))["status"] == "cancelled"
        apsis = w.apsis

        # a new one starts over (by default it would resume: test_full_sync_resume.py), and the process dies
        await w.supervisor.full_sync(NAME, from_start=True)
        await trio.sleep(65)  # three pages acknowledged
        fs = await w.db.tx(q.get_full_sync, NAME)
        assert fs is not None and fs["state"] == "running" and fs["done"] == 30

    efficy.faults.clear()
    efficy.rpc_log.clear()
    async with world(tmp_path, clock, efficy=efficy, apsis=apsis, activate=False) as w:
        fs = await w.wait_full_sync()  # resumes by itself on start
        assert fs["state"] == "completed" and fs["done"] == 60
        last = int(w.efficy.contacts()[29]["K_CONTACT"])
        assert page_starts(efficy)[0] == last  # from the checkpoint, not from zero
        assert 0 not in page_starts(efficy)
        await assert_exact(w)


async def test_webhooks_during_a_full_sync_wait_then_win_when_newer(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    async with world(tmp_path, clock, contacts=40) as w:
        ids = [c["K_CONTACT"] for c in w.efficy.contacts() if c["OPENED"] and not c["ROBINSON"]]
        first, last = ids[0], ids[-1]
        w.efficy.faults.slow(10.0, times=1000)
        await w.supervisor.full_sync(NAME)
        await trio.sleep(25)  # the first page (with `first`) is written; `last` is on a later page
        profile = w.apsis.profile(str(first))
        assert profile is not None and profile.attributes[ATTR_FIRSTNAME] != "Newer"
        w.efficy.update_contact(first, first_name="Newer")
        w.efficy.add_profile_to_contact(first, 2)
        w.efficy.update_contact(last, first_name="Early")  # the full sync will read this one itself
        sender = w.sender()
        await sender.flush()
        assert await w.db.tx(q.queue_depth, NAME) >= 2
        await trio.sleep(5)
        assert w.apsis.profile(str(first)).attributes[ATTR_FIRSTNAME] != "Newer"  # type: ignore[union-attr]
        assert await w.db.tx(q.queue_depth, NAME) >= 2  # held back while the full sync runs
        w.efficy.faults.clear()
        await w.wait_full_sync()
        await w.wait_queue_empty()
        got = w.apsis.profile(str(first))
        assert got is not None and got.attributes[ATTR_FIRSTNAME] == "Newer"
        assert w.apsis.consents_of(str(first))[OFFERS] == "opt-in"
        realtime = await w.last_run("realtime")
        full = await w.last_run("full_sync")
        assert realtime["started_at"] >= full["finished_at"]
        rows = {r["crm_id"]: r for r in await w.rows(realtime["id"])}
        assert rows[str(first)]["outcome"] == "updated"
        assert rows[str(last)]["outcome"] == "unchanged"  # the full sync already wrote that version
        assert w.apsis.profile(str(last)).attributes[ATTR_FIRSTNAME] == "Early"  # type: ignore[union-attr]


async def test_an_older_read_never_overwrites_a_newer_write(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    async with world(tmp_path, clock, contacts=5) as w:
        cid = eligible(w)[0]
        await w.supervisor.full_sync(NAME)
        await w.wait_full_sync()
        w.efficy.update_contact(cid, first_name="Newest")
        await w.sender().flush()
        await w.wait_queue_empty()
        # simulate a stale read: Efficy returns the old name with an older D_CHANGE
        row = w.efficy._contacts[cid]
        row["FIRSTNAME"] = "Stale"
        row["D_CHANGE"] = row["D_CREATE"]
        await w.supervisor.full_sync(NAME)
        await w.wait_full_sync()
        assert w.apsis.profile(str(cid)).attributes[ATTR_FIRSTNAME] == "Newest"  # type: ignore[union-attr]
        run = await w.last_run("full_sync")
        assert run["counts"]["skipped"].get("stale_read") == 1


@pytest.mark.parametrize("threshold", [0, 1], ids=["per-profile", "import"])
async def test_results_stay_exact_with_429s_413_sized_batches_and_expired_tokens(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock, threshold: int) -> None:
    long_notes = "x" * 30_000  # three of these in one patch pass 100 kB: the client must split
    # small import batches, so that imports keep starting after the token expires mid-sync
    config = make_config(tmp_path, full_sync={"import_threshold": threshold, "import_rows": 6},
                         attributes={"FIRSTNAME": "com.apsis1.attributes.firstname",
                                     "MOBILE": "com.apsis1.attributes.mobile",
                                     "NOTES": "usercreated.attributes.notes-k3j4h5",
                                     "NAME": "com.apsis1.attributes.lastname",
                                     "COUNTRY": "usercreated.attributes.country-abc123"},
                         apsis={"max_body_bytes": 40_000})
    async with world(tmp_path, clock, contacts=25, config=config) as w:
        for c in w.efficy.contacts()[:3]:
            w.efficy.update_contact(c["K_CONTACT"], NOTES=long_notes, NAME="L" * 20_000)
        w.efficy.drain_outbox()
        w.apsis.faults.fail(429, times=6)
        w.apsis.faults.fail(503, times=2, path_contains="consents")
        w.efficy.faults.slow(5.0, times=6)  # three pages of two Efficy calls: 10 s a page
        await w.supervisor.full_sync(NAME)
        for _ in range(200):  # until the first page is being written (two more to go)
            if w.apsis.write_calls >= 5:
                break
            await trio.sleep(0.5)
        w.apsis.expire_tokens()
        writes_at_expiry = w.apsis.write_calls
        w.efficy.expire_sessions()
        w.apsis.faults.fail(429, times=3, path_contains="imports")
        fs = await w.wait_full_sync()
        assert fs["state"] == "completed"
        run = await w.last_run("full_sync")
        assert run["status"] == "success", run
        await assert_exact(w)
        big = w.apsis.profile(str(w.efficy.contacts()[0]["K_CONTACT"]))
        if w.efficy.contacts()[0]["K_CONTACT"] in eligible(w):
            assert big is not None and big.attributes["usercreated.attributes.notes-k3j4h5"] == long_notes
        assert w.apsis.tokens_issued >= 2 and w.apsis.write_calls > writes_at_expiry


async def test_consent_mapping_change_on_reload_requires_a_full_sync_until_one_completes(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    async with world(tmp_path, clock, contacts=5) as w:
        status = await w.supervisor.status(NAME)
        assert not status.get("full_sync_required")
        same = make_config(tmp_path)
        await w.supervisor.reload(same)
        assert not (await w.supervisor.status(NAME)).get("full_sync_required")
        changed = make_config(tmp_path, consents={"offers": {"profile": 2, "topic": OFFERS.topic, "channel": "sms"}})
        await w.supervisor.reload(changed)
        status = await w.supervisor.status(NAME)
        assert status["full_sync_required"] and "consent mappings changed" in status["full_sync_required_reason"]
        await w.supervisor.full_sync(NAME)
        await w.wait_full_sync()
        assert not (await w.supervisor.status(NAME))["full_sync_required"]



async def test_a_full_sync_after_cancel_resumes_from_its_checkpoint_and_ends_exact(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    """Issue 7 item 12: a full sync after `cancel` resumes from the checkpoint by default (mappings unchanged),
    and `status` says so before it starts."""
    async with world(tmp_path, clock, contacts=60) as w:
        w.efficy.faults.slow(10.0, times=1000)
        await w.supervisor.full_sync(NAME)
        await trio.sleep(45)  # two pages acknowledged
        await w.supervisor.cancel(NAME)
        nxt = (await w.supervisor.status(NAME))["full_sync_next"]
        assert nxt["action"] == "resume" and "unchanged" in nxt["reason"]
        w.efficy.faults.clear()
        w.efficy.rpc_log.clear()
        assert (await w.supervisor.full_sync(NAME))["resumed"] is True
        fs = await w.wait_full_sync()
        assert fs["state"] == "completed" and fs["done"] == 60
        last = int(w.efficy.contacts()[19]["K_CONTACT"])
        assert page_starts(w.efficy)[0] == last and 0 not in page_starts(w.efficy)  # not from zero
        await assert_exact(w)
