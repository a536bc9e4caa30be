"""Reading key ranges with several Efficy sessions (issue 8 item 1: "key ranges can be read in parallel"):
every contact delivered once, in key order, each page only after every page before it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
import trio
import trio.testing

from crmsync.clock import WallClock
from crmsync.connectors.efficy.client import EfficyClient
from crmsync.connectors.efficy.paging import ContactPage, decode_position
from crmsync.connectors.efficy.ranges import read_pages
from crmsync.connectors.efficy.simulator import EfficySimulator


def add(sim: EfficySimulator, n: int) -> list[int]:
    return [sim.add_contact(name=f"Doe{i}", first_name="Jane", email=f"jane{i}@x.be") for i in range(n)]


class Reads:
    """Pages as delivered, and how many contact pages were being read at once at most."""

    def __init__(self) -> None:
        self.pages: list[ContactPage] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def watch(self, client: EfficyClient) -> EfficyClient:
        inner = client.list_contacts

        async def counted(*args: Any, **kwargs: Any) -> ContactPage:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                return await inner(*args, **kwargs)
            finally:
                self.in_flight -= 1

        client.list_contacts = counted  # type: ignore[method-assign]
        return client

    async def deliver(self, page: ContactPage, read_at: datetime) -> None:
        self.pages.append(page)
        await trio.sleep(0.05)  # the consumer is slower than one read: ranges pile up ahead of it

    def ids(self) -> list[int]:
        return [int(c.contact_id) for p in self.pages for c in p.records]


def sessions(client: EfficyClient, reads: Reads, n: int) -> list[EfficyClient]:
    clients = [client] + [client.new_session() for _ in range(n - 1)]
    return [reads.watch(c) for c in clients]


async def test_several_sessions_deliver_every_contact_once_in_key_order(
        autojump_clock: trio.testing.MockClock, sim: EfficySimulator, client: EfficyClient, clock: WallClock) -> None:
    ids = add(sim, 83)
    for gone in ids[10:25] + ids[40:41]:  # sparse keys: ranges are cut from the keys, not from arithmetic
        sim.delete_contact(gone)
    sim.latency = 0.2
    reads = Reads()
    await read_pages(sessions(client, reads, 3), None, reads.deliver, page_size=5, now=clock.now)
    assert reads.ids() == sorted(c["K_CONTACT"] for c in sim.contacts())
    assert all(len(p.records) <= 5 for p in reads.pages)
    # each delivered position covers exactly the contacts delivered so far (what a checkpoint relies on)
    seen = 0
    for page in reads.pages[:-1]:
        seen += len(page.records)
        assert page.next_position is not None
        upto = decode_position(page.next_position)
        assert seen == sum(1 for cid in reads.ids() if cid <= upto)
    assert reads.pages[-1].next_position is None
    assert reads.max_in_flight >= 2  # the ranges really were read at the same time
    assert sim.sessions_created >= 3  # each with its own Efficy session


async def test_contacts_created_during_the_read_are_read_at_the_end(
        autojump_clock: trio.testing.MockClock, sim: EfficySimulator, client: EfficyClient, clock: WallClock) -> None:
    add(sim, 40)
    reads = Reads()
    late: list[int] = []

    async def deliver(page: ContactPage, read_at: datetime) -> None:
        if not late:
            late.extend(add(sim, 7))  # created while the rest is read: higher keys
        await reads.deliver(page, read_at)

    await read_pages(sessions(client, reads, 3), None, deliver, page_size=6, now=clock.now)
    assert reads.ids() == sorted(c["K_CONTACT"] for c in sim.contacts())
    assert set(late) <= set(reads.ids())


async def test_one_session_pages_exactly_as_iter_contacts(
        autojump_clock: trio.testing.MockClock, sim: EfficySimulator, client: EfficyClient, clock: WallClock) -> None:
    add(sim, 12)
    first = await client.list_contacts(page_size=4)
    reads = Reads()
    await read_pages([client], first.next_position, reads.deliver, page_size=4, now=clock.now)
    want = [p async for p in client.iter_contacts(first.next_position, page_size=4)]
    assert reads.pages == want
    assert reads.pages[-1].records == () and reads.pages[-1].next_position is None


async def test_a_failing_range_read_fails_the_whole_read(
        autojump_clock: trio.testing.MockClock, sim: EfficySimulator, client: EfficyClient, clock: WallClock) -> None:
    add(sim, 30)
    sim.allow_sql = False
    reads = Reads()
    with pytest.raises(Exception, match="authorized to execute this query"):
        await read_pages(sessions(client, reads, 2), None, reads.deliver, page_size=5, now=clock.now)
    assert reads.pages == []
