"""The simulator on the wire: raw HTTP, so these check the real API's shapes, not our client's reading."""

from __future__ import annotations

import re
from datetime import timedelta

import defusedxml.ElementTree as SafeET
import pytest
import trio
import trio.testing

from crmsync.connectors.mobilecommons.simulator import MobileCommonsSimulator, sim_phone
from crmsync.connectors.simkit import asgi_client

from .conftest import LOGIN, PASSWORD, START, TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _xml(response):
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    root = SafeET.fromstring(response.content)
    assert root.tag == "response"
    return root


def _error(root) -> tuple[str | None, str | None]:
    assert root.get("success") == "false"
    error = root.find("error")
    return error.get("id"), error.get("message")


async def test_missing_or_wrong_auth_is_a_401_html_page(sim: MobileCommonsSimulator) -> None:
    async with asgi_client(sim) as http:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic !!notbase64"}):
            r = await http.get("/api/campaigns", headers=headers)
            assert r.status_code == 401 and r.headers["content-type"].startswith("text/html")
            assert "<html>" in r.text
        ok = await http.get("/api/campaigns", auth=(LOGIN, PASSWORD))
        assert _xml(ok).get("success") == "true"


async def test_logical_errors_are_http_200(sim: MobileCommonsSimulator) -> None:
    async with asgi_client(sim) as http:
        assert _error(_xml(await http.get("/api/profile", params={"phone_number": "3075550100"},
                                          headers=AUTH))) == ("5", "Invalid phone number")
        assert _error(_xml(await http.post("/api/profile_update", headers=AUTH))) == (
            "28", "Missing phone_number parameter")
        assert _error(_xml(await http.post("/api/profile_update", data={"phone_number": "12"},
                                           headers=AUTH)))[0] == "5"
        sim.rate_limit()
        limited = _xml(await http.get("/api/campaigns", headers=AUTH))
        assert _error(limited) == ("27", "API rate limit exceeded")


async def test_heavy_load_and_unknown_endpoint_pages(sim: MobileCommonsSimulator) -> None:
    async with asgi_client(sim) as http:
        sim.heavy_load()
        r = await http.get("/api/campaigns", headers=AUTH)
        assert r.status_code == 503 and "This website is under heavy load" in r.text
        r = await http.get("/api/no_such_endpoint", headers=AUTH)
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")


async def test_parameters_merge_query_form_and_json(sim: MobileCommonsSimulator) -> None:
    async with asgi_client(sim) as http:
        await http.post("/api/profile_update", params={"phone_number": "3075550100"},
                        data={"first_name": "Form"}, headers=AUTH)
        await http.post("/api/profile_update", params={"last_name": "Query"},
                        json={"phone_number": "(307) 555-0100", "email": "json@example.org"}, headers=AUTH)
    profile = sim.profile("+13075550100")
    assert profile is not None
    assert (profile.first_name, profile.last_name, profile.email) == ("Form", "Query", "json@example.org")
    assert [p.phone_number for p in sim.profiles()] == ["13075550100"]  # upserted, one profile


async def test_profile_xml_shape_mixed_timestamps_and_padding(sim: MobileCommonsSimulator) -> None:
    c = sim.add_campaign("Main")
    path = sim.add_opt_in_path(c.id, "Web")
    async with asgi_client(sim) as http:
        r = await http.post("/api/profile_update", headers=AUTH, data={
            "phone_number": "307.555.0100", "opt_in_path_id": path.id, "Constituent ID": "77"})
    root = _xml(r)
    assert root.get("success") == "true"
    profile = root.find("profile")
    assert profile.find("phone_number").text == "13075550100"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", profile.find("updated_at").text)
    assert profile.find("email").text is None and profile.find("opted_out_at").text is None
    sub = profile.find("subscriptions/subscription")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", sub.get("activated_at"))
    assert sub.get("opted_out_at") == "" and sub.get("status") == "Active"
    column = profile.find("custom_columns/custom_column[@name='Constituent ID']")
    assert column.text != "77" and column.text.strip() == "77"  # padded like the real fixtures


