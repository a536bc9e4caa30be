"""The shape both flows share: a short pipeline of stages joined by bounded trio memory channels.

* **read**: the changed records, in source order, each numbered (``seq``) once (repeats dropped);
* **plan and write**: up to ``records_in_progress`` records at once (by default ``RECORDS_PER_SLOT`` x
  ``workers``); each reads the person once from each side, calls the pure rules (``rules.plan_*``) and makes
  the writes the plan asks for. Calls in flight are bounded per API by ``workers`` (each API client's
  ``max_concurrency``), not by the records: a record waiting for a batched read, its phone's turn or the store
  holds no call slot, so the slots stay busy while more records than slots are in progress, and the reads of
  later records run ahead of the writes of earlier ones. Report rows are buffered per record;
* **acknowledge**: one task receives the finished records out of order and releases them *in order*: a record
  is acknowledged only when every record before it is. It reports them and commits their store writes (links,
  fingerprints, observations) one transaction per group of records, and it alone moves the cursor, in the
  run's last transaction, after every record was acknowledged.

Store reads are batched too (:class:`StoreReads`): the records' reads that arrive while one read transaction
runs share the next one, so a group of records costs one thread hop, not one per record.

Bounded channels give back-pressure: reads run at most a window of records ahead of the writes, and the
workers a few ahead of the acknowledgements, so memory is bounded by the settings, not by the number of records.
"""

from __future__ import annotations

import bisect
import contextlib
import sqlite3
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import trio

from crmsync.clock import WallClock
from crmsync.connectors.errors import FatalApiError
from crmsync.connectors.mobilecommons import MobileCommonsClient, Profile
from crmsync.daemon.runs import RunContext
from crmsync.state import Database

T = TypeVar("T")
R = TypeVar("R")
TxFn = Callable[[sqlite3.Connection], Any]

#: records in progress per call slot (``workers``): enough that slots stay busy while records wait for a
#: batched read, their phone's turn or the store; few enough that memory stays small
RECORDS_PER_SLOT = 4


@dataclass
class _Read:
    fn: Callable[[sqlite3.Connection], Any]
    done: trio.Event
    value: Any = None
    error: BaseException | None = None


