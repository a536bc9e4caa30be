"""Issue 8, item 3 (and the ea_to_mc benchmark's ceiling): ``workers`` call slots per API kept busy. A record
waiting for a batched read, its phone's turn or the store must not hold a slot, so the slots are measured from
the calls themselves: how many are in flight at each instant of the (simulated) run. Call counts and store
transactions are deterministic, so they are asserted exactly or bounded."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import trio
import trio.testing

from crmsync.connectors.everyaction import OptInStatus
from crmsync.daemon.integrations.everyaction_mobilecommons.pipeline import StoreReads
from crmsync.state import Database
from crmsync.state import queries as q
from tests.integrations.everyaction_mobilecommons.harness import NAME, World, make_config, make_world

N = 240
WORKERS = 8
LATENCY = 0.05


class SlotMeter(httpx.AsyncBaseTransport):
    """Calls in flight to one API over simulated time: their peak, and their integral (slot-seconds used)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, calls: list[tuple[str, str]], kinds: Counter[str]):
        self.inner, self.calls, self.kinds = inner, calls, kinds
        self.in_flight = self.peak = 0
        self.used = 0.0  # slot-seconds
        self.first: float | None = None
        self.last = 0.0
        self._stamp = 0.0

    def _tick(self) -> None:
        now = trio.current_time()
        self.used += self.in_flight * (now - self._stamp)
        self._stamp = now

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        per_record = not (path.startswith("/blob/") or "changedEntityExportJobs" in path)
        if per_record:
            self.kinds[f"{request.method} {path.rsplit('/', 1)[0] if path.startswith('/v4/people/') else path}"] += 1
            self._tick()
            self.first = trio.current_time() if self.first is None else self.first
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            return await self.inner.handle_async_request(request)
        finally:
            if per_record:
                self._tick()
                self.in_flight -= 1
                self.last = trio.current_time()


def _metered(world: World, kinds: Counter[str]) -> dict[str, SlotMeter]:
    transports = world.transports()
    assert world.calls is not None
    meters = {system: SlotMeter(t, world.calls, kinds) for system, t in transports.items()}
    world.transports = lambda: dict(meters)  # type: ignore[method-assign]
    return meters


def _count_transactions(world: World) -> list[int]:
    count = [0]
    real_tx = world.db.tx

    async def tx(fn: Any, *args: Any) -> Any:
        count[0] += 1
        return await real_tx(fn, *args)

    world.db.tx = tx  # type: ignore[method-assign]
    return count


async def _run_metered(world: World, tmp_path: Path, flow: str
                       ) -> tuple[dict[str, Any], Counter[str], dict[str, SlotMeter], list[int]]:
    """One run of ``flow`` with every per-record call counted by kind and every API's slots metered, and the
    store transactions it made counted."""
    kinds: Counter[str] = Counter()
    meters = _metered(world, kinds)
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id, workers=WORKERS,
                                                     day_hours=["06:00", "07:00"]))
        await sup.activate(NAME)
        kinds.clear()
        transactions = _count_transactions(world)
        report = await world.run(flow)
        nursery.cancel_scope.cancel()
    return report, kinds, meters, transactions


async def test_ea_to_mc_keeps_every_call_slot_busy_and_reads_the_store_once_per_group(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Seen failing first on the previous pipeline: EveryAction's slots 49 % busy, 249 store transactions."""
    world = await make_world(tmp_path)
    world.ea.latency = world.mc.latency = LATENCY
    world.ea.rows_per_file = 10_000  # real exports come in large files; the rows are not what is measured
    for i in range(N):
        world.ea.add_person(f"P{i}", "Slot", email=f"s{i}@example.org", phone=f"3125551{i:03d}",
                            phone_opt_in=OptInStatus.OPT_IN, address_line1=f"{i + 1} Main St", city="Chicago",
                            zip="60601")
    report, kinds, meters, transactions = await _run_metered(world, tmp_path, "ea_to_mc")
    assert report["run"]["status"] == "success" and report["counts"]["created"] == N
    # calls per contact: the person once, one profile_update, the Mobile Commons id back to EveryAction; the
    # profiles read many phones a call, never an empty extra page (none of these phones has a profile yet)
    assert kinds["GET /v4/people"] == N and kinds["POST /v4/people"] == N
    assert kinds["POST /api/profile_update"] == N and kinds["GET /api/profile"] == 0
    # how many phones share a read depends on when the records' turns come (at least three on average here)
    assert 0 < kinds["GET /api/profiles"] <= N // 3
    ea, mc = meters["everyaction"], meters["mobilecommons"]
    # calls in flight bounded per API by ``workers``, and that bound reached
    assert ea.peak == WORKERS and mc.peak <= WORKERS
    # EveryAction carries two calls per contact, so its slots bound the run: they stay busy from the first
    # record's call to the last one's (the reads of later records run while earlier ones write)
    busy = ea.used / (WORKERS * (ea.last - (ea.first or 0.0)))
    assert busy >= 0.9
    # store reads shared: far fewer transactions than records (was one read per record, plus the flushes);
    # the test's store runs inline, so only the reads asked for together share one (a thread hop gathers more)
    assert transactions[0] <= N // 2
    assert await world.db.tx(q.count_links, NAME) == N


async def test_store_reads_asked_together_share_one_transaction(tmp_path: Path) -> None:
    """Issue 8: "store reads for a group of records in one transaction (one thread hop per group)"; one
    record's failing read is that record's error only."""
    db = await Database.open(tmp_path / "state.db")
    await db.tx(q.kv_set, "i", "k", "v")
    reads = StoreReads(db)
    hops = db.thread_hops
    got: dict[int, Any] = {}

    async def record(i: int) -> None:
        try:
            got[i] = await reads.get(lambda c: q.kv_get(c, "i", "k") if i != 7 else 1 / 0)
        except ZeroDivisionError:
            got[i] = "failed"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reads.run)
        async with trio.open_nursery() as records:
            for i in range(50):
                records.start_soon(record, i)
        nursery.cancel_scope.cancel()
    await db.aclose()
    assert got == {i: "failed" if i == 7 else "v" for i in range(50)}
    assert db.thread_hops - hops == 1


async def test_mc_to_ea_keeps_every_call_slot_busy_the_same_way(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Issue 8, item 3: "mc_to_ea the same way" (seen failing first: 76 % busy, a transaction per record)."""
    world = await make_world(tmp_path)
    world.ea.latency = world.mc.latency = LATENCY
    for i in range(N):
        world.mc.opt_in(f"3125552{i:03d}", world.path_id)
        profile = world.mc.profile(f"3125552{i:03d}")
        assert profile is not None
        profile.email, profile.first_name = f"m{i}@example.org", f"M{i}"
    report, kinds, meters, transactions = await _run_metered(world, tmp_path, "mc_to_ea")
    assert report["run"]["status"] == "success" and report["counts"]["created"] == N
    # per new opt-in: the search by mobile number, people/find, findOrCreate, the VAN ID into the profile's
    # Constituent ID; the changed profiles are read a page at a time (then the empty last page)
    assert kinds == {"GET /v4/people": N, "POST /v4/people": 2 * N, "POST /api/profile_update": N,
                     "GET /api/profiles": 2}
    ea = meters["everyaction"]
    assert ea.peak == WORKERS
    assert ea.used / (WORKERS * (ea.last - (ea.first or 0.0))) >= 0.9
    assert transactions[0] <= N // 2
