"""The simulator's Efficy quirks on the wire, and the webhook sender delivering its outbox."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, MutableMapping
from datetime import timedelta
from typing import Any

import httpx
import pytest
import trio

from crmsync.clock import WallClock
from crmsync.connectors.efficy.client import EfficyClient
from crmsync.connectors.efficy.simulator import EfficySimulator, EfficyWebhookSender
from crmsync.connectors.efficy.webhooks import (
    SIGNATURE_HEADER,
    ContactChange,
    parse_contract_webhook,
    parse_native_webhook,
)
from crmsync.connectors.simkit import (
    Request,
    Response,
    SimulatedDisconnect,
    asgi_client,
    read_request,
    send_response,
)

from .conftest import API_KEY, START

SECRET = "hook-secret-77"
Clients = list[httpx.AsyncClient]


async def rpc(sim: EfficySimulator, contexts: list[dict[str, Any]], **headers: str) -> httpx.Response:
    async with asgi_client(sim) as http:
        return await http.post("/crm/json", content=json.dumps(contexts).encode(),
                               headers={"X-Efficy-ApiKey": API_KEY, **headers})


# -- the wire ----------------------------------------------------------------------------------------------

async def test_echoes_contexts_with_efficy_typed_values(sim: EfficySimulator) -> None:
    cid = sim.add_contact(name="Doe", first_name="Jane", email="jane@x.be", opened=False)
    response = await rpc(sim, [
        {"@name": "consult", "#id": "c1", "entity": "Cont", "key": cid, "closecontext": True,
         "@func": [{"@name": "master", "tableview": 0}]},
        {"@name": "api", "#id": "a1", "@func": [{"@name": "executesqlquery", "queryparams": "0",
                                                 "sql": "select * from CONTACTS where K_CONTACT > :p1",
                                                 "recordcount": 1}]},
    ])
    assert response.status_code == 200
    assert response.headers["set-cookie"].startswith("EfficySession=")
    consult, api = response.json()
    assert (consult["#id"], api["#id"]) == ("c1", "a1")
    master = consult["@func"][0]["#result"]
    assert master["#class"] == "dataset"
    row = master["#data"][0]
    assert row["K_CONTACT"] == cid  # a number here ...
    assert row["OPENED"] == "0" and row["BIRTHDATE"] == "1899-12-30T00:00:00"
    assert row["D_CHANGE"] == "2024-03-14T09:00:00"
    sql_rows = api["@func"][0]["#result"]["#data"]
    assert sql_rows[0]["K_CONTACT"] == str(cid)  # ... and a numeric string there


async def test_business_errors_are_http_200_exceptions(sim: EfficySimulator) -> None:
    response = await rpc(sim, [{"@name": "api", "@func": [{"@name": "nosuchfunction"}]}])
    assert response.status_code == 200
    [element] = response.json()
    assert element["@name"] == "exception"
    assert "nosuchfunction" in element["#error"]["errorstring"]
    bad_key = await rpc(sim, [{"@name": "api", "@func": []}], **{"X-Efficy-ApiKey": "nope"})
    assert bad_key.status_code == 200 and bad_key.json()[0]["#error"]["errorstring"] == "Invalid User"


async def test_body_without_content_length_is_read_as_truncated(sim: EfficySimulator) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'[{"@name":"api","@func":[{"@name":"currentuserfullname"}]}]'

    async with asgi_client(sim) as http:
        response = await http.post("/crm/json", content=chunks(), headers={"X-Efficy-ApiKey": API_KEY})
    assert response.status_code == 200
    assert "not valid JSON" in response.json()[0]["#error"]["errorstring"]


async def test_logoff_header_closes_the_session(sim: EfficySimulator) -> None:
    response = await rpc(sim, [{"@name": "api", "@func": [{"@name": "currentuserfullname"}]}],
                         **{"X-Efficy-Logoff": "true"})
    assert response.status_code == 200 and sim.sessions_created == 1
    assert sim.sessions == {}


async def test_edit_creates_and_updates_and_records_changes(sim: EfficySimulator,
                                                           client: EfficyClient) -> None:
    data = {"NAME": "Doe", "EMAIL1": "j@x.be", "OPENED": "0"}
    body = await client.call([{"@name": "edit", "entity": "Cont", "key": 0, "commit": True,
                               "closecontext": True, "@func": [{"@name": "update", "@data": data}]}])
    cid = body[0]["key"]
    assert body[0]["inserted"] is True
    assert sim.contact(cid)["NAME"] == "Doe" and sim.contact(cid)["OPENED"] is False
    await client.call([{"@name": "edit", "entity": "Cont", "key": cid, "commit": True,
                        "@func": [{"@name": "update", "@data": {"CITY": "Gent"}}]}])
    await client.call([{"@name": "edit", "entity": "Cont", "key": cid, "commit": False,
                        "@func": [{"@name": "update", "@data": {"CITY": "Brugge"}}]}])
    assert sim.contact(cid)["CITY"] == "Gent"  # uncommitted edit discarded
    changes = sim.drain_outbox()
    assert [(c.key, c.operation) for c in changes] == [(cid, "Create"), (cid, "Update")]
    assert changes[1].fields == {"CITY": "Gent"}


async def test_lookups_by_field_and_email(sim: EfficySimulator, client: EfficyClient) -> None:
    a = sim.add_contact(name="A", email="a@x.be")
    sim.add_contact(name="B", email="b@x.be", opened=False)
    c = sim.add_contact(name="C", email="c@x.be")
    body = await client.call([{"@name": "api", "#id": "q", "@func": [
        {"@name": "consultmanyex", "entity": "Cont", "findfield": "OPENED", "keys": "1", "separator": ";",
         "orderbyfield": "K_CONTACT"},
        {"@name": "contactidsfromemailaddresses", "recipients": "C@x.be;nobody@x.be"},
    ]}])
    many, by_email = body[0]["@func"]
    assert [r["K_CONTACT"] for r in many["#result"]["#data"]] == [str(a), str(c)]
    assert [r["K_CONTACT"] for r in by_email["#result"]["#data"]] == [str(c)]


async def test_modification_times_follow_the_simulated_clock(sim: EfficySimulator, client: EfficyClient,
                                                             autojump_clock: trio.abc.Clock) -> None:
    cid = sim.add_contact(name="Doe")
    await trio.sleep(3600)
    sim.update_contact(cid, email="new@x.be")
    assert (await client.get_contact(cid)).modified_at == START + timedelta(hours=1)


# -- the webhook sender ------------------------------------------------------------------------------------

class Receiver:
    """A tiny stand-in for the daemon's webhook endpoint: records requests, answers queued statuses."""

    def __init__(self, statuses: list[int] | None = None, drop: int = 0):
        self.received: list[Request] = []
        self.statuses = list(statuses or [])
        self.drop = drop

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        request = await read_request(dict(scope), receive)
        if self.drop:
            self.drop -= 1
            raise SimulatedDisconnect()
        self.received.append(request)
        status = self.statuses.pop(0) if self.statuses else 204
        await send_response(send, Response.empty(status))


