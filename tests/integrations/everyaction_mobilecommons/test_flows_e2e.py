"""End-to-end: the daemon runs both flows against the two simulators under a simulated clock."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import trio
import trio.testing

from crmsync.connectors.everyaction import OptInStatus
from crmsync.state import queries as q
from tests.integrations.everyaction_mobilecommons.harness import NAME, make_config, make_world, rows_by_crm, welcomes

NY = ZoneInfo("America/New_York")


async def test_opt_in_subscribes_once_and_writes_the_constituent_id(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    ann = world.ea.add_person("Ann", "Lee", email="ann@example.org", phone="3125550101",
                              phone_opt_in=OptInStatus.OPT_IN, address_line1="1 Main St", city="Chicago",
                              state="IL", zip="60601")
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id))
        await sup.activate(NAME)
        report = await world.run("ea_to_mc")
        assert report["run"]["status"] == "success", report
        row = rows_by_crm(report)[str(ann)]
        assert row["outcome"] == "created"
        profile = world.mc.profile("3125550101")
        assert profile is not None and profile.email == "ann@example.org"
        assert profile.custom("Constituent ID") == str(ann)
        assert row["messaging_id"] == profile.id
        assert welcomes(world, "3125550101") == 1
        # re-runs (and the echo through mc_to_ea) send nothing more
        again = await world.run("ea_to_mc")
        assert rows_by_crm(again) == {} or rows_by_crm(again)[str(ann)]["outcome"] == "unchanged"
        echo = await world.run("mc_to_ea")
        assert echo["counts"]["rejected"] == 0, echo
        assert welcomes(world, "3125550101") == 1
        nursery.cancel_scope.cancel()


async def test_a_week_of_schedules_first_nightly_is_the_next_morning_and_no_day_flow_at_night(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    config = make_config(tmp_path, world.path_id, day_every="30m")
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, config)
        await sup.activate(NAME)  # Wednesday 13:00 local
        await trio.sleep(7 * 24 * 3600)
        nursery.cancel_scope.cancel()
    runs = await world.runs()
    nightly = [datetime.fromisoformat(r["started_at"]).astimezone(NY) for r in runs if r["flow"] == "ea_to_mc"]
    day = [datetime.fromisoformat(r["started_at"]).astimezone(NY) for r in runs if r["flow"] == "mc_to_ea"]
    # the first data sync runs the following morning, then once a night at 02:00 local (across the DST change)
    assert [d.date().isoformat() for d in nightly] == [
        "2026-10-29", "2026-10-30", "2026-10-31", "2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"]
    assert {(d.hour, d.minute) for d in nightly} == {(2, 0)}
    assert day and all(8 <= d.hour < 21 for d in day)  # never at night
    assert all(r["status"] == "success" for r in runs)
    # the first mc_to_ea tick runs right after activation, the same afternoon
    assert day[0].date().isoformat() == "2026-10-28"


async def test_mc_opt_out_reaches_everyaction_within_a_tick_and_the_nightly_never_reverts_it(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    bob = world.ea.add_person("Bob", "Ray", email="bob@example.org", phone="3125550102",
                              phone_opt_in=OptInStatus.OPT_IN, zip="60601", city="Chicago",
                              address_line1="2 Main St")
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id))
        await sup.activate(NAME)
        await trio.sleep(17 * 3600)  # Thursday 06:00: the nightly ran at 02:00
        assert welcomes(world, "3125550102") == 1
        await trio.sleep(4 * 3600)  # 10:00, during the day
        world.mc.opt_out("3125550102")  # Bob texts STOP
        await trio.sleep(5 * 60)  # one tick
        assert world.ea.phone_opt_in("3125550102") == OptInStatus.OPT_OUT
        # somebody edits Bob in EveryAction, so he is in the next nightly export: his opt-out stays
        world.ea.edit_person(bob, first_name="Bobby")
        await trio.sleep(24 * 3600)
        nursery.cancel_scope.cancel()
    profile = world.mc.profile("3125550102")
    assert profile is not None and profile.status != "Active Subscriber"
    assert all(s.status == "Opted-Out" for s in profile.subscriptions)
    assert world.ea.phone_opt_in("3125550102") == OptInStatus.OPT_OUT
    assert profile.first_name == "Bob"  # Conservative: Bob is opted out, his data no longer moves
    assert welcomes(world, "3125550102") == 1


async def test_skips_show_in_the_report_with_their_reasons(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    no_name = world.ea.add_person(None, "Nameless", email="n@example.org", phone="3125550103",
                                  phone_opt_in=OptInStatus.OPT_IN, zip="60601", city="Chicago",
                                  address_line1="3 Main St")
    canadian = world.ea.add_person("Cam", "North", email="c@example.org", phone="3125550104",
                                   phone_opt_in=OptInStatus.OPT_IN, zip="60601", city="Toronto",
                                   address_line1="4 King St", country_code="CA")
    landline = world.ea.add_person("Lana", "Line", email="l@example.org", phone="3125550105", phone_type="H",
                                   phone_opt_in=OptInStatus.OPT_IN, zip="60601", city="Chicago",
                                   address_line1="5 Main St")
    ok = world.ea.add_person("Olga", "Kay", email="o@example.org", phone="3125550106",
                             phone_opt_in=OptInStatus.OPT_IN, zip="60601", city="Chicago", address_line1="6 Main St")
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id))
        await sup.activate(NAME)
        report = await world.run("ea_to_mc")
        nursery.cancel_scope.cancel()
    rows = rows_by_crm(report)
    assert rows[str(no_name)]["reason"] == "required_field_empty:first_name"
    assert rows[str(canadian)]["reason"] == "country_not_us"
    assert rows[str(landline)]["reason"] == "no_mobile_number"
    assert rows[str(ok)]["outcome"] == "created"
    assert report["counts"]["skipped"] == {"country_not_us": 1, "no_mobile_number": 1,
                                           "required_field_empty:first_name": 1}
    assert report["counts"]["fetched"] == 4 and report["counts"]["created"] == 1
    assert [p.phone_number for p in world.mc.profiles()] == ["13125550106"]  # the skipped were not written


async def test_liberal_and_conservative_differ_as_the_seed_says(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    results = {}
    for liberal in (False, True):
        path = tmp_path / ("lib" if liberal else "con")
        path.mkdir()
        world = await make_world(path)
        unknown = world.ea.add_person("Uma", "Known", email="u@example.org", phone="3125550107",
                                      zip="60601", city="Chicago", address_line1="7 Main St")
        opted_in = world.ea.add_person("Ina", "Yes", email="i@example.org", phone="3125550108",
                                       phone_opt_in=OptInStatus.OPT_IN, zip="60601", city="Chicago",
                                       address_line1="8 Main St")
        # a Mobile Commons profile with no subscription, matched to Uma by email, whose name changes in MC
        async with trio.open_nursery() as nursery:
            sup = await world.start(nursery, make_config(path, world.path_id, liberal_sync=liberal))
            await sup.activate(NAME)
            report = await world.run("ea_to_mc")
            nursery.cancel_scope.cancel()
        results[liberal] = (report, world, unknown, opted_in)
    con, con_world, con_unknown, con_in = results[False]
    lib, lib_world, lib_unknown, lib_in = results[True]
    # the opted-in record syncs in both modes, with one welcome
    for world, report, pid in ((con_world, con, con_in), (lib_world, lib, lib_in)):
        assert rows_by_crm(report)[str(pid)]["outcome"] == "created"
        assert welcomes(world, "3125550108") == 1
    # Conservative: nothing for the record whose opt-in is not true
    assert rows_by_crm(con)[str(con_unknown)]["reason"] == "not_opted_in"
    assert con_world.mc.profile("3125550107") is None
    # Liberal: its data moves, but never its consent: no subscription, no welcome
    assert rows_by_crm(lib)[str(lib_unknown)]["outcome"] == "created"
    profile = lib_world.mc.profile("3125550107")
    assert profile is not None and profile.email == "u@example.org" and profile.city == "Chicago"
    assert profile.subscriptions == [] and welcomes(lib_world, "3125550107") == 0


def _seed_opted_in(world, n: int) -> dict[int, str]:  # type: ignore[no-untyped-def]
    people = {}
    for i in range(n):
        phone = f"31255502{i:02d}"
        van = world.ea.add_person(f"P{i}", "Test", email=f"p{i}@example.org", phone=phone,
                                  phone_opt_in=OptInStatus.OPT_IN, zip="60601", city="Chicago",
                                  address_line1=f"{i + 10} Main St")
        people[van] = phone
    return people


async def test_429s_and_503s_during_a_run_still_end_with_every_record_correct(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    people = _seed_opted_in(world, 6)
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id))
        await sup.activate(NAME)
        world.ea.faults.fail(429, times=3, retry_after=1)
        world.mc.faults.fail(503, times=3)
        world.mc.faults.fail(429, times=2, path_contains="profile_update")
        world.ea.faults.fail(503, times=2, path_contains="/people/")
        report = await world.run("ea_to_mc")
        nursery.cancel_scope.cancel()
    assert world.ea.faults.injected == 5 and world.mc.faults.injected == 5
    assert report["run"]["status"] == "success"
    assert report["counts"]["created"] == 6
    for van, phone in people.items():
        profile = world.mc.profile(phone)
        assert profile is not None and profile.custom("Constituent ID") == str(van)
        assert profile.status == "Active Subscriber" and welcomes(world, phone) == 1


async def test_retries_exhausted_fail_the_run_and_keep_the_cursor(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    _seed_opted_in(world, 2)
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id))
        await sup.activate(NAME)
        world.mc.faults.fail(503, times=50)
        report = await world.run("ea_to_mc")
        assert report["run"]["status"] == "failed"
        assert await world.db.tx(q.get_cursor, NAME, "ea_to_mc") is None
        world.mc.faults.clear()
        report = await world.run("ea_to_mc")
        nursery.cancel_scope.cancel()
    assert report["run"]["status"] == "success" and report["counts"]["created"] == 2
    assert await world.db.tx(q.get_cursor, NAME, "ea_to_mc") is not None


async def test_a_run_cancelled_halfway_then_rerun_duplicates_nothing(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    people = _seed_opted_in(world, 8)
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id, workers=1))  # one at a time
        await sup.activate(NAME)
        await trio.sleep(1)
        world.mc.faults.slow(10, times=100, path_contains="profile_update")
        started = await sup.run_flow(NAME, "ea_to_mc")
        await trio.sleep(45)  # a few records written, the next one in flight
        done_before = len(world.mc.welcome_messages)
        assert 0 < done_before < 8
        await sup.cancel(NAME)
        run = await world.db.tx(q.get_run, started["run_id"])
        assert run is not None and run["status"] == "cancelled"
        assert await world.db.tx(q.get_cursor, NAME, "ea_to_mc") is None
        world.mc.faults.clear()
        report = await world.run("ea_to_mc")
        # and the echo through mc_to_ea creates no EveryAction duplicates
        echo = await world.run("mc_to_ea")
        nursery.cancel_scope.cancel()
    assert report["run"]["status"] == "success"
    assert len(world.mc.profiles()) == 8
    assert all(welcomes(world, phone) == 1 for phone in people.values())
    assert len(world.ea.people()) == 8
    assert echo["counts"]["created"] == 0 and echo["counts"]["rejected"] == 0


async def test_deactivate_stops_every_flow_keeps_state_and_activate_resumes(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    _seed_opted_in(world, 2)
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id))
        await sup.activate(NAME)
        await trio.sleep(24 * 3600)  # Thursday 13:00: one nightly and many ticks ran
        links = await world.db.tx(q.count_links, NAME)
        assert links == 2
        await sup.deactivate(NAME)
        count = len(await world.runs())
        late = world.ea.add_person("Late", "Comer", email="late@example.org", phone="3125550199",
                                   phone_opt_in=OptInStatus.OPT_IN, zip="60601", city="Chicago",
                                   address_line1="99 Main St")
        await trio.sleep(4 * 24 * 3600)  # four days inactive: no run of any flow
        assert len(await world.runs()) == count
        assert await world.db.tx(q.count_links, NAME) == 2  # state kept
        status = await sup.status(NAME)
        assert status["active"] is False
        await sup.activate(NAME)
        await trio.sleep(24 * 3600)
        nursery.cancel_scope.cancel()
    runs = await world.runs("ea_to_mc")
    assert runs[-1]["status"] == "success"
    # the change made four days ago (outside the 48 h window) was picked up: the window widened to the cursor
    assert world.mc.profile("3125550199") is not None
    assert (await world.db.tx(q.link_for_crm, NAME, str(late))) is not None


async def test_unchanged_records_cost_no_write_call(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    people = _seed_opted_in(world, 3)
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id))
        await sup.activate(NAME)
        await world.run("ea_to_mc")
        await world.run("mc_to_ea")  # the echo of our own writes: links written, nothing else
        # somebody touches everyone in EveryAction without changing anything we sync
        for van in people:
            world.ea.edit_person(van, email=f"second-{van}@example.org")
            world.ea.edit_person(van)  # no-op
        await world.run("ea_to_mc")  # the email change moves once
        assert world.calls is not None
        world.calls.clear()
        second = await world.run("ea_to_mc")
        tick = await world.run("mc_to_ea")
        nursery.cancel_scope.cancel()
    assert second["counts"]["fetched"] == 3 and second["counts"]["unchanged"] == 3
    assert tick["counts"]["unchanged"] == tick["counts"]["fetched"]
    assert world.write_calls() == []


async def test_mc_opt_ins_become_everyaction_records_linked_both_ways(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    existing = world.ea.add_person("Eve", "Old", email="eve@example.org", zip="60601", city="Chicago",
                                   address_line1="1 Elm St")
    async with trio.open_nursery() as nursery:
        # day hours outside this afternoon: only the runs this test asks for
        sup = await world.start(nursery, make_config(tmp_path, world.path_id, day_hours=["06:00", "07:00"]))
        await sup.activate(NAME)
        await trio.sleep(3600)
        world.mc.add_profile("3125550301", email="new@example.org", first_name="Nia", last_name="New",
                             country="US")
        world.mc.opt_in("3125550301", world.path_id)
        world.mc.add_profile("3125550302", email="eve@example.org", first_name="Eve", last_name="Old",
                             country="US")
        world.mc.opt_in("3125550302", world.path_id)
        world.mc.add_profile("3125550303", first_name="Ned", last_name="Nomail", country="US")
        world.mc.opt_in("3125550303", world.path_id)
        report = await world.run("mc_to_ea")
        again = await world.run("mc_to_ea")
        nursery.cancel_scope.cancel()
    by_mc = {r["messaging_id"]: r for r in report["rows"]}
    nia, eve, ned = (world.mc.profile(p) for p in ("3125550301", "3125550302", "3125550303"))
    assert nia and eve and ned
    assert by_mc[nia.id]["outcome"] == "created"
    assert by_mc[eve.id]["outcome"] == "updated" and by_mc[eve.id]["crm_id"] == str(existing)
    assert by_mc[ned.id]["reason"] == "no_email"
    new_van = int(by_mc[nia.id]["crm_id"])
    assert world.ea.phone_opt_in("3125550301") == OptInStatus.OPT_IN
    assert world.ea.phone_opt_in("3125550302") == OptInStatus.OPT_IN
    assert world.ea.person(new_van).identifier("MobileCommonsID") == nia.id
    assert world.ea.person(existing).identifier("MobileCommonsID") == eve.id
    assert nia.custom("Constituent ID") == str(new_van) and eve.custom("Constituent ID") == str(existing)
    assert len(world.ea.people()) == 2  # no duplicate
    # the record created from a keyword opt-in has no EveryAction country yet: later runs judge it by that
    # country (issue 7, item 3), so it no longer syncs data; its opt-outs still travel
    assert Counter((r["outcome"], r["reason"]) for r in again["rows"]) == Counter(
        {("unchanged", None): 1, ("skipped", "no_email"): 1, ("skipped", "country_not_us"): 1})


async def test_an_api_validation_error_rejects_one_record_and_the_run_goes_on(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    _seed_opted_in(world, 2)
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, "999999"))  # no such opt-in path
        await sup.activate(NAME)
        report = await world.run("ea_to_mc")
        nursery.cancel_scope.cancel()
    assert report["run"]["status"] == "partial"
    assert report["counts"]["rejected"] == 2
    assert all(r["message"] == "error 19: Invalid opt-in path" for r in report["rows"])
    assert await world.db.tx(q.get_cursor, NAME, "ea_to_mc") is not None  # every record was acknowledged


async def test_an_evening_nightly_time_still_waits_for_the_following_day(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id, nightly_at="23:00",
                                                     day_hours=["06:00", "07:00"]))
        await sup.activate(NAME)  # Wednesday 13:00 local; 23:00 the same evening is too early
        await trio.sleep(2 * 24 * 3600)
        nursery.cancel_scope.cancel()
    nightly = [datetime.fromisoformat(r["started_at"]).astimezone(NY) for r in await world.runs("ea_to_mc")]
    assert [d.isoformat() for d in nightly] == ["2026-10-29T23:00:00-04:00"]
