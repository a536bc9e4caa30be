"""The consent report (E1) and profile merge (P9): client against the simulator."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from collections.abc import Callable
from contextlib import aclosing
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from trio.testing import MockClock

from crmsync.clock import WallClock
from crmsync.connectors.apsis.client import ApsisClient
from crmsync.connectors.apsis.problems import (
    ApsisConflictError,
    ApsisMergeConflictError,
    ConsentReportExpiredError,
    ConsentReportTimeoutError,
    ConsentReportUnreadableError,
)
from crmsync.connectors.apsis.records import (
    ATTR_EMAIL,
    CHANNEL_EMAIL,
    CHANNEL_SMS,
    KEYSPACE_CRM_ID,
    KEYSPACE_EMAIL,
    ConsentKey,
    ConsentReportColumns,
    ConsentReportParser,
    ConsentReportRow,
    ConsentReportSettings,
)
from crmsync.connectors.apsis.simulator import REPORT_PATH, ApsisSimulator
from crmsync.connectors.errors import RetriableApiError

from .conftest import SECRET
from .streaming import StreamingASGITransport

NEWS = "usercreated.topics.newsletter-a1b2c3"
OFFERS = "usercreated.topics.offers-d4e5f6"
SERVICE = "usercreated.topics.newsletter-g7h8i9"
MakeClient = Callable[..., ApsisClient]


def over(transport: httpx.AsyncBaseTransport, clock: WallClock) -> ApsisClient:
    return ApsisClient("http://sim.test", transport=transport, client_id="crmsync", client_secret=SECRET,
                       clock=clock)


def report_gets(sim: ApsisSimulator) -> int:
    return sum(1 for method, path in sim.requests if method == "GET" and path.startswith(REPORT_PATH + "/"))


async def collect(client: ApsisClient, topics: list[str], channel: str = CHANNEL_EMAIL) -> list[ConsentReportRow]:
    async with aclosing(client.consent_report(topics, channel)) as rows:
        return [row async for row in rows]


def seed(sim: ApsisSimulator) -> None:
    sim.add_profile("2", consents={ConsentKey(NEWS, CHANNEL_EMAIL): "opt-in",
                                   ConsentKey(OFFERS, CHANNEL_EMAIL): "opt-in",
                                   ConsentKey(NEWS, CHANNEL_SMS): "opt-in"})
    sim.add_profile("1", consents={ConsentKey(NEWS, CHANNEL_EMAIL): "opt-in",
                                   ConsentKey(SERVICE, CHANNEL_EMAIL): "opt-in"})
    sim.add_profile("3")
    sim.add_profile("x@example.com", keyspace=KEYSPACE_EMAIL,
                    consents={ConsentKey(NEWS, CHANNEL_EMAIL): "opt-out"})


# -- E1 -----------------------------------------------------------------------------------------------------


async def test_report_is_polled_while_404_then_its_rows_stream_in_a_stable_order(
    autojump_clock: MockClock, make_client: MakeClient, sim: ApsisSimulator, clock: WallClock
) -> None:
    seed(sim)
    await trio.sleep(60)
    sim.opt_out("2", NEWS, CHANNEL_EMAIL)
    client = make_client(consent_report=ConsentReportSettings(poll_interval=7.0))
    start = trio.current_time()
    rows = await collect(client, [NEWS, OFFERS])
    stamp = clock.now().replace(microsecond=0)
    assert [(r.profile_key, r.topic, r.channel, r.type) for r in rows] == [
        ("1", NEWS, CHANNEL_EMAIL, "opt-in"),  # SERVICE not asked for; SMS is another channel
        ("2", NEWS, CHANNEL_EMAIL, "opt-out"),
        ("2", OFFERS, CHANNEL_EMAIL, "opt-in"),
    ]  # the email-keyspace profile is not in the crm-id keyspace the client asked for
    assert rows[1].modified_at is not None and rows[1].modified_at.startswith(stamp.date().isoformat())
    assert sim.report_requests == 1
    assert report_gets(sim) == sim.report_polls_until_ready + 1 == 3
    assert trio.current_time() - start >= 2 * 7.0  # it waited between the 404 polls
    assert sim.write_calls == 0  # a report is not a profile write
    assert await collect(client, [NEWS, OFFERS]) == rows  # same state, same rows, same order


async def test_report_download_is_gzip_encoded_and_decoded_transparently(
    autojump_clock: MockClock, sim: ApsisSimulator, clock: WallClock
) -> None:
    seed(sim)
    seen: list[httpx.Headers] = []
    inner = httpx.ASGITransport(app=sim)  # type: ignore[arg-type]

    class Recording(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await inner.handle_async_request(request)
            if request.method == "GET" and response.status_code == 200:
                seen.append(request.headers)
                seen.append(response.headers)
            return response

    client = over(Recording(), clock)
    rows = await collect(client, [NEWS], CHANNEL_SMS)
    assert [(r.profile_key, r.channel) for r in rows] == [("2", CHANNEL_SMS)]
    request_headers, response_headers = seen
    assert "gzip" in request_headers["accept-encoding"]
    assert response_headers["content-encoding"] == "gzip"
    await client.aclose()


async def test_a_gzip_file_on_a_foreign_host_is_inflated_and_gets_no_bearer_token(
    autojump_clock: MockClock, sim: ApsisSimulator, clock: WallClock
) -> None:
    csv_text = ("\ufeffProfile_Key,Topic_Discriminator,TYPE,modified_at\r\n"
                '7,usercreated.topics.newsletter-a1b2c3,opt-out,2024-03-14T08:00:00Z\r\n'
                '"8",usercreated.topics.newsletter-a1b2c3,OPT-IN,\r\n')
    storage_auth: list[str | None] = []
    inner = httpx.ASGITransport(app=sim)  # type: ignore[arg-type]

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "files.example":
            storage_auth.append(request.headers.get("authorization"))
            return httpx.Response(200, content=gzip.compress(csv_text.encode()),
                                  headers={"content-type": "application/gzip"})
        if request.method == "POST" and request.url.path == REPORT_PATH:
            return httpx.Response(202, json={"report_id": "r1"},
                                  headers={"location": "https://files.example/r1.csv.gz"})
        return await inner.handle_async_request(request)

    client = over(httpx.MockTransport(handler), clock)
    rows = await collect(client, [NEWS])
    assert rows == [ConsentReportRow("7", NEWS, CHANNEL_EMAIL, "opt-out", "2024-03-14T08:00:00Z"),
                    ConsentReportRow("8", NEWS, CHANNEL_EMAIL, "opt-in", None)]
    assert storage_auth == [None]  # the token never leaves the API host
    await client.aclose()


async def test_an_expired_report_raises_a_retriable_expired_error(
    autojump_clock: MockClock, make_client: MakeClient, clock: WallClock
) -> None:
    sim = ApsisSimulator(clock, client_id="crmsync", client_secret=SECRET, report_polls_until_ready=1000,
                         report_lifetime=3600.0)
    client = make_client(sim, consent_report=ConsentReportSettings(poll_interval=600.0, timeout=86400.0))
    with pytest.raises(ConsentReportExpiredError) as info:
        await collect(client, [NEWS])
    assert isinstance(info.value, RetriableApiError)
    assert info.value.status == 410 and "expired" in info.value.message
    assert report_gets(sim) == 7  # polls at 0, 600, ..., 3000 answered 404; at 3600 the report is gone


async def test_a_report_that_never_gets_ready_times_out(
    autojump_clock: MockClock, make_client: MakeClient, clock: WallClock
) -> None:
    sim = ApsisSimulator(clock, client_id="crmsync", client_secret=SECRET, report_polls_until_ready=1000)
    client = make_client(sim, consent_report=ConsentReportSettings(poll_interval=10.0, timeout=100.0))
    with pytest.raises(ConsentReportTimeoutError):
        await collect(client, [NEWS])
    assert 9 <= report_gets(sim) <= 11


async def test_a_refused_token_on_the_poll_url_is_refreshed_once(
    autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator
) -> None:
    seed(sim)
    sim.faults.fail(401, path_contains=REPORT_PATH + "/", method="GET")
    rows = await collect(client, [NEWS])
    assert [r.profile_key for r in rows] == ["1", "2"]
    assert sim.tokens_issued == 2


# Leaving a download early (here: a bad header) abandons httpx's own nested body generators, which trio's
# finalizer reports as a ResourceWarning; our generators are closed (aclosing), httpx's are not ours to close.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_report_columns_are_settings_and_a_mismatch_is_a_clear_error(
    autojump_clock: MockClock, make_client: MakeClient, clock: WallClock
) -> None:
    columns = ConsentReportColumns(profile_key="Key", topic="Topic", channel="Channel", type="Consent",
                                   modified_at="Changed", keyspace="Keyspace")
    sim = ApsisSimulator(clock, client_id="crmsync", client_secret=SECRET, report_columns=columns)
    seed(sim)
    default = make_client(sim)
    with pytest.raises(ConsentReportUnreadableError) as info:
        await collect(default, [NEWS])
    assert "profile_key" in info.value.message
    configured = make_client(sim, consent_report=ConsentReportSettings(columns=columns))
    assert [r.profile_key for r in await collect(configured, [NEWS])] == ["1", "2"]


async def test_the_channels_list_body_form_is_accepted(
    autojump_clock: MockClock, make_client: MakeClient, sim: ApsisSimulator
) -> None:
    seed(sim)
    client = make_client(consent_report=ConsentReportSettings(channel_form="list", keyspace_field=None))
    rows = await collect(client, [NEWS], CHANNEL_SMS)
    assert [(r.profile_key, r.channel) for r in rows] == [("2", CHANNEL_SMS)]


def test_parser_handles_records_split_anywhere_and_quoted_newlines() -> None:
    text = ('profile_key,topic_discriminator,type,note\n'
            '1,t,opt-out,"line one\nline ""two"""\n'
            '2,t,opt-in,plain\n'
            '3,t,opt-out,last')  # no final newline
    for size in (1, 2, 3, 7, len(text)):
        parser = ConsentReportParser(CHANNEL_EMAIL, KEYSPACE_CRM_ID)
        rows = []
        for i in range(0, len(text), size):
            rows += parser.feed(text[i:i + size])
        rows += parser.close()
        assert [(r.profile_key, r.type) for r in rows] == [("1", "opt-out"), ("2", "opt-in"), ("3", "opt-out")]


