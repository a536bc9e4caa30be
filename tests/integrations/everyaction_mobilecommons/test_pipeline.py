"""Issue 8, item 3: both flows run as a pipeline with a bounded worker pool. Call counts are deterministic, so
they are asserted; time never is."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import trio
import trio.testing

from crmsync.connectors.everyaction import OptInStatus
from crmsync.state import queries as q
from tests.integrations.everyaction_mobilecommons.harness import NAME, make_config, make_world, welcomes

N = 40


def _kind(method: str, path: str) -> str:
    if path.startswith("/blob/") or "changedEntityExportJobs" in path:
        return "export"
    return f"{method} {path.rsplit('/', 1)[0] if path.startswith('/v4/people/') else path}"


async def test_ea_to_mc_reads_each_person_once_from_each_side_with_workers_in_flight(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    world.ea.latency = world.mc.latency = 0.05
    phones = [f"31255507{i:02d}" for i in range(N)]
    for i, phone in enumerate(phones):
        world.ea.add_person(f"P{i}", "Pipe", email=f"p{i}@example.org", phone=phone,
                            phone_opt_in=OptInStatus.OPT_IN, address_line1=f"{i + 1} Main St", city="Chicago",
                            zip="60601")
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id, workers=8,
                                                     day_hours=["06:00", "07:00"]))
        await sup.activate(NAME)
        assert world.calls is not None
        world.calls.clear()
        report = await world.run("ea_to_mc")
        nursery.cancel_scope.cancel()
    assert report["run"]["status"] == "success" and report["counts"]["created"] == N
    calls = Counter(_kind(m, p) for m, p in world.calls or [])
    # per contact: the person (EveryAction), one profile_update (data, Constituent ID and the subscription
    # together), the Mobile Commons id back to EveryAction; profiles are read many phones per call
    # (profiles?phone_number=a,b,...): nothing is read twice, and under 3.5 calls per contact
    assert calls["GET /v4/people"] == N and calls["GET /api/profile"] == 0
    assert 0 < calls["GET /api/profiles"] < N // 2
    assert calls["POST /api/profile_update"] == N and calls["POST /v4/people"] == N
    assert sum(n for k, n in calls.items() if k != "export") < 3.5 * N
    assert all(welcomes(world, phone) == 1 for phone in phones)
    assert 1 < world.mc.peak_in_flight <= 8  # the pool is used, and bounded by the setting
    assert world.mc.concurrency_refusals == 0
    # report rows come in export order (the acknowledge stage releases records in order)
    assert [r["crm_id"] for r in report["rows"]] == sorted(r["crm_id"] for r in report["rows"])
    assert await world.db.tx(q.count_links, NAME) == N


async def test_mc_to_ea_runs_through_the_same_pipeline_and_a_rerun_writes_nothing(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    world.ea.latency = world.mc.latency = 0.05
    for i in range(N):
        world.mc.opt_in(f"31255508{i:02d}", world.path_id)
        profile = world.mc.profile(f"31255508{i:02d}")
        assert profile is not None
        profile.email, profile.first_name = f"m{i}@example.org", f"M{i}"
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id, workers=8,
                                                     day_hours=["06:00", "07:00"]))
        await sup.activate(NAME)
        first = await world.run("mc_to_ea")
        assert world.calls is not None
        world.calls.clear()
        again = await world.run("mc_to_ea")
        nursery.cancel_scope.cancel()
    assert first["counts"]["created"] == N and len(world.ea.people()) == N
    assert again["counts"]["fetched"] == N and world.write_calls() == []
    assert 1 < world.mc.peak_in_flight <= 8
