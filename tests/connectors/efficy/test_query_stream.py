"""A saved query's answer read as a stream by the client (issue 8 item 1) keeps every protection of the whole
parse (client.py's module doc): errors in 200 bodies raise what they raise for every call, wherever they sit
in the body; malformed or cut-off bodies are retried, then :class:`MalformedResponseError`; an expired session
is renewed once; a body cut short is never read as fewer members."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from crmsync.connectors.efficy.client import EfficyClient
from crmsync.connectors.errors import (
    AuthError,
    FatalApiError,
    MalformedResponseError,
    NotFoundError,
    RetriableApiError,
)
from crmsync.connectors.http import RetryPolicy
from crmsync.daemon.integrations.efficy_apsis import store
from crmsync.state import Database

KEY = "query-stream-key-4e1a9b"
Answer = Callable[[dict[str, Any]], httpx.Response]


def answer(ctx: dict[str, Any], rows: list[Any], **func_extra: Any) -> list[Any]:
    func = {"@name": "query", "key": 5, "#result": {"#class": "dataset", "#data": rows}, **func_extra}
    return [{"#id": ctx["#id"], "@name": "api", "@func": [func]}]


async def chunked(body: bytes, size: int = 7, *, then: Exception | None = None) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start:start + size]
    if then is not None:
        raise then


def client_of(*answers: Answer, attempts: int = 3) -> tuple[EfficyClient, list[httpx.Request]]:
    """A client whose n-th request is answered by the n-th of ``answers`` (the last one repeats)."""
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        ctx = json.loads(await request.aread())[0]
        return answers[min(len(seen), len(answers)) - 1](ctx)

    client = EfficyClient("https://efficy.test", api_key=KEY, transport=httpx.MockTransport(handler),
                          retry=RetryPolicy(attempts=attempts, base_delay=0.001))
    return client, seen


def streamed(body: Callable[[dict[str, Any]], list[Any]], *, cut: int | None = None, then: Exception | None = None,
             headers: dict[str, str] | None = None, size: int = 7) -> Answer:
    def respond(ctx: dict[str, Any]) -> httpx.Response:
        raw = json.dumps(body(ctx)).encode()
        return httpx.Response(200, content=chunked(raw[:cut], size, then=then), headers=headers)

    return respond


def good(ctx: dict[str, Any]) -> list[Any]:
    return answer(ctx, [{"K_CONTACT": "30", "NAME": "a"}, {"K_CONTACT": 7}, {"K_CONTACT": "30"}, {"NAME": "x"}])


async def test_the_members_come_in_query_order_without_repeats_and_the_session_is_kept() -> None:
    client, seen = client_of(streamed(good, headers={"set-cookie": "EfficySession=s-1; Path=/"}))
    assert await client.run_query(5) == ["30", "7"]
    assert list(await client.query_members(5)) == ["30", "7", "30"]  # repeats kept for the store
    assert client.session_id == "s-1" and "EfficySession=s-1" in seen[1].headers["cookie"]
    assert seen[0].headers["content-length"] and json.loads(seen[0].content)[0]["@func"][0]["recordCount"] == 0
    await client.aclose()


@pytest.mark.parametrize("cut", [1, 40, -30, -1])
async def test_a_body_cut_short_is_retried_then_malformed_never_fewer_members(cut: int) -> None:
    client, seen = client_of(streamed(good, cut=cut), streamed(good))
    assert await client.run_query(5) == ["30", "7"]  # retried, as a malformed body is today
    assert len(seen) == 2
    await client.aclose()
    client, seen = client_of(streamed(good, cut=cut))
    with pytest.raises(MalformedResponseError):
        await client.run_query(5)
    assert len(seen) == 3
    await client.aclose()


async def test_a_connection_lost_mid_body_is_retriable() -> None:
    client, seen = client_of(streamed(good, then=httpx.ReadError("reset")), streamed(good))
    assert await client.run_query(5) == ["30", "7"]
    assert len(seen) == 2
    await client.aclose()
    client, _ = client_of(streamed(good, then=httpx.ReadError("reset")), attempts=1)
    with pytest.raises(RetriableApiError, match="connection failed"):
        await client.run_query(5)
    await client.aclose()


@pytest.mark.parametrize("body,expected", [
    # Efficy's errors, after the rows they come with: found wherever they sit, mapped as for every call
    (lambda ctx: answer(ctx, [{"K_CONTACT": 1}], **{"#error": "Query 5 not found"}), NotFoundError),
    (lambda ctx: [*answer(ctx, [{"K_CONTACT": 1}]), {"@name": "exception", "#error": {"errorstring": "boom"}}],
     FatalApiError),
    (lambda ctx: [{**answer(ctx, [{"K_CONTACT": 1}])[0], "#error": {"errorcode": 7, "errorstring": "deadlock"}}],
     RetriableApiError),
    (lambda ctx: {"#error": "Please Logon to Database"}, AuthError),  # after one renewal
    # the wrong shape
    (lambda ctx: {"rows": [1]}, MalformedResponseError),
    (lambda ctx: [], MalformedResponseError),
    (lambda ctx: ["x"], MalformedResponseError),
])
async def test_errors_in_the_body_raise_what_the_whole_parse_raises(
        body: Callable[[dict[str, Any]], Any], expected: type[Exception]) -> None:
    client, _ = client_of(streamed(body), attempts=1)
    with pytest.raises(expected) as streamed_error:
        await client.run_query(5)
    whole, _ = client_of(lambda ctx: httpx.Response(200, json=body(ctx)), attempts=1)
    with pytest.raises(expected) as whole_error:  # the same answer to a call parsed whole (call())
        await whole._call_one({"@name": "api", "#id": "c", "@func": [{"@name": "query", "key": 5}]})
    assert type(streamed_error.value) is type(whole_error.value)
    assert streamed_error.value.message == whole_error.value.message
    await client.aclose()
    await whole.aclose()


async def test_an_expired_session_in_a_200_after_the_rows_is_renewed_once() -> None:
    expired = streamed(lambda ctx: answer(ctx, [{"K_CONTACT": 1}], **{"#error": "Session timeout"}))
    client, seen = client_of(expired, streamed(good))
    assert await client.run_query(5) == ["30", "7"]
    assert len(seen) == 2
    await client.aclose()
    client, seen = client_of(lambda ctx: httpx.Response(401, text="log on"), streamed(good))
    assert await client.run_query(5) == ["30", "7"]
    assert len(seen) == 2
    await client.aclose()


# Leaving the body early (the row is refused before its end) abandons httpx's own nested body generators, which
# trio's finalizer reports as a ResourceWarning; the client's generator is closed (aclosing), httpx's are not ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_huge_row_is_malformed_and_no_secret_is_in_any_error() -> None:
    huge = streamed(lambda ctx: answer(ctx, [{"K_CONTACT": 1, "NOTE": "x" * (5 * 2 ** 20)}]), size=2 ** 16)
    client, _ = client_of(huge, attempts=1)
    with pytest.raises(MalformedResponseError):
        await client.run_query(5)
    await client.aclose()
    echo = streamed(lambda ctx: answer(ctx, [{"K_CONTACT": 1}], **{"#error": f"Invalid api key {KEY}"}))
    client, _ = client_of(echo, attempts=1)
    with pytest.raises(FatalApiError) as err:
        await client.run_query(5)
    assert KEY not in f"{err.value} {err.value!r}"
    await client.aclose()


async def test_the_store_keeps_each_member_once_and_counts_them(tmp_path: Any) -> None:
    client, _ = client_of(streamed(good))
    db = await Database.open(tmp_path / "s.db")
    try:
        await db.tx(store.replace_query_members("e", "vip", ["1", "2"]))
        count = await db.tx(store.replace_query_members("e", "vip", await client.query_members(5)))
        rows = await db.tx(lambda c: sorted(r[0] for r in c.execute(
            "SELECT contact_id FROM efficy_query_members WHERE integration = 'e' AND tag = 'vip'")))
    finally:
        await db.aclose()
        await client.aclose()
    assert count == 2 and rows == ["30", "7"]