@pytest.fixture
async def daemon_http() -> AsyncIterator[list[httpx.AsyncClient]]:
    clients: list[httpx.AsyncClient] = []
    yield clients
    for http in clients:
        await http.aclose()


def sender_for(clients: list[httpx.AsyncClient], sim: EfficySimulator, receiver: Receiver,
               **kwargs: Any) -> EfficyWebhookSender:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=receiver), base_url="http://daemon.test")
    clients.append(http)
    return EfficyWebhookSender(sim, "http://daemon.test/hooks/efficy", http=http, **kwargs)


async def test_native_sender_batches_all_tables(sim: EfficySimulator, daemon_http: Clients) -> None:
    receiver = Receiver()
    sender = sender_for(daemon_http, sim, receiver, form="native", batch_size=2,
                        headers={"X-Hook-Token": "t0k"})
    news = sim.add_profile("Newsletter")
    a = sim.add_contact(name="A")
    b = sim.add_contact(name="B")
    sim.update_contact(a, email="a@x.be")
    sim.record_foreign_change(10000, 7)
    sim.add_profile_to_contact(b, news)
    assert await sender.flush() == 5
    assert len(receiver.received) == 3  # 5 records in batches of 2
    events: list[ContactChange] = []
    for request in receiver.received:
        assert request.path == "/hooks/efficy" and request.header("x-hook-token") == "t0k"
        payload = request.json()
        assert payload["database"] == sim.database and len(payload["records"]) <= 2
        events.extend(parse_native_webhook(request.body))
    assert [(e.contact_id, e.operation) for e in events] == [
        (str(a), "created"), (str(b), "created"), (str(a), "updated"), (str(b), "updated")]
    assert all(e.changed_at == START for e in events)
    assert await sender.flush() == 0 and len(receiver.received) == 3


async def test_contract_sender_signs_and_splits_consents(sim: EfficySimulator, daemon_http: Clients) -> None:
    receiver = Receiver()
    sender = sender_for(daemon_http, sim, receiver, form="contract", secret=SECRET,
                        consent_url="http://daemon.test/hooks/efficy-consents")
    news = sim.add_profile("Newsletter")
    a = sim.add_contact(name="A")
    sim.record_foreign_change(10000, 7)
    sim.add_profile_to_contact(a, news)
    sim.delete_contact(a)
    assert await sender.flush() == 3
    paths = [r.path for r in receiver.received]
    assert paths == ["/hooks/efficy", "/hooks/efficy-consents", "/hooks/efficy"]
    assert receiver.received[1].json() == [{"record_id": str(a), "consent_base_id": str(news),
                                            "has_consented": True}]
    events = [e for r in receiver.received
              for e in parse_contract_webhook(r.body, signature=r.header(SIGNATURE_HEADER), secret=SECRET)]
    assert [(e.contact_id, e.operation) for e in events] == [
        (str(a), "created"), (str(a), "updated"), (str(a), "deleted")]


