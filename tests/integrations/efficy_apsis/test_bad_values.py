"""Issue 7, item 8: one bad value never sinks the profile, and never leaves an empty one.

Research §9.4: phone numbers must be in valid international form for APSIS (``+46700…``); invalid values
are skipped per field and the rest of the profile still syncs. A mobile stored in national form
(``0470 12 34 56``) is answered 400 "expects an international phone number".
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import trio

from crmsync.clock import WallClock
from crmsync.connectors.apsis.records import ATTR_EMAIL, ATTR_FIRSTNAME, ATTR_LASTNAME, ATTR_MOBILE
from tests.integrations.efficy_apsis.direct import Flows, flows
from tests.integrations.efficy_apsis.harness import NEWS, NEWS_SMS, OFFERS, make_config

T0 = datetime(2024, 2, 1, 9, 0, tzinfo=UTC)


async def _sync(f: Flows, path: str, cid: int) -> list[dict[str, object]]:
    if path == "realtime":
        await f.push(cid)
        run = await f.realtime()
        assert run is not None
    else:
        run = await f.full_sync()
    return [r for r in await f.rows(run) if r["crm_id"] == str(cid)]


async def test_the_apsis_simulator_refuses_a_national_mobile_like_apsis(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    clock = WallClock(start=T0)
    async with flows(tmp_path, clock) as f:
        f.apsis.add_profile("1")
        transport = httpx.ASGITransport(app=f.apsis)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://apsis.test") as http:
            token = (await http.post("/oauth/token", json={"grant_type": "client_credentials",
                                                            "client_id": "crmsync",
                                                            "client_secret": "apsis-test-secret"})).json()
            path = ("/v2/audience/keyspaces/com.apsis1.keyspaces.crm-id/profiles/1/sections/"
                    "com.apsis1.sections.default/attributes")
            headers = {"authorization": f"Bearer {token['access_token']}",
                       "content-type": "application/merge-patch+json"}
            refused = await http.patch(path, content=json.dumps({ATTR_MOBILE: "0470 12 34 56"}), headers=headers)
            assert refused.status_code == 400
            assert "expects an international phone number" in refused.json()["detail"]
            ok = await http.patch(path, content=json.dumps({ATTR_MOBILE: "+32470123456"}), headers=headers)
            assert ok.status_code == 204


@pytest.mark.parametrize("path", ["realtime", "full_sync"])
async def test_a_national_mobile_is_sent_in_international_form_using_the_contacts_country(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, path: str) -> None:
    clock = WallClock(start=T0)
    async with flows(tmp_path, clock) as f:
        cid = f.efficy.add_contact(name="Peeters", first_name="Jane", email="jane@example.be", profiles=[1],
                                   MOBILE="0470 12 34 56", COUNTRY="BE", ROBINSON=False)
        rows = await _sync(f, path, cid)
        assert [r["outcome"] for r in rows] == ["created"]
        profile = f.apsis.profile(str(cid))
        assert profile is not None
        assert profile.attributes[ATTR_MOBILE] == "+32470123456"
        assert f.apsis.consents_of(str(cid)) == {NEWS: "opt-in", NEWS_SMS: "opt-in", OFFERS: "opt-out"}


@pytest.mark.parametrize("path", ["realtime", "full_sync"])
async def test_a_mobile_that_cannot_be_made_valid_is_left_out_and_the_rest_syncs(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, path: str) -> None:
    clock = WallClock(start=T0)
    async with flows(tmp_path, clock) as f:
        cid = f.efficy.add_contact(name="Peeters", first_name="Jane", email="jane@example.be", profiles=[1],
                                   MOBILE="0470 12 34 56", COUNTRY="", ROBINSON=False)  # no region to read it
        rows = await _sync(f, path, cid)
        assert [r["outcome"] for r in rows] == ["created"]
        assert "MOBILE" in str(rows[0]["message"]) and "left out" in str(rows[0]["message"])
        profile = f.apsis.profile(str(cid))
        assert profile is not None
        assert ATTR_MOBILE not in profile.attributes
        assert {ATTR_EMAIL, ATTR_FIRSTNAME, ATTR_LASTNAME} <= set(profile.attributes)
        consents = f.apsis.consents_of(str(cid))
        assert consents[NEWS] == "opt-in"
        assert NEWS_SMS not in consents  # no SMS consent without a valid mobile
        # the next run neither fails nor writes again
        writes = f.apsis.write_calls
        rows = await _sync(f, path, cid)
        assert [r["outcome"] for r in rows] == ["unchanged"] and f.apsis.write_calls == writes
        # once the mobile is fixed in Efficy, it and the SMS consent follow
        f.efficy.update_contact(cid, MOBILE="+32 470 12 34 56")
        await _sync(f, path, cid)
        assert f.apsis.profile(str(cid)).attributes[ATTR_MOBILE] == "+32470123456"  # type: ignore[union-attr]
        assert f.apsis.consents_of(str(cid))[NEWS_SMS] == "opt-in"


async def test_a_value_apsis_refuses_is_isolated_and_never_leaves_an_empty_profile(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """Whatever APSIS refuses that crmsync did not foresee (here: the mobile declared a plain string, so it
    goes out untouched) costs that one value only."""
    clock = WallClock(start=T0)
    config = make_config(tmp_path, apsis={"attribute_types": {ATTR_MOBILE: "string"}})
    async with flows(tmp_path, clock, config=config) as f:
        cid = f.efficy.add_contact(name="Peeters", first_name="Jane", email="jane@example.be", profiles=[1],
                                   MOBILE="0470 12 34 56", COUNTRY="BE", ROBINSON=False)
        rows = await _sync(f, "realtime", cid)
        assert [r["outcome"] for r in rows] == ["created"]
        assert "international phone number" in str(rows[0]["message"])
        profile = f.apsis.profile(str(cid))
        assert profile is not None and ATTR_MOBILE not in profile.attributes
        assert profile.attributes[ATTR_FIRSTNAME] == "Jane"
        consents = f.apsis.consents_of(str(cid))
        assert consents[NEWS] == "opt-in" and NEWS_SMS not in consents


async def test_a_failure_after_the_profile_was_created_is_repaired_on_the_next_attempt(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    clock = WallClock(start=T0)
    async with flows(tmp_path, clock) as f:
        cid = f.efficy.add_contact(name="Peeters", first_name="Jane", email="jane@example.be", profiles=[1],
                                   MOBILE="+32470123456", COUNTRY="BE", ROBINSON=False)
        f.apsis.faults.fail(503, times=50, path_contains="/attributes", method="PATCH")
        await f.push(cid)
        with pytest.raises(Exception):  # noqa: B017 - the batch fails and stays queued
            await f.realtime()
        f.apsis.faults.clear()
        run = await f.realtime()  # the same queued event, again
        assert run is not None
        profile = f.apsis.profile(str(cid))
        assert profile is not None and profile.attributes[ATTR_FIRSTNAME] == "Jane"
        assert f.apsis.consents_of(str(cid))[NEWS] == "opt-in"
