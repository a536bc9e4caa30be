"""Reading every contact with several Efficy sessions at once, delivered in key order.

Efficy publishes no limit on sessions or parallel calls, and parallel sessions are reported to help
(research §8.4, SDK benchmark); how many a deployment may open is theirs to say (``full_sync.read_sessions``,
1 by default: one session, pages one after the other, exactly as :meth:`EfficyClient.iter_contacts`).

With several sessions the key space is cut into ranges of exactly one page each, from the keys themselves
(:meth:`EfficyClient.contact_keys`: one cheap key-only query per ``scan_pages`` pages), so sparse or
clustered keys cut as well as dense ones. Each range ``(after, until]`` is read by whichever session is free
(one call at a time per session); pages are delivered strictly in key order, each only once every page
before it was delivered, so a position taken from a delivered page means what it means on one session:
every contact up to it was delivered. The keys after the last full range are read to the end on one session
by plain keyset paging, which also picks up contacts created meanwhile (they get higher keys).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import trio

from crmsync.connectors.efficy.client import EfficyClient
from crmsync.connectors.efficy.paging import ContactPage, decode_position, encode_position

Deliver = Callable[[ContactPage, datetime], Awaitable[None]]

#: pages of keys asked for per key-only query, per session
SCAN_PAGES_PER_SESSION = 4


@dataclass(eq=False)
class _Range:
    """Contacts with ``after < key <= until`` (``until`` None: to the end, on one session)."""

    after: int
    until: int | None
    pages: list[tuple[ContactPage, datetime]] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)


class _Session:
    """One Efficy session, one call at a time (as the SDK's one-thread-per-session use)."""

    def __init__(self, client: EfficyClient):
        self.client = client
        self.lock = trio.Lock()


async def read_pages(sessions: Sequence[EfficyClient], position: str | None, deliver: Deliver, *,
                     page_size: int, now: Callable[[], datetime], include_profiles: bool = True,
                     ranges_ahead: int | None = None) -> None:
    """Every page after ``position`` to the end, each passed to ``deliver(page, read_at)`` in key order
    (``read_at``: when the page's read began). ``deliver`` awaiting is the back-pressure: at most
    ``ranges_ahead`` pages (default twice the sessions) are read ahead of it."""
    if not sessions:
        raise ValueError("at least one Efficy session")
    reader = _RangeReader([_Session(c) for c in sessions], deliver, page_size=page_size, now=now,
                          include_profiles=include_profiles)
    if len(sessions) == 1:
        await reader.read_to_end(position)
        return
    try:
        await reader.read_ranges(position, ranges_ahead or 2 * len(sessions))
    except BaseExceptionGroup as group:  # a failed read cancels the others: raise what failed, as one call would
        causes = [e for e in _leaves(group) if not isinstance(e, trio.Cancelled)]
        if len(causes) == 1:
            raise causes[0] from None
        raise


class _RangeReader:
    def __init__(self, sessions: list[_Session], deliver: Deliver, *, page_size: int,
                 now: Callable[[], datetime], include_profiles: bool):
        self.sessions = sessions
        self.deliver = deliver
        self.page_size = page_size
        self.now = now
        self.include_profiles = include_profiles

    async def read_ranges(self, position: str | None, ahead: int) -> None:
        order_send, order_recv = trio.open_memory_channel[_Range](ahead)  # ranges cut, in key order
        work_send, work_recv = trio.open_memory_channel[_Range](0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._cut, position, order_send, work_send)
            async with work_recv:
                for session in self.sessions:
                    nursery.start_soon(self._work, session, work_recv.clone())
            async with order_recv:
                async for rng in order_recv:
                    if rng.until is None:
                        await self.read_to_end(encode_position(rng.after))
                        break
                    await rng.done.wait()
                    for page, read_at in rng.pages:
                        await self.deliver(page, read_at)
                    rng.pages.clear()
            nursery.cancel_scope.cancel()  # nothing is left to read

    async def _cut(self, position: str | None, order: trio.MemorySendChannel[_Range],
                   work: trio.MemorySendChannel[_Range]) -> None:
        """Cut ranges of one page each from the keys; the last, partial one is the tail."""
        scanner = self.sessions[0]
        after = decode_position(position)
        want = self.page_size * SCAN_PAGES_PER_SESSION * len(self.sessions)
        async with order, work:
            while True:
                async with scanner.lock:
                    keys = await scanner.client.contact_keys(encode_position(after), want)
                for end in range(self.page_size, len(keys) + 1, self.page_size):
                    rng = _Range(after, keys[end - 1])
                    after = keys[end - 1]
                    await order.send(rng)
                    await work.send(rng)
                if len(keys) < want:
                    await order.send(_Range(after, None))  # read to the end by the delivering task
                    return

    async def _work(self, session: _Session, ranges: trio.MemoryReceiveChannel[_Range]) -> None:
        async with ranges:
            async for rng in ranges:
                assert rng.until is not None
                until = encode_position(rng.until)
                start = encode_position(rng.after)
                while True:  # a range is one page, unless keys were added inside it meanwhile
                    read_at = self.now()
                    async with session.lock:
                        page = await session.client.list_contacts(
                            start, page_size=self.page_size, include_profiles=self.include_profiles,
                            with_total=False, until=until)
                    rng.pages.append((page, read_at))
                    if page.next_position == until:
                        break
                    assert page.next_position is not None
                    start = page.next_position
                rng.done.set()

    async def read_to_end(self, position: str | None) -> None:
        """Plain keyset paging on the first session from ``position`` to the last page."""
        session = self.sessions[0]
        while True:
            read_at = self.now()
            async with session.lock:
                page = await session.client.list_contacts(position, page_size=self.page_size,
                                                          include_profiles=self.include_profiles)
            await self.deliver(page, read_at)
            if page.next_position is None:
                return
            position = page.next_position


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