class StoreReads:
    """Store reads of many records in one transaction (one thread hop): the reads asked for while a read
    transaction runs wait for it and then go together in the next one. Reads see committed state only, as a
    transaction of their own would."""

    def __init__(self, db: Database):
        self.db = db
        self._queue: list[_Read] = []
        self._wakeup = trio.Event()

    async def get(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        read = _Read(fn, trio.Event())
        self._queue.append(read)
        self._wakeup.set()
        await read.done.wait()
        if read.error is not None:
            raise read.error
        return cast(R, read.value)

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            await trio.lowlevel.checkpoint()  # the records woken together ask together
            group, self._queue = self._queue, []
            try:
                await self.db.tx(_read_all, group)
            except BaseException as exc:
                for read in group:
                    read.error = read.error or exc
                if not isinstance(exc, Exception):
                    raise
            finally:
                for read in group:
                    read.done.set()


def _read_all(c: sqlite3.Connection, group: list[_Read]) -> None:
    for read in group:
        try:
            read.value = read.fn(c)
        except Exception as exc:  # one record's failed read is that record's error, not the group's
            read.error = exc


class RecordRun:
    """What a worker sees of the run: the store, the clock, and report rows buffered for this one record, so
    that the acknowledge stage reports them in order and together with the record's store writes."""

    def __init__(self, run: RunContext, reads: StoreReads | None = None):
        self._run = run
        self._reads = reads
        self.db: Database = run.db
        self.clock: WallClock = run.clock
        self.integration = run.integration
        self.rows: list[tuple[str, dict[str, Any]]] = []

    @property
    def run_id(self) -> int:
        return self._run.run_id

    def now_iso(self) -> str:
        return self._run.now_iso()

    async def read(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        """A store read, batched with other records' reads when the pipeline runs (else a transaction)."""
        if self._reads is None:
            return await self.db.tx(fn)
        return await self._reads.get(fn)

    def report_to(self, run: RunContext) -> None:
        """The buffered rows into ``run``'s report, in order."""
        for outcome, fields in self.rows:
            run.record(outcome, **fields)

    def record(self, outcome: str, **fields: Any) -> None:
        self.rows.append((outcome, fields))

    def skip(self, reason: str, **fields: Any) -> None:
        self.rows.append(("skipped", {"reason": reason, **fields}))


@dataclass
class _Done:
    seq: int
    rows: list[tuple[str, dict[str, Any]]]
    writes: list[TxFn]


Handler = Callable[[int, T, RecordRun], Awaitable[list[TxFn]]]


@dataclass
class Pipeline(Generic[T]):
    """One run of one flow through the stages. ``ids`` gives a record's report ids (for a rejection row);
    ``key`` drops repeats (rows may repeat across export files). ``workers`` is the calls in flight per API
    (the clients enforce it); ``records_in_progress`` (default ``RECORDS_PER_SLOT`` x ``workers``) bounds the
    records between the read and the acknowledge stages."""

    run: RunContext
    handle: Handler[T]
    ids: Callable[[T], dict[str, Any]]
    key: Callable[[T], Hashable]
    workers: int
    group: int
    records_in_progress: int | None = None

    async def run_all(self, source: AsyncIterator[T], final: Callable[[], list[TxFn]],
                      background: Callable[[trio.Nursery], Awaitable[None]] | None = None) -> None:
        """Drive every record of ``source``; ``final()`` gives the writes of the run's last transaction (the
        cursor), committed only if the run was not interrupted. ``background`` (e.g. a batched reader the
        workers use) runs beside the stages and is cancelled once every record is acknowledged."""
        in_progress = self.records_in_progress or RECORDS_PER_SLOT * self.workers
        send_items, recv_items = trio.open_memory_channel[tuple[int, T]](in_progress)
        send_done, recv_done = trio.open_memory_channel[_Done](in_progress)
        reads = StoreReads(self.run.db)
        try:
            async with trio.open_nursery() as nursery:
                if background is not None:
                    nursery.start_soon(background, nursery)
                nursery.start_soon(reads.run)
                nursery.start_soon(self._read, source, send_items)
                async with recv_items, send_done:
                    for _ in range(in_progress):
                        nursery.start_soon(self._work, recv_items.clone(), send_done.clone(), reads)
                await self._acknowledge(recv_done, final)
                nursery.cancel_scope.cancel()  # only the background tasks are left
        except BaseExceptionGroup as group:
            # the first real failure ends the run, as it would without workers (the others were cancelled)
            cause = _first_failure(group)
            if cause is None:
                raise
            raise cause from None

    async def _read(self, source: AsyncIterator[T], out: trio.MemorySendChannel[tuple[int, T]]) -> None:
        seen: set[Hashable] = set()
        async with out:
            seq = 0
            async for item in source:
                if self.key(item) in seen:
                    continue
                if self.run.should_stop():
                    self.run.interrupted = True  # a safe point: what is done is acknowledged, the cursor stays
                    return
                seen.add(self.key(item))
                await out.send((seq, item))
                seq += 1

    async def _work(self, items: trio.MemoryReceiveChannel[tuple[int, T]],
                    done: trio.MemorySendChannel[_Done], reads: StoreReads) -> None:
        async with items, done:
            async for seq, item in items:
                record = RecordRun(self.run, reads)
                try:
                    writes = await self.handle(seq, item, record)
                except FatalApiError as exc:
                    # one record refused (validation, ...): report the API's message, carry on (run is partial)
                    record.rows = [("rejected", {**self.ids(item), "message": exc.message})]
                    writes = []
                await done.send(_Done(seq, record.rows, writes))

    async def _acknowledge(self, done: trio.MemoryReceiveChannel[_Done], final: Callable[[], list[TxFn]]
                           ) -> None:
        waiting: dict[int, _Done] = {}
        next_seq = 0
        writes: list[TxFn] = []
        grouped = 0
        async with done:
            async for finished in done:
                waiting[finished.seq] = finished
                while next_seq in waiting:  # in order: only when every record before it is acknowledged
                    record = waiting.pop(next_seq)
                    next_seq += 1
                    self.run.fetched()
                    for outcome, fields in record.rows:
                        self.run.record(outcome, **fields)
                    writes += record.writes
                    grouped += 1
                    if grouped >= self.group:
                        await self.run.flush(*writes)  # one transaction per group of records
                        writes, grouped = [], 0
        if self.run.interrupted:
            await self.run.flush(*writes)
            return
        await self.run.flush(*writes, *final())


def _first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            inner = _first_failure(exc)
            if inner is not None:
                return inner
        elif not isinstance(exc, trio.Cancelled):
            return exc
    return None


class PhoneTurns:
    """Records that share a mobile number take turns, in source order, so that the first in the export keeps
    the profile (Mobile Commons has one profile per phone) whatever the workers' timing.

    A worker registers its record's phone (or None) as soon as it has read the person; it may then write only
    once every earlier record has registered and no earlier record with the same phone is still unfinished.
    The earliest unregistered record's worker never waits, so the turns cannot deadlock."""

    def __init__(self) -> None:
        self._registered: set[int] = set()
        self._watermark = 0  # every seq below it is registered
        self._queues: dict[str, list[int]] = {}
        # the records waiting for their turn: each is woken alone, when its own turn may have come (waking
        # every waiter on every change cost a task switch per waiter per record)
        self._waiting: dict[int, tuple[str, trio.Event]] = {}

    def _may_go(self, seq: int, phone: str) -> bool:
        return self._watermark > seq and self._queues[phone][0] == seq

    def _wake(self, seq: int) -> None:
        waiting = self._waiting.get(seq)
        if waiting is not None and self._may_go(seq, waiting[0]):
            del self._waiting[seq]
            waiting[1].set()

    def register(self, seq: int, phone: str | None) -> None:
        if seq < self._watermark or seq in self._registered:
            return
        self._registered.add(seq)
        if phone is not None:
            bisect.insort(self._queues.setdefault(phone, []), seq)
        passed = self._watermark
        while self._watermark in self._registered:
            self._registered.discard(self._watermark)
            self._watermark += 1
        for earlier in range(passed, self._watermark):  # every record before these is registered now
            self._wake(earlier)

    async def wait_turn(self, seq: int, phone: str) -> None:
        if self._may_go(seq, phone):
            return
        turn = trio.Event()
        self._waiting[seq] = (phone, turn)
        try:
            await turn.wait()
        finally:
            self._waiting.pop(seq, None)

    def release(self, seq: int, phone: str) -> None:
        queue = self._queues[phone]
        queue.remove(seq)
        if queue:
            self._wake(queue[0])
        else:
            del self._queues[phone]


@dataclass
class _Slot:
    phone: str
    done: trio.Event
    profile: Profile | None = None
    error: BaseException | None = None


class ProfileReads:
    """Mobile Commons profiles read many at a time: ``profiles?phone_number=a,b,c`` takes a comma-separated
    list (research B3). Each worker asks for one phone; the phones asked for within ``gather`` seconds of each
    other share one call (up to ``max_batch``), so a contact costs a fraction of a read instead of one."""

    def __init__(self, mc: MobileCommonsClient, *, max_batch: int = 100, gather: float = 0.02):
        self.mc = mc
        self.max_batch = max_batch
        self.gather = gather
        self._queue: list[_Slot] = []
        self._wakeup = trio.Event()

    async def get(self, phone: str) -> Profile | None:
        slot = _Slot(phone, trio.Event())
        self._queue.append(slot)
        self._wakeup.set()
        await slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return slot.profile

    async def run(self, nursery: trio.Nursery) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            await trio.sleep(self.gather)  # let the requests arriving together share the call
            while self._queue:
                batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
                nursery.start_soon(self._fetch, batch)

    async def _fetch(self, batch: list[_Slot]) -> None:
        wanted = set(dict.fromkeys(slot.phone for slot in batch))
        found: dict[str, Profile] = {}
        try:
            profiles = cast("AsyncGenerator[Profile, None]", self.mc.profiles(phone_numbers=sorted(wanted)))
            async with contextlib.aclosing(profiles):
                async for profile in profiles:
                    if profile.phone_number in wanted:
                        found[profile.phone_number] = profile
                        if len(found) == len(wanted):
                            break  # every phone answered: no need for the empty last page
        except BaseException as exc:
            for slot in batch:
                slot.error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            for slot in batch:
                slot.profile = found.get(slot.phone)
                slot.done.set()