async def test_a_large_report_is_streamed_not_materialised(
    autojump_clock: MockClock, clock: WallClock
) -> None:
    sim = ApsisSimulator(clock, client_id="crmsync", client_secret=SECRET, report_chunk_rows=200)
    n = 20000
    for i in range(n):
        sim.add_profile(f"{100000 + i}", consents={ConsentKey(NEWS, CHANNEL_EMAIL): "opt-in"})
    async with trio.open_nursery() as nursery:
        http = httpx.AsyncClient(transport=StreamingASGITransport(sim, nursery), base_url="http://sim.test")
        client = ApsisClient("http://sim.test", http=http, client_id="crmsync", client_secret=SECRET,
                             clock=clock)
        count = 0
        body_chars = 0
        chunks_at_first_row = -1
        tracemalloc.start()
        try:
            async with aclosing(client.consent_report([NEWS], CHANNEL_EMAIL)) as rows:
                async for row in rows:
                    if count == 0:
                        chunks_at_first_row = sim.report_chunks_sent
                        assert sim.report_downloads_completed == 0
                        base, _ = tracemalloc.get_traced_memory()
                        tracemalloc.reset_peak()
                    count += 1
                    body_chars += len(row.profile_key) + len(KEYSPACE_CRM_ID) + len(row.topic) + \
                        len(row.channel) + len(row.type) + len(row.modified_at or "") + 7
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        await http.aclose()
        await trio.testing.wait_all_tasks_blocked()  # let the app task finish its last send
        nursery.cancel_scope.cancel()
    assert count == n
    assert sim.report_downloads_completed == 1
    total_chunks = sim.report_chunks_sent
    assert total_chunks > 100
    assert chunks_at_first_row <= 3  # the first row came out while the server had sent almost nothing
    assert body_chars > 2_000_000
    assert peak - base < body_chars // 4, (peak - base, body_chars)