async def test_profiles_paging_shape_and_limit_cap(sim: MobileCommonsSimulator) -> None:
    for i in range(3):
        sim.add_profile(f"307555010{i}")
    async with asgi_client(sim) as http:
        first = _xml(await http.get("/api/profiles", params={"limit": "2"}, headers=AUTH)).find("profiles")
        assert (first.get("num"), first.get("page"), len(first)) == ("2", "1", 2)
        second = _xml(await http.get("/api/profiles", params={"limit": "2", "page": "2"}, headers=AUTH))
        assert second.find("profiles").get("num") == "1"
        end = _xml(await http.get("/api/profiles", params={"limit": "2", "page": "3"}, headers=AUTH))
        last = end.find("profiles")
        assert (last.get("num"), last.get("page"), len(last)) == ("0", "3", 0)
        big = _xml(await http.get("/api/profiles", params={"limit": "5000"}, headers=AUTH))
        assert big.find("profiles").get("num") == "3"
        bad = _xml(await http.get("/api/profiles", params={"from": "soon"}, headers=AUTH))
        assert _error(bad)[0] == "35"


async def test_user_keyword_and_stop_semantics(sim: MobileCommonsSimulator, autojump_clock) -> None:
    c = sim.add_campaign("Main")
    path = sim.add_opt_in_path(c.id, "Join", welcome_message="Welcome")
    sim.opt_in("3075550100", path.id)
    sim.opt_in("3075550100", path.id)  # texting the keyword again while active: nothing new
    assert len(sim.welcome_messages) == 1
    await trio.sleep(60)
    profile = sim.opt_out("3075550100")
    assert profile.status == "Texted a STOP word"
    assert profile.opted_out_at == profile.updated_at == START + timedelta(seconds=60)
    assert profile.subscriptions[0].status == "Opted-Out"
    sim.opt_in("3075550100", path.id)  # the subscriber's own keyword re-joins, and is welcomed again
    assert profile.status == "Active Subscriber" and profile.subscriptions[0].status == "Active"
    assert len(profile.subscriptions) == 1
    assert [w.sent_at for w in sim.welcome_messages] == [START, START + timedelta(seconds=60)]


async def test_unknown_custom_columns_setting(clock) -> None:
    sim = MobileCommonsSimulator(clock, api_token=TOKEN, unknown_custom_columns="error")
    async with asgi_client(sim) as http:
        r = await http.post("/api/profile_update", headers=AUTH,
                            data={"phone_number": "3075550100", "Shoe size": "9"})
        assert _error(_xml(r)) == ("30", "Invalid profile attributes")
        r = await http.post("/api/profile_update", headers=AUTH,
                            data={"phone_number": "3075550100", "Constituent ID": "1"})
        assert _xml(r).get("success") == "true"


async def test_noop_update_does_not_touch_updated_at(sim: MobileCommonsSimulator, autojump_clock) -> None:
    sim.add_profile("3075550100", first_name="Ann")
    await trio.sleep(10)
    async with asgi_client(sim) as http:
        await http.post("/api/profile_update", headers=AUTH,
                        data={"phone_number": "3075550100", "first_name": "Ann"})
        assert sim.profile("3075550100").updated_at == START
        await http.post("/api/profile_update", headers=AUTH,
                        data={"phone_number": "3075550100", "first_name": "Bea"})
        assert sim.profile("3075550100").updated_at == START + timedelta(seconds=10)


@pytest.mark.parametrize(("raw", "expected"), [
    ("3075550100", "13075550100"), ("+1 (307) 555-0100", "13075550100"), ("13075550100", "13075550100"),
    ("23075550100", None), ("555", None), ("", None),
])
def test_server_side_phone_normalisation(raw: str, expected: str | None) -> None:
    assert sim_phone(raw) == expected


async def test_issue8_more_than_160_calls_in_flight_are_refused_with_error_27(
        sim: MobileCommonsSimulator, autojump_clock: trio.testing.MockClock) -> None:
    """Research B7: "160 concurrent API calls" per company; beyond it, error 27 (in a 200, like every logical
    error). Each call takes ``latency`` seconds, so 170 sent at once overlap."""
    sim.latency = 0.05
    sim.add_profile("3125550100")
    answers: list[str] = []
    async with asgi_client(sim) as http:
        async def one() -> None:
            r = await http.get("http://sim.test/api/profile", params={"phone_number": "3125550100"},
                               auth=(LOGIN, PASSWORD))
            answers.append(r.text)

        async with trio.open_nursery() as nursery:
            for _ in range(170):
                nursery.start_soon(one)
    refused = [a for a in answers if 'id="27"' in a]
    assert len(refused) == 10 and sim.concurrency_refusals == 10 and sim.peak_in_flight > 160
    assert sum('success="true"' in a for a in answers) == 160
