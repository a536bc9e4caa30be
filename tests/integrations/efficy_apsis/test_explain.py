"""Issue 11, item 1 for efficy_apsis: explain a contact rule by rule, writing nothing; its verdict is what the
next real full sync does with the contact."""

from __future__ import annotations

from pathlib import Path

import trio

from crmsync.clock import WallClock
from crmsync.daemon.explain import explain
from tests.integrations.efficy_apsis.harness import NAME, NEWS, world


async def test_explain_agrees_with_the_next_full_sync_and_writes_nothing(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    async with world(tmp_path, clock, contacts=14) as w:
        w.apsis.add_profile("10001", consents={NEWS: "opt-out"})  # unsubscribed in APSIS before any sync
        writes = w.apsis.write_calls
        ids = [str(c["K_CONTACT"]) for c in w.efficy.contacts()]
        for attempt in range(2):  # before the first full sync, then with everything linked
            verdicts = {cid: (await explain(w.supervisor, NAME, cid))["sections"][0]["verdict"] for cid in ids}
            assert w.apsis.write_calls == writes
            await w.supervisor.full_sync(NAME)
            await w.wait_full_sync()
            run = await w.last_run("full_sync")
            real: dict[str, dict] = {}
            for r in await w.rows(run["id"]):  # the contact's own row; the tags step's rows follow
                real.setdefault(r["crm_id"], r)
            for cid in ids:
                assert (verdicts[cid]["outcome"], verdicts[cid]["reason"]) == \
                    (real[cid]["outcome"], real[cid]["reason"]), (attempt, cid)
            writes = w.apsis.write_calls
        assert {v["outcome"] for v in verdicts.values()} >= {"unchanged", "skipped"}


async def test_explain_names_the_failing_condition_and_the_deciding_consent_rule(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    async with world(tmp_path, clock, contacts=6) as w:
        w.apsis.add_profile("10001", consents={NEWS: "opt-out"})
        robinson = next(str(c["K_CONTACT"]) for c in w.efficy.contacts() if c["ROBINSON"] in (True, 1, "1"))
        section = (await explain(w.supervisor, NAME, robinson))["sections"][0]
        failing = [r for r in section["rules"] if r["verdict"] == "fail"]
        assert [r["note"] for r in failing] == ["condition_failed:ROBINSON=0"]
        assert section["verdict"]["reason"] == "condition_failed:ROBINSON=0"
        assert section["verdict"]["would_write"] == []
        result = await explain(w.supervisor, NAME, "p0@example.com")  # by email
        assert result["crm_id"] == "10001"
        section = result["sections"][0]
        news = next(r for r in section["rules"] if r["rule"] == f"consent mapping {NEWS.topic}/{NEWS.channel}")
        assert news["verdict"] == "opt-out" and "stands" in news["note"]
        assert news["looked_at"]["CRM Profile on the contact card"] == "1: held"
        assert news["looked_at"]["APSIS now"].startswith("opt-out at ")
        calls = [wr["call"] for wr in section["verdict"]["would_write"]]
        assert calls == ["upsert_profile"]
        assert f"{NEWS.topic}/{NEWS.channel}=opt-in" not in section["verdict"]["would_write"][0]["summary"]
        assert w.apsis.write_calls == 0
