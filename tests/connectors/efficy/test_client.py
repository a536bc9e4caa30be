"""EfficyClient against the simulator: auth, sessions, errors in 200 bodies, paging, profiles, queries."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
import trio
from structlog.testing import capture_logs

from crmsync.clock import WallClock
from crmsync.connectors.efficy.client import EfficyClient, EfficySessionExpiredError
from crmsync.connectors.efficy.simulator import ERROR_STYLES, EfficySimulator
from crmsync.connectors.errors import AuthError, FatalApiError, NotFoundError

from .conftest import API_KEY, START, make_client


def seed(sim: EfficySimulator, n: int = 7) -> tuple[int, int, list[int]]:
    news = sim.add_profile("Newsletter")
    sms = sim.add_profile("SMS offers")
    ids = []
    for i in range(n):
        profiles = [news] if i % 2 else []
        if i % 3 == 0:
            profiles.append(sms)
        ids.append(sim.add_contact(name=f"Doe{i}", first_name="Jane", email=f"jane{i}@x.be",
                                   profiles=profiles))
    return news, sms, ids


# -- auth and sessions -------------------------------------------------------------------------------------

async def test_sends_key_and_reuses_the_session(sim: EfficySimulator, client: EfficyClient) -> None:
    assert await client.current_user() == "API User"
    first = client.session_id
    assert first is not None and first in sim.sessions
    await client.current_user()
    await client.current_user()
    assert sim.sessions_created == 1
    assert client.session_id == first


async def test_wrong_key_is_an_auth_error_after_one_renewal(sim: EfficySimulator) -> None:
    secret = "wrong-key-0b7d3e"
    client = make_client(sim, api_key=secret)
    with capture_logs() as logs, pytest.raises(AuthError) as info:
        await client.current_user()
    assert "Invalid User" in info.value.message
    assert len(sim.requests) == 2  # the first attempt and exactly one renewal
    assert secret not in str(info.value) and secret not in repr(client)
    assert secret not in str(logs)
    await client.http.aclose()


async def test_expired_session_is_renewed_once_transparently(sim: EfficySimulator,
                                                             client: EfficyClient) -> None:
    await client.current_user()
    old = client.session_id
    sim.expire_sessions()
    assert await client.current_user() == "API User"
    assert sim.sessions_created == 2
    assert client.session_id not in (None, old)
    assert len(sim.requests) == 3


async def test_session_expires_after_its_ttl(sim: EfficySimulator, autojump_clock: trio.abc.Clock) -> None:
    sim.session_ttl = timedelta(minutes=20)
    client = make_client(sim)
    await client.current_user()
    await trio.sleep(19 * 60)
    await client.current_user()  # sliding expiry: still the same session
    assert sim.sessions_created == 1
    await trio.sleep(21 * 60)
    await client.current_user()
    assert sim.sessions_created == 2
    await client.http.aclose()


async def test_refused_again_after_renewal_is_auth_error(sim: EfficySimulator, client: EfficyClient) -> None:
    await client.current_user()
    sim.deny_rights = True
    with pytest.raises(AuthError) as info:
        await client.current_user()
    assert not isinstance(info.value, EfficySessionExpiredError)
    assert "right to perform" in info.value.message
    assert len(sim.requests) == 3


async def test_customer_alias_header_and_query(clock: WallClock) -> None:
    sim = EfficySimulator(clock, api_key=API_KEY, customer="acme")
    with_header = make_client(sim, customer="acme")
    with_query = make_client(sim, customer="acme", customer_in_query=True)
    without = make_client(sim)
    assert await with_header.current_user() == "API User"
    assert await with_query.current_user() == "API User"
    with pytest.raises(FatalApiError, match="not configured"):
        await without.current_user()
    for c in (with_header, with_query, without):
        await c.http.aclose()


# -- errors inside HTTP 200 --------------------------------------------------------------------------------

@pytest.mark.parametrize("style", ERROR_STYLES)
async def test_error_in_200_body_in_every_form(sim: EfficySimulator, client: EfficyClient,
                                               style: str) -> None:
    sim.inject_error(style, "Field NAME is mandatory", code=4711)  # type: ignore[arg-type]
    with pytest.raises(FatalApiError) as info:
        await client.current_user()
    assert "Field NAME is mandatory" in info.value.message
    assert info.value.status == 200
    assert not isinstance(info.value, AuthError | NotFoundError)
    assert len(sim.requests) == 1  # fatal: not retried


async def test_retriable_error_in_200_is_retried(sim: EfficySimulator, client: EfficyClient,
                                                 autojump_clock: trio.abc.Clock) -> None:
    sim.inject_error("exception", "Transaction was deadlocked, rerun the transaction")
    assert await client.current_user() == "API User"
    assert len(sim.requests) == 2


async def test_malformed_body_and_proxy_504_are_retried(sim: EfficySimulator, client: EfficyClient,
                                                        autojump_clock: trio.abc.Clock) -> None:
    sim.faults.malformed()
    sim.faults.fail(504)
    assert await client.current_user() == "API User"
    assert len(sim.requests) == 3


async def test_content_length_is_always_sent(client: EfficyClient) -> None:
    async def chunks():  # a streamed body would go out chunked, which Efficy truncates
        yield b'[{"@name":"api",'
        yield b'"@func":[]}]'

    request = httpx.Request("POST", "http://sim.test/crm/json", content=chunks())
    assert "content-length" not in request.headers
    await client.prepare_request(request)
    assert request.headers["content-length"] == str(len(b'[{"@name":"api","@func":[]}]'))
    assert "transfer-encoding" not in request.headers
    assert request.headers["x-efficy-apikey"] == API_KEY


# -- paging ------------------------------------------------------------------------------------------------

async def test_pages_through_all_contacts_with_profiles(sim: EfficySimulator, client: EfficyClient) -> None:
    news, sms, ids = seed(sim, 7)
    client.page_size = 3
    pages = [page async for page in client.iter_contacts()]
    assert [len(p.records) for p in pages] == [3, 3, 1]
    assert pages[0].total == 7 and pages[1].total is None
    records = [r for p in pages for r in p.records]
    assert [r.contact_id for r in records] == [str(i) for i in ids]
    for i, r in enumerate(records):
        expected = sorted(([str(news)] if i % 2 else []) + ([str(sms)] if i % 3 == 0 else []), key=int)
        assert list(r.profile_ids or ()) == expected
        assert r.email == f"jane{i}@x.be" and r.last_name == f"Doe{i}"
    assert pages[-1].next_position is None


async def test_resumes_from_a_saved_position(sim: EfficySimulator, client: EfficyClient) -> None:
    _, _, ids = seed(sim, 5)
    first = await client.list_contacts(page_size=2)
    saved = first.next_position
    assert isinstance(saved, str)
    # Between runs: one contact not yet read is deleted, one is created, one already read is edited.
    sim.delete_contact(ids[3])
    new_id = sim.add_contact(name="Late", email="late@x.be")
    sim.update_contact(ids[0], name="Edited")
    other = make_client(sim)  # a fresh process: new client, new session
    seen = [r.contact_id for r in first.records]
    position: str | None = saved
    while position is not None:
        page = await other.list_contacts(position, page_size=2)
        seen.extend(r.contact_id for r in page.records)
        position = page.next_position
    assert seen == [str(i) for i in (ids[0], ids[1], ids[2], ids[4], new_id)]
    await other.http.aclose()


async def test_page_size_boundary_ends_with_an_empty_page(sim: EfficySimulator, client: EfficyClient) -> None:
    seed(sim, 4)
    first = await client.list_contacts(page_size=2)
    second = await client.list_contacts(first.next_position, page_size=2)
    assert second.next_position is not None
    last = await client.list_contacts(second.next_position, page_size=2)
    assert last.records == () and last.next_position is None


async def test_rejects_a_foreign_position(client: EfficyClient) -> None:
    with pytest.raises(ValueError):
        await client.list_contacts("offset=40")


async def test_without_sql_rights_paging_fails_as_auth(sim: EfficySimulator, client: EfficyClient) -> None:
    seed(sim, 2)
    sim.allow_sql = False
    with pytest.raises(AuthError, match="authorized to execute this query"):
        await client.list_contacts()


# -- single contact, queries, unlink -----------------------------------------------------------------------

async def test_reads_one_contact_with_profiles_and_typed_fields(sim: EfficySimulator,
                                                               client: EfficyClient) -> None:
    news = sim.add_profile("Newsletter")
    sms = sim.add_profile("SMS")
    cid = sim.add_contact(name="Doe", first_name="Jane", email="jane@x.be", opened=False,
                          profiles=[sms, news], MOBILE="+32470000000", POSTCODE="01234")
    contact = await client.get_contact(cid)
    assert contact.contact_id == str(cid)
    assert contact.profile_ids == (str(news), str(sms))
    assert contact.fields["OPENED"] is False
    assert contact.fields["BIRTHDATE"] is None  # rendered as 1899-12-30 by Efficy
    assert contact.fields["POSTCODE"] == "01234"
    assert contact.modified_at == START
    assert contact.has_profile(str(news)) and not contact.has_profile("999")


async def test_unknown_contact_is_not_found(client: EfficyClient) -> None:
    with pytest.raises(NotFoundError):
        await client.get_contact(424242)


async def test_saved_query_returns_contact_ids(sim: EfficySimulator, client: EfficyClient) -> None:
    _, _, ids = seed(sim, 5)
    fixed = sim.add_query("VIP", [ids[3], ids[1], ids[3]])
    dynamic = sim.add_query("Odd", predicate=lambda c: int(c["K_CONTACT"]) % 2 == 1)
    assert await client.run_query(fixed) == [str(ids[3]), str(ids[1])]
    assert await client.run_query(dynamic) == [str(i) for i in ids if i % 2 == 1]
    sim.delete_contact(ids[1])
    assert await client.run_query(fixed) == [str(ids[3])]
    with pytest.raises(NotFoundError):
        await client.run_query(12345)


async def test_profile_members_are_the_contacts_holding_the_profile(sim: EfficySimulator,
                                                                   client: EfficyClient) -> None:
    news, sms, ids = seed(sim, 7)
    assert await client.profile_members(news) == [str(i) for n, i in enumerate(ids) if n % 2]
    assert await client.profile_members(sms) == [str(i) for n, i in enumerate(ids) if n % 3 == 0]


async def test_unlink_profile_removes_consent_and_is_idempotent(sim: EfficySimulator,
                                                               client: EfficyClient) -> None:
    news = sim.add_profile("Newsletter")
    sms = sim.add_profile("SMS")
    cid = sim.add_contact(name="Doe", email="jane@x.be", profiles=[news, sms])
    sim.drain_outbox()
    await client.unlink_profile(cid, news)
    assert sim.contact(cid)["profile_ids"] == [sms]
    changes = sim.drain_outbox()
    assert [(c.key, c.consent_base_id, c.has_consented) for c in changes] == [(cid, str(news), False)]
    await client.unlink_profile(cid, news)
    assert sim.contact(cid)["profile_ids"] == [sms]
    assert (await client.get_contact(cid)).profile_ids == (str(sms),)
    await client.link_profile(cid, news)
    assert sim.contact(cid)["profile_ids"] == [news, sms]
    with pytest.raises(NotFoundError):
        await client.unlink_profile(999999, news)


async def test_lists_profiles(sim: EfficySimulator, client: EfficyClient) -> None:
    sim.add_profile("Newsletter", profile_id=3)
    sim.add_profile("SMS", profile_id=12)
    profiles = await client.list_profiles()
    assert [(p.profile_id, p.name) for p in profiles] == [("3", "Newsletter"), ("12", "SMS")]


async def test_each_efficy_answer_is_parsed_once(sim: EfficySimulator, client: EfficyClient,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 8 (CPU of the read stage): an Efficy page is JSON of hundreds of kB; checking it for errors and
    reading its results must not parse it twice."""
    import crmsync.connectors.efficy.client as efficy_client

    seed(sim, 3)
    parsed: list[int] = []
    real = efficy_client.json_body

    def counting(system: str, response: httpx.Response) -> object:
        parsed.append(id(response))
        return real(system, response)

    monkeypatch.setattr(efficy_client, "json_body", counting)
    await client.list_contacts(page_size=10, include_profiles=False, with_total=False)
    assert len(parsed) == 1