async def test_sender_retries_failures_and_drops_rejections(sim: EfficySimulator,
                                                            daemon_http: Clients) -> None:
    receiver = Receiver(statuses=[503, 204, 400], drop=1)
    sender = sender_for(daemon_http, sim, receiver, form="native", batch_size=1)
    sim.add_contact(name="A")
    assert await sender.flush() == 0  # connection dropped: kept
    assert sender.pending == 1
    assert await sender.flush() == 0  # 503: kept
    assert await sender.flush() == 1  # 204
    sim.add_contact(name="B")
    assert await sender.flush() == 0  # 400: the receiver will never take it
    assert (sender.pending, sender.dropped, sender.delivered) == (0, 1, 1)


async def test_sender_run_loop_delivers_on_its_interval(sim: EfficySimulator, daemon_http: Clients,
                                                        autojump_clock: trio.abc.Clock) -> None:
    receiver = Receiver()
    sender = sender_for(daemon_http, sim, receiver, form="contract", secret=SECRET, interval=120)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender.run)
        sim.add_contact(name="A")
        await trio.sleep(60)
        assert receiver.received == []  # Efficy's non-realtime hooks arrive minutes later
        await trio.sleep(61)
        assert len(receiver.received) == 1
        nursery.cancel_scope.cancel()


async def test_contract_form_needs_a_secret(sim: EfficySimulator) -> None:
    async with httpx.AsyncClient() as http:
        with pytest.raises(ValueError, match="secret"):
            EfficyWebhookSender(sim, "http://x", http=http, form="contract")


async def test_seed_demo_is_deterministic_and_readable(clock: WallClock, client: EfficyClient,
                                                       sim: EfficySimulator) -> None:
    ids = sim.seed_demo(25, seed=3)
    other = EfficySimulator(clock, api_key=API_KEY)
    other.seed_demo(25, seed=3)
    assert [c["EMAIL1"] for c in other.contacts()] == [c["EMAIL1"] for c in sim.contacts()]
    assert sim.outbox == []
    page = await client.list_contacts(page_size=100)
    assert page.total == 25 and len(page.records) == 25 and page.next_position is None
    vip = await client.run_query(ids["vip_query"])
    assert vip == [r.contact_id for r in page.records if int(r.contact_id) % 10 == 0]


async def test_demo_contacts_computed_from_their_key_answer_as_stored_ones(
        clock: WallClock, client: EfficyClient, sim: EfficySimulator) -> None:
    """Demo contacts are not stored (a million must fit in a benchmark), yet read, change, link and delete as
    any other contact, and the same demo is the same data every time."""
    ids = sim.seed_demo(2000)
    contacts = sim.contacts()
    assert len(contacts) == 2000
    news = sum(ids["newsletter_profile"] in c["profile_ids"] for c in contacts)
    sms = sum(ids["sms_profile"] in c["profile_ids"] for c in contacts)
    assert 1100 < news < 1300 and 500 < sms < 700  # about 60 % and 30 %
    assert 1700 < sum(bool(c["OPENED"]) for c in contacts) < 1900  # about 90 % open
    assert len({c["EMAIL1"] for c in contacts}) == 2000
    first, second, third = (c["K_CONTACT"] for c in contacts[:3])
    sim.update_contact(first, name="Edited")
    sim.add_profile_to_contact(second, ids["sms_profile"])
    sim.remove_profile_from_contact(second, ids["newsletter_profile"])
    sim.delete_contact(third)
    assert sim.contact(first)["NAME"] == "Edited" and sim.contact(first)["D_CHANGE"] > contacts[0]["D_CHANGE"]
    assert sim.contact(second)["profile_ids"] == [ids["sms_profile"]]
    with pytest.raises(KeyError):
        sim.contact(third)
    page = await client.list_contacts(page_size=3)
    assert [r.contact_id for r in page.records] == [str(first), str(second), str(contacts[3]["K_CONTACT"])]
    assert page.records[0].last_name == "Edited" and list(page.records[1].profile_ids or ()) == [
        str(ids["sms_profile"])]
    assert page.total == 1999
    added = sim.add_contact(name="Late")  # after the demo's keys
    assert added > contacts[-1]["K_CONTACT"] and sim.contacts()[-1]["K_CONTACT"] == added
    with pytest.raises(ValueError):
        sim.seed_demo(10)
