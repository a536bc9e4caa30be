"""The client against the simulator, through httpx's ASGI transport (no sockets)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import structlog
import trio

from crmsync.clock import WallClock
from crmsync.connectors.errors import (
    AuthError,
    FatalApiError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    RetriableApiError,
)
from crmsync.connectors.http import RetryPolicy
from crmsync.connectors.mobilecommons.client import MobileCommonsClient
from crmsync.connectors.mobilecommons.records import ProfileUpdate, is_opted_in
from crmsync.connectors.mobilecommons.simulator import MobileCommonsSimulator
from crmsync.connectors.simkit import Request, Response, asgi_client

from .conftest import LOGIN, PASSWORD, START, TOKEN

PHONE = "+13075550100"


def _client(http, **kwargs) -> MobileCommonsClient:
    kwargs.setdefault("retry", RetryPolicy(attempts=4, base_delay=0.5, max_delay=5.0))
    return MobileCommonsClient("http://sim.test/api", http=http, **kwargs)


# -- auth ------------------------------------------------------------------------------------------------


async def test_basic_and_bearer_auth_accepted(sim: MobileCommonsSimulator) -> None:
    sim.add_profile("3075550100", first_name="Ann")
    async with asgi_client(sim) as http:
        for kwargs in ({"login": LOGIN, "password": PASSWORD}, {"api_token": TOKEN}):
            profile = await _client(http, **kwargs).profile(PHONE)
            assert profile.first_name == "Ann"


async def test_bad_credentials_raise_auth_error_without_secrets(sim: MobileCommonsSimulator) -> None:
    async with asgi_client(sim) as http:
        for kwargs in ({"login": LOGIN, "password": "wrong-pass-XYZ"}, {"api_token": "wrong-token-XYZ"}):
            client = _client(http, **kwargs)
            with pytest.raises(AuthError) as info:
                await client.profile(PHONE)
            assert info.value.status == 401
            assert "XYZ" not in str(info.value) and "XYZ" not in repr(client)
    assert sim.api_calls == []  # refused before any endpoint ran, and not retried
    assert len(sim.requests) == 2


def test_client_requires_exactly_one_auth_mode() -> None:
    with pytest.raises(ValueError):
        MobileCommonsClient(login=LOGIN)
    with pytest.raises(ValueError):
        MobileCommonsClient(login=LOGIN, password=PASSWORD, api_token=TOKEN)


async def test_company_key_is_sent(clock: WallClock) -> None:
    sim = MobileCommonsSimulator(clock, api_token=TOKEN, company_key="ACME")
    sim.add_profile(PHONE)
    async with asgi_client(sim) as http:
        await _client(http, api_token=TOKEN, company_key="ACME").profile(PHONE)
        with pytest.raises(FatalApiError, match="error 4: Invalid company id") as info:
            await _client(http, api_token=TOKEN, company_key="OTHER").profile(PHONE)
        assert info.value.code == "4"
    assert sim.api_calls[0][1]["company"] == "ACME"


# -- errors hidden in 200s and HTML pages -----------------------------------------------------------------


async def test_unknown_profile_is_error_5_not_found(client: MobileCommonsClient, sim) -> None:
    with pytest.raises(NotFoundError) as info:
        await client.profile(PHONE)
    assert info.value.status == 200 and info.value.code == "5"
    assert "Invalid phone number" in info.value.message
    assert await client.find_profile(PHONE) is None


async def test_error_27_in_a_200_is_retried(client, sim, autojump_clock) -> None:
    sim.add_profile(PHONE, last_name="Holden")
    sim.rate_limit(times=2)
    t0 = trio.current_time()
    profile = await client.profile(PHONE)
    assert profile.last_name == "Holden"
    assert len(sim.requests) == 3 and sim.faults.injected == 2
    assert trio.current_time() > t0  # backed off (on the mock clock, so instantly)


async def test_error_27_gives_up_as_rate_limited(client, sim, autojump_clock) -> None:
    sim.add_profile(PHONE)
    sim.rate_limit(times=10)
    with pytest.raises(RateLimitedError) as info:
        await client.profile(PHONE)
    assert info.value.code == "27" and info.value.status == 200
    assert len(sim.requests) == client.retry.attempts


async def test_503_heavy_load_page_is_retried(client, sim, autojump_clock) -> None:
    sim.add_profile(PHONE)
    sim.heavy_load(times=2)
    await client.profile(PHONE)
    assert len(sim.requests) == 3


async def test_503_heavy_load_message_when_exhausted(client, sim, autojump_clock) -> None:
    sim.add_profile(PHONE)
    sim.heavy_load(times=10)
    with pytest.raises(RetriableApiError, match="heavy load") as info:
        await client.profile(PHONE)
    assert info.value.status == 503 and not isinstance(info.value, RateLimitedError)


async def test_maintenance_page_and_gateway_errors_are_retried(client, sim, autojump_clock) -> None:
    sim.add_profile(PHONE)
    sim.faults.fail(502)
    sim.faults.fail(504)
    await client.profile(PHONE)
    assert len(sim.requests) == 3
    sim.maintenance = True
    with pytest.raises(RetriableApiError, match="Site Maintenance"):
        await client.profile(PHONE)


async def test_malformed_xml_is_retried(client, sim, autojump_clock) -> None:
    sim.add_profile(PHONE)
    sim.faults.malformed(times=2)
    await client.profile(PHONE)
    assert len(sim.requests) == 3
    sim.faults.malformed(times=10)
    with pytest.raises(MalformedResponseError):
        await client.profile(PHONE)


async def test_other_logical_errors_are_fatal_with_api_message(client, sim) -> None:
    with pytest.raises(FatalApiError) as info:
        await client.profile_update(ProfileUpdate(phone_number=PHONE, opt_in_path_id="424242"))
    assert not isinstance(info.value, NotFoundError)
    assert info.value.code == "19" and "Invalid opt-in path" in info.value.message
    assert len(sim.requests) == 1  # fatal: not retried


class _EvilSim(MobileCommonsSimulator):
    async def handle(self, request: Request) -> Response:
        body = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x "boom">]>'
                b'<response success="true">&x;</response>')
        return Response(200, body, [("content-type", "application/xml")])


async def test_entity_tricks_are_refused(clock) -> None:
    async with asgi_client(_EvilSim(clock)) as http:
        with pytest.raises(FatalApiError, match="unsafe XML"):
            await _client(http, api_token=TOKEN).campaigns()


async def test_secrets_never_logged(sim, autojump_clock) -> None:
    sim.add_profile(PHONE)
    sim.heavy_load(times=1)
    sim.rate_limit(times=1)
    with structlog.testing.capture_logs() as logs:
        async with asgi_client(sim) as http:
            await _client(http, login=LOGIN, password=PASSWORD).profile(PHONE)
    assert sum(1 for entry in logs if entry["event"] == "api_retry") == 2
    assert PASSWORD not in repr(logs) and TOKEN not in repr(logs)


# -- paging -----------------------------------------------------------------------------------------------


async def test_profiles_pages_to_num_zero_with_updated_at_window(client, sim) -> None:
    base = datetime(2024, 2, 1, tzinfo=UTC)
    for i in range(25):
        sim.add_profile(f"30755501{i:02d}", first_name=f"P{i}", updated_at=base + timedelta(hours=i))
    window_from, window_to = base + timedelta(hours=3), base + timedelta(hours=20)
    seen = [p async for p in client.profiles(updated_from=window_from, updated_to=window_to, limit=5)]
    assert [p.first_name for p in seen] == [f"P{i}" for i in range(3, 21)]  # both bounds inclusive
    assert all(window_from <= p.updated_at <= window_to for p in seen if p.updated_at)
    pages = [params["page"] for endpoint, params in sim.api_calls if endpoint == "profiles"]
    assert pages == ["1", "2", "3", "4", "5"]  # 18 profiles: 5+5+5+3, then the num="0" page
    last = sim.api_calls[-1][1]
    assert last["from"] == "2024-02-01 03:00:00 UTC" and last["limit"] == "5"


async def test_profiles_keeps_going_past_a_short_page(client, sim) -> None:
    """A page shorter than ``limit`` is not the end: only ``num="0"`` is (gotchas C2/C3)."""
    real_handle = sim.handle
    short_first = {"done": False}

    async def handle(request: Request) -> Response:
        if request.path.endswith("/profiles") and not short_first["done"]:
            short_first["done"] = True
            return await real_handle(
                Request(request.method, request.path, {**request.query, "limit": "1"},
                        request.query_list, request.headers, request.body))
        return await real_handle(request)

    sim.handle = handle  # type: ignore[method-assign]
    for i in range(4):
        sim.add_profile(f"307555010{i}")
    seen = [p.raw_phone_number async for p in client.profiles(limit=2)]
    # page 1 had 1 profile (short), page 2 (limit 2) starts at index 2: 2 and 3; page 3 is num=0
    assert seen == ["13075550100", "13075550102", "13075550103"]


async def test_profiles_detects_ignored_page_parameter(client, sim) -> None:
    for i in range(3):
        sim.add_profile(f"307555010{i}")
    real_handle = sim.handle

    async def handle(request: Request) -> Response:
        query = {**request.query, "page": "1"}  # a server that ignores `page` (gotcha C1)
        return await real_handle(Request(request.method, request.path, query, request.query_list,
                                         request.headers, request.body))

    sim.handle = handle  # type: ignore[method-assign]
    with pytest.raises(FatalApiError, match="paging is ignored"):
        _ = [p async for p in client.profiles(limit=2)]


async def test_profiles_by_phone_and_across_simulated_days(client, sim, autojump_clock) -> None:
    sim.add_profile("3075550100")
    sim.add_profile("3075550101")
    await trio.sleep(2 * 86400)  # two simulated days later
    await client.profile_update(ProfileUpdate(phone_number="3075550101", first_name="Later"))
    since = START + timedelta(days=1)
    changed = [p async for p in client.profiles(updated_from=since)]
    assert [p.first_name for p in changed] == ["Later"]
    assert changed[0].updated_at == START + timedelta(days=2)
    both = [p async for p in client.profiles(phone_numbers=["(307) 555-0100", "+13075550101"])]
    assert len(both) == 2


# -- writes -----------------------------------------------------------------------------------------------


@pytest.fixture
def campaign(sim: MobileCommonsSimulator):
    c = sim.add_campaign("Main campaign", campaign_id="500")
    sim.add_opt_in_path(c.id, "EveryAction web", opt_in_path_id="5001", welcome_message="Hi from Main!")
    sim.add_opt_in_path(c.id, "Second path", opt_in_path_id="5002")
    return c


async def test_profile_update_opt_in_sends_exactly_one_welcome(client, sim, campaign) -> None:
    update = ProfileUpdate(phone_number="307-555-0100", first_name="Naomi", email="naomi@example.org",
                           city="Ceres", opt_in_path_id="5001", constituent_id="101234")
    saved = await client.profile_update(update)
    assert saved.phone_number == PHONE and saved.first_name == "Naomi" and saved.city == "Ceres"
    assert saved.constituent_id == "101234"
    assert is_opted_in(saved) and is_opted_in(saved, "500")
    assert [(w.phone_number, w.opt_in_path_id, w.campaign_id, w.body) for w in sim.welcome_messages] == [
        ("13075550100", "5001", "500", "Hi from Main!")]
    # repeated, and through another path of the same campaign: no second welcome, still one subscription
    await client.profile_update(update)
    again = await client.profile_update(ProfileUpdate(phone_number=PHONE, opt_in_path_id="5002"))
    assert len(sim.welcome_messages) == 1
    assert len(again.subscriptions) == 1


async def test_profile_update_retry_after_lost_answer_sends_one_welcome(client, sim, campaign,
                                                                         autojump_clock) -> None:
    """The update lands but the answer is lost (malformed); the retry must not text the person twice."""
    real_handle = sim.handle
    calls = {"n": 0}

    async def handle(request: Request) -> Response:
        response = await real_handle(request)
        calls["n"] += 1
        if calls["n"] == 1:
            return Response(200, response.body[:40], response.headers)
        return response

    sim.handle = handle  # type: ignore[method-assign]
    saved = await client.profile_update(ProfileUpdate(phone_number=PHONE, opt_in_path_id="5001"))
    assert calls["n"] == 2 and is_opted_in(saved, "500")
    assert len(sim.welcome_messages) == 1


async def test_api_cannot_resubscribe_an_opted_out_phone(client, sim, campaign) -> None:
    sim.opt_in(PHONE, "5001")  # the person texts the keyword: welcome 1
    sim.opt_out(PHONE)  # ... then STOP
    profile = await client.profile_update(ProfileUpdate(phone_number=PHONE, opt_in_path_id="5001"))
    assert not is_opted_in(profile) and not is_opted_in(profile, "500")
    assert profile.status == "Texted a STOP word"
    assert len(sim.welcome_messages) == 1


async def test_profile_opt_out_all_campaigns(client, sim, campaign, autojump_clock) -> None:
    await client.profile_update(ProfileUpdate(phone_number=PHONE, opt_in_path_id="5001"))
    await trio.sleep(3600)
    await client.profile_opt_out("(307) 555-0100")
    profile = await client.profile(PHONE)
    assert not is_opted_in(profile) and not is_opted_in(profile, "500")
    assert profile.opted_out_at == START + timedelta(hours=1)
    assert profile.updated_at == START + timedelta(hours=1)
    assert profile.opted_out_source == "Opt-out from API"
    assert profile.subscriptions[0].status == "Opted-Out"


async def test_profile_opt_out_single_campaign(client, sim, campaign) -> None:
    other = sim.add_campaign("Other", campaign_id="600")
    sim.add_opt_in_path(other.id, "Other web", opt_in_path_id="6001")
    await client.profile_update(ProfileUpdate(phone_number=PHONE, opt_in_path_id="5001"))
    await client.profile_update(ProfileUpdate(phone_number=PHONE, opt_in_path_id="6001"))
    assert len(sim.welcome_messages) == 2  # one per campaign
    await client.profile_opt_out(PHONE, campaign_id="500")
    profile = await client.profile(PHONE)
    assert not is_opted_in(profile, "500") and is_opted_in(profile, "600") and is_opted_in(profile)
    assert profile.opted_out_at is None
    with pytest.raises(NotFoundError):
        await client.profile_opt_out("3075550199")


@pytest.mark.parametrize("encoding", ["form", "query", "json"])
async def test_post_encodings_all_reach_the_api(sim, campaign, encoding) -> None:
    async with asgi_client(sim) as http:
        client = _client(http, api_token=TOKEN, post_encoding=encoding)
        saved = await client.profile_update(ProfileUpdate(phone_number=PHONE, last_name="Amos"))
    assert saved.last_name == "Amos"


async def test_campaigns_with_opt_in_paths(client, sim, campaign) -> None:
    ended = sim.add_campaign("Old", campaign_id="400", active=False)
    sim.add_opt_in_path(ended.id, "Old path", opt_in_path_id="4001", active=False)
    campaigns = await client.campaigns()
    assert [(c.id, c.name, c.active) for c in campaigns] == [
        ("400", "Old", False), ("500", "Main campaign", True)]
    main = campaigns[1]
    assert [(p.id, p.name, p.campaign_id) for p in main.opt_in_paths] == [
        ("5001", "EveryAction web", "500"), ("5002", "Second path", "500")]
    active_only = await client.campaigns(status="active", include_opt_in_paths=False)
    assert [c.id for c in active_only] == ["500"] and active_only[0].opt_in_paths == ()


async def test_concurrency_is_bounded(sim, autojump_clock) -> None:
    sim.add_profile(PHONE)
    in_flight = {"now": 0, "max": 0}
    real_handle = sim.handle

    async def handle(request: Request) -> Response:
        in_flight["now"] += 1
        in_flight["max"] = max(in_flight["max"], in_flight["now"])
        await trio.sleep(1)
        in_flight["now"] -= 1
        return await real_handle(request)

    sim.handle = handle  # type: ignore[method-assign]
    async with asgi_client(sim) as http:
        client = _client(http, api_token=TOKEN, max_concurrency=3)
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(client.profile, PHONE)
    assert in_flight["max"] == 3


async def test_profiles_by_phone_read_one_page_when_the_phones_fit_in_it(client, sim) -> None:
    """Regression (issue 8, item 3: "no extra empty page"): Mobile Commons keeps one profile per phone, so the
    profiles of at most ``limit`` phones all fit in the first page; a phone without a profile must not cost a
    second, empty page."""
    sim.add_profile("3075550100")
    sim.requests.clear()
    found = [p async for p in client.profiles(phone_numbers=["3075550100", "3075550199"])]
    assert [p.phone_number for p in found] == ["+13075550100"]
    assert [path for _, path in sim.requests] == ["/api/profiles"]
    sim.requests.clear()
    assert [p async for p in client.profiles(phone_numbers=["3075550198", "3075550199"])] == []
    assert [path for _, path in sim.requests] == ["/api/profiles"]
    # more phones than a page holds still page on, to the empty last page
    for i in range(3):
        sim.add_profile(f"307555020{i}")
    sim.requests.clear()
    three = [p async for p in client.profiles(phone_numbers=[f"307555020{i}" for i in range(3)], limit=2)]
    assert len(three) == 3 and [path for _, path in sim.requests] == ["/api/profiles"] * 3


async def test_an_answer_is_parsed_once(client, sim, monkeypatch) -> None:
    """Issue 8 (daemon CPU per record): the XML checked by ``check_response`` is the one the endpoint reads;
    it is parsed once, not once by each."""
    import crmsync.connectors.mobilecommons.client as module

    sim.add_profile("3075550100")
    parsed: list[int] = []
    real = module.parse_xml

    def counting(system, response):
        parsed.append(response.status_code)
        return real(system, response)

    monkeypatch.setattr(module, "parse_xml", counting)
    profile = await client.profile("3075550100")
    assert profile.phone_number == "+13075550100" and parsed == [200]