# -- P9 -----------------------------------------------------------------------------------------------------


async def test_merge_joins_two_profiles_and_creates_missing_ones(
    autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator
) -> None:
    sim.add_profile("1", {"com.apsis1.attributes.firstname": "Jane"},
                    consents={ConsentKey(NEWS, CHANNEL_EMAIL): "opt-in"}, tags={"usercreated.tags.vip-ab12cd"})
    await trio.sleep(10)
    sim.add_profile("jane@x.be", keyspace=KEYSPACE_EMAIL, consents={ConsentKey(NEWS, CHANNEL_EMAIL): "opt-out"},
                    tags={"usercreated.tags.prospect-ef34gh"})
    await client.merge_profiles((KEYSPACE_CRM_ID, "1"), (KEYSPACE_EMAIL, "jane@x.be"))
    assert sim.same_profile((KEYSPACE_CRM_ID, "1"), (KEYSPACE_EMAIL, "jane@x.be"))
    merged = sim.profile("1")
    assert merged is not None
    assert merged.attributes[ATTR_EMAIL] == "jane@x.be"
    assert merged.attributes["com.apsis1.attributes.firstname"] == "Jane"
    assert merged.consents[ConsentKey(NEWS, CHANNEL_EMAIL)] == "opt-out"  # the later consent wins
    assert merged.tags == {"usercreated.tags.vip-ab12cd", "usercreated.tags.prospect-ef34gh"}
    assert sim.writes["merge_profiles"] == 1
    await client.merge_profiles((KEYSPACE_CRM_ID, "1"), (KEYSPACE_EMAIL, "jane@x.be"))  # already one: fine
    await client.merge_profiles((KEYSPACE_CRM_ID, "5"), (KEYSPACE_EMAIL, "new@x.be"))  # neither exists
    assert sim.same_profile((KEYSPACE_CRM_ID, "5"), (KEYSPACE_EMAIL, "new@x.be"))
    assert sim.profile("new@x.be", keyspace=KEYSPACE_EMAIL) is not None


