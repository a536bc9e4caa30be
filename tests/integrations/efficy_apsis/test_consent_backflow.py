"""Opt-outs made in APSIS flow back to Efficy and are never overwritten by an older Efficy state."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from crmsync.clock import WallClock
from crmsync.connectors.apsis.records import CHANNEL_EMAIL
from tests.integrations.efficy_apsis.harness import NAME, NEWS, NEWS_SMS, make_config, world


@pytest.mark.parametrize("method", ["report", "poll"])
async def test_an_apsis_optout_reaches_efficy_and_survives_the_next_full_sync_even_from_a_stale_read(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock, method: str) -> None:
    config = make_config(tmp_path, consent_backflow={"method": method})
    async with world(tmp_path, clock, contacts=6, config=config) as w:
        cid = 10001  # i = 0: holds the newsletter profile, passes the conditions
        await w.supervisor.full_sync(NAME)
        await w.wait_full_sync()
        assert w.apsis.consents_of(str(cid))[NEWS] == "opt-in"
        await trio.sleep(60)
        w.apsis.opt_out(str(cid), NEWS.topic, CHANNEL_EMAIL)  # the unsubscribe link
        reports_before = w.apsis.report_requests
        result = await w.supervisor.run_flow(NAME, "consent_backflow", wait=True)
        assert result["run"]["status"] == "success"
        assert w.apsis.report_requests - reports_before == (2 if method == "report" else 0)  # email + sms
        assert 1 not in w.efficy.contact(cid)["profile_ids"]  # the CRM Profile left the contact card
        run = await w.last_run("consent_backflow")
        rows = await w.rows(run["id"])
        assert [(r["crm_id"], r["outcome"]) for r in rows] == [(str(cid), "updated")]
        assert "removed in Efficy" in rows[0]["message"]

        # the next full sync leaves the opt-out alone and writes nothing (a read made before the removal
        # and written after it is covered by test_rules and the stateful test)
        before = w.apsis.writes["consent"]
        await w.supervisor.full_sync(NAME)
        await w.wait_full_sync()
        assert w.apsis.consents_of(str(cid))[NEWS] == "opt-out"
        # the removed CRM Profile also maps the SMS channel: that mapping becomes an opt-out, nothing else
        assert w.apsis.consents_of(str(cid))[NEWS_SMS] == "opt-out"
        assert w.apsis.writes["consent"] == before + 1
        # an unrelated later edit of the contact does not re-subscribe
        await trio.sleep(5)
        w.efficy.update_contact(cid, first_name="Edited")
        await w.sender().flush()
        await w.wait_queue_empty()
        assert w.apsis.consents_of(str(cid))[NEWS] == "opt-out"
        # a second backflow has nothing left to do, and never writes to APSIS
        writes = w.apsis.write_calls
        await w.supervisor.run_flow(NAME, "consent_backflow", wait=True)
        assert await w.rows((await w.last_run("consent_backflow"))["id"]) == []
        assert w.apsis.write_calls == writes

        # a CRM user deliberately re-adds the profile later: that is the newer change, it wins
        await trio.sleep(60)
        w.efficy.add_profile_to_contact(cid, 1)
        await w.sender().flush()
        await w.wait_queue_empty()
        assert w.apsis.consents_of(str(cid))[NEWS] == "opt-in"


@pytest.mark.parametrize("threshold", [0, 1], ids=["per-profile", "import"])
async def test_a_newer_optout_already_in_apsis_is_never_resubscribed(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock, threshold: int) -> None:
    config = make_config(tmp_path, full_sync={"import_threshold": threshold})
    async with world(tmp_path, clock, contacts=6, config=config) as w:
        cid = 10001
        await trio.sleep(30)
        # the person unsubscribed in APSIS after the contact was last changed in Efficy
        w.apsis.add_profile(str(cid), consents={NEWS: "opt-out"})
        await w.supervisor.full_sync(NAME)
        await w.wait_full_sync()
        consents = w.apsis.consents_of(str(cid))
        assert consents[NEWS] == "opt-out"
        assert consents[NEWS_SMS] == "opt-in"  # other subscriptions are untouched by that opt-out
        # and the opt-out flows back to Efficy
        await w.supervisor.run_flow(NAME, "consent_backflow", wait=True)
        assert 1 not in w.efficy.contact(cid)["profile_ids"]
        await w.supervisor.full_sync(NAME)
        await w.wait_full_sync()
        assert w.apsis.consents_of(str(cid))[NEWS] == "opt-out"


async def test_an_older_apsis_optout_gives_way_to_a_newer_efficy_optin(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    async with world(tmp_path, clock, contacts=0) as w:
        w.apsis.add_profile("10001", consents={NEWS: "opt-out"})
        await trio.sleep(30)
        cid = w.efficy.add_contact(name="New", email="new@example.be", profiles=[1], MOBILE="+32470000001",
                                   ROBINSON=False)
        assert cid == 10001
        await w.sender().flush()
        await w.wait_queue_empty()
        assert w.apsis.consents_of(str(cid))[NEWS] == "opt-in"
