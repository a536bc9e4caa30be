"""Bulk path, consents on a channel without its address: not sent (an import drops them; issue 7 item 8),
except an opt-out where crmsync had sent an opt-in, which always travels (per profile after the import)."""

from __future__ import annotations

from pathlib import Path

import trio

from crmsync.clock import WallClock
from tests.integrations.efficy_apsis.harness import NAME, NEWS, NEWS_SMS, make_config, world


async def test_an_sms_optout_travels_even_when_the_mobile_was_cleared_at_the_same_time(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    config = make_config(tmp_path, full_sync={"import_threshold": 1})
    async with world(tmp_path, clock, contacts=12, config=config) as w:
        cid = 10001  # holds the newsletter profile (email and SMS), passes the conditions
        await w.supervisor.full_sync(NAME)
        await w.wait_full_sync()
        assert w.apsis.consents_of(str(cid))[NEWS_SMS] == "opt-in"
        await trio.sleep(60)
        w.efficy.remove_profile_from_contact(cid, 1)  # the person asks to stop, and their mobile goes too
        w.efficy.update_contact(cid, MOBILE="")
        w.efficy.drain_outbox()
        await w.supervisor.full_sync(NAME)
        fs = await w.wait_full_sync()
        assert fs["state"] == "completed"
        consents = w.apsis.consents_of(str(cid))
        assert consents[NEWS_SMS] == "opt-out" and consents[NEWS] == "opt-out"
        rows = await w.rows((await w.last_run("full_sync"))["id"])
        assert any(r["crm_id"] == str(cid) and "opt-out without address" in (r["message"] or "") for r in rows)
        writes = w.apsis.write_calls
        await w.supervisor.full_sync(NAME)
        await w.wait_full_sync()
        assert w.apsis.write_calls == writes  # and nothing is sent again
