"""The consent backflow in both methods: ``report`` (APSIS consent report, O(1) requests) and ``poll``."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from crmsync.clock import WallClock
from crmsync.connectors.apsis.records import CHANNEL_EMAIL, CHANNEL_SMS
from crmsync.connectors.apsis.simulator import REPORT_PATH
from crmsync.state import queries as q
from tests.integrations.efficy_apsis.harness import NAME, NEWS, NEWS_SMS, OFFERS, make_config, world


def report_calls(requests: list[tuple[str, str]]) -> int:
    return sum(1 for _, path in requests if path.startswith(REPORT_PATH))


def consent_reads(requests: list[tuple[str, str]]) -> int:
    return sum(1 for method, path in requests if method == "GET" and path.endswith("/consents"))


@pytest.mark.parametrize("method", ["report", "poll"])
async def test_report_mode_makes_a_constant_number_of_apsis_requests_poll_mode_one_per_profile(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock, method: str) -> None:
    polls_until_ready = 2
    config = make_config(tmp_path, consent_backflow={"method": method, "chunk_size": 2})
    async with world(tmp_path, clock, contacts=60, config=config) as w:
        await w.supervisor.full_sync(NAME)
        await w.wait_full_sync()
        linked = await w.db.tx(q.count_links, NAME)
        assert linked >= 20
        await trio.sleep(60)
        opted_out = (10001, 10004, 10013, 10016)  # newsletter holders (every 3rd contact)
        for cid in opted_out:
            w.apsis.opt_out(str(cid), NEWS.topic, CHANNEL_EMAIL)
        w.apsis.opt_out("10019", NEWS_SMS.topic, CHANNEL_SMS)
        w.apsis.opt_out("10001", OFFERS.topic, CHANNEL_EMAIL)  # i = 0 also holds the offers profile

        start = len(w.apsis.requests)
        result = await w.supervisor.run_flow(NAME, "consent_backflow", wait=True)
        assert result["run"]["status"] == "success"
        during = [r for r in w.apsis.requests[start:] if r[1] != "/oauth/token"]
        if method == "report":
            # per channel (email, sms): one creation, the 404 polls, the download; nothing per profile
            assert len(during) == report_calls(during) == 2 * (1 + polls_until_ready + 1)
            assert consent_reads(during) == 0
        else:
            assert len(during) == consent_reads(during) == linked
        for cid in (*opted_out, 10019):
            assert 1 not in w.efficy.contact(cid)["profile_ids"]
        assert 2 not in w.efficy.contact(10001)["profile_ids"]
        rows = await w.rows((await w.last_run("consent_backflow"))["id"])
        assert sorted(r["crm_id"] for r in rows if r["outcome"] == "updated") == \
            sorted(str(c) for c in (*opted_out, 10019))
        assert w.apsis.consents_of("10019")[NEWS_SMS] == "opt-out"


async def test_an_expired_report_is_requested_again(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    async with world(tmp_path, clock, contacts=6) as w:
        await w.supervisor.full_sync(NAME)
        await w.wait_full_sync()
        await trio.sleep(60)
        w.apsis.opt_out("10001", NEWS.topic, CHANNEL_EMAIL)
        w.apsis.faults.fail(410, path_contains=REPORT_PATH + "/", method="GET")
        before = w.apsis.report_requests
        result = await w.supervisor.run_flow(NAME, "consent_backflow", wait=True)
        assert result["run"]["status"] == "success"
        assert w.apsis.report_requests - before == 3  # email twice (the first expired), sms once
        assert 1 not in w.efficy.contact(10001)["profile_ids"]