async def test_merge_conflict_is_a_typed_error_and_changes_nothing(
    autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator
) -> None:
    sim.add_profile("1")
    sim.add_profile("2")
    with pytest.raises(ApsisMergeConflictError) as info:
        await client.merge_profiles((KEYSPACE_CRM_ID, "1"), (KEYSPACE_CRM_ID, "2"))
    assert isinstance(info.value, ApsisConflictError) and info.value.status == 409
    await client.merge_profiles((KEYSPACE_CRM_ID, "1"), (KEYSPACE_EMAIL, "a@x.be"))
    with pytest.raises(ApsisMergeConflictError):  # the merged profile already has crm-id 1
        await client.merge_profiles((KEYSPACE_EMAIL, "a@x.be"), (KEYSPACE_CRM_ID, "2"))
    assert not sim.same_profile((KEYSPACE_CRM_ID, "1"), (KEYSPACE_CRM_ID, "2"))
    assert sim.writes["merge_profiles"] == 3


async def test_merge_body_is_validated(
    autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator
) -> None:
    bodies: list[Any] = [{"profiles": [{"keyspace_discriminator": KEYSPACE_CRM_ID, "profile_key": "1"}]},
                         {"profiles": "x"}, {}]
    for body in bodies:
        response = await client.http.put("/audience/profiles/merges", content=json.dumps(body),
                                         headers={"authorization": f"Bearer {(await client.tokens.get()).value}",
                                                  "content-type": "application/json"})
        assert response.status_code == 400
