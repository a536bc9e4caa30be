"""Issue 7, items 1-6 and 11: regression tests written from the seed's and the issue's sentences.

Each test names the item it pins down. The daemon runs both flows against the two simulators under a simulated
clock (see ``harness.py``)."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from crmsync.connectors.everyaction import OptInStatus
from crmsync.state import queries as q
from tests.integrations.everyaction_mobilecommons.harness import NAME, make_config, make_world, rows_by_crm, welcomes

HOME = {"address_line1": "1 Main St", "city": "Chicago", "state": "IL", "zip": "60601"}


def _by_mc(report: dict) -> dict:  # type: ignore[type-arg]
    return {r["messaging_id"]: r for r in report["rows"] if r["messaging_id"]}


# -- 1. "The following fields are required: Phone number, Email, Opt-in status" -------------------------------

async def test_issue7_1_a_record_without_email_is_not_synced_but_its_opt_out_travels(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    new_in = world.ea.add_person("Ann", "Noemail", phone="3125550401", phone_opt_in=OptInStatus.OPT_IN, **HOME)
    # someone already subscribed in Mobile Commons, who opts out in EveryAction and has no email there
    world.mc.add_profile("3125550402", first_name="Bob", country="US")
    world.mc.opt_in("3125550402", world.path_id)
    out = world.ea.add_person("Bob", "Noemail", phone="3125550402", phone_opt_in=OptInStatus.OPT_OUT, **HOME)
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id))
        await sup.activate(NAME)
        report = await world.run("ea_to_mc")
        nursery.cancel_scope.cancel()
    rows = rows_by_crm(report)
    assert rows[str(new_in)]["outcome"] == "skipped" and rows[str(new_in)]["reason"] == "no_email"
    assert world.mc.profile("3125550401") is None and welcomes(world, "3125550401") == 0
    # the opt-out is always safe: it still travels
    bob = world.mc.profile("3125550402")
    assert bob is not None and all(s.status == "Opted-Out" for s in bob.subscriptions)
    assert rows[str(out)]["outcome"] == "updated" and "no_email" in (rows[str(out)]["message"] or "")


# -- 2. Conservative gates data on the EveryAction opt-in; consent is newer-wins ------------------------------

async def test_issue7_2_an_opt_out_in_mobile_commons_does_not_withhold_data_or_the_constituent_id(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    world.mc.add_profile("3125550411", country="US")
    world.mc.opt_in("3125550411", world.path_id)
    world.mc.opt_out("3125550411")  # texted STOP
    await trio.sleep(60)
    ann = world.ea.add_person("Ann", "Lee", email="ann@example.org", phone="3125550411",
                              phone_opt_in=OptInStatus.OPT_IN, **HOME)
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id))
        await sup.activate(NAME)
        report = await world.run("ea_to_mc")
        nursery.cancel_scope.cancel()
    row = rows_by_crm(report)[str(ann)]
    profile = world.mc.profile("3125550411")
    assert profile is not None
    assert profile.email == "ann@example.org" and profile.first_name == "Ann" and profile.city == "Chicago"
    assert profile.custom("Constituent ID") == str(ann)
    assert row["outcome"] == "updated"
    # consent: the opt-in was first seen tonight, so it is not certainly newer: the opt-out stays, and says why
    assert profile.status != "Active Subscriber" and welcomes(world, "3125550411") == 1
    assert "Mobile Commons opt-out wins" in (row["message"] or "")
    assert await world.db.tx(q.link_for_crm, NAME, str(ann)) == profile.id


# -- 3. mc_to_ea: eligibility is judged on the matched EveryAction record --------------------------------------

async def test_issue7_3_keyword_joiners_are_judged_on_the_everyaction_record(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    eve = world.ea.add_person("Eve", "Old", email="eve@example.org", phone="3125550421", **HOME)
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id, day_hours=["06:00", "07:00"]))
        await sup.activate(NAME)
        await trio.sleep(60)
        world.mc.opt_in("3125550421", world.path_id)  # Eve texts the keyword: a profile with no address
        world.mc.opt_in("3125550422", world.path_id)  # a newcomer texts the keyword...
        newcomer = world.mc.profile("3125550422")
        assert newcomer is not None
        newcomer.email, newcomer.first_name = "nia@example.org", "Nia"  # ... and answers follow-up questions
        report = await world.run("mc_to_ea")
        nursery.cancel_scope.cancel()
    eve_profile, nia = world.mc.profile("3125550421"), world.mc.profile("3125550422")
    assert eve_profile is not None and nia is not None
    rows = _by_mc(report)
    assert rows[eve_profile.id]["outcome"] == "updated" and rows[eve_profile.id]["crm_id"] == str(eve)
    assert world.ea.phone_opt_in("3125550421") == OptInStatus.OPT_IN
    assert world.ea.person(eve).identifier("MobileCommonsID") == eve_profile.id
    assert eve_profile.custom("Constituent ID") == str(eve)
    assert rows[nia.id]["outcome"] == "created"
    new_van = int(rows[nia.id]["crm_id"])
    assert world.ea.phone_opt_in("3125550422") == OptInStatus.OPT_IN
    assert world.ea.person(new_van).identifier("MobileCommonsID") == nia.id
    assert world.ea.person(new_van).preferred_email == "nia@example.org"
    assert await world.db.tx(q.link_for_messaging, NAME, nia.id) == str(new_van)


# -- 4. Conservative mc_to_ea writes the identifier with an opt-out ------------------------------------------

async def test_issue7_4_conservative_opt_out_on_a_linked_record_also_adds_the_mobile_commons_id(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    van = world.ea.add_person("Bob", "Ray", email="bob@example.org", phone="3125550431",
                              phone_opt_in=OptInStatus.OPT_IN, **HOME)
    # linked by an earlier (native) sync: the profile carries the Constituent ID, EveryAction lacks the MC id
    world.mc.add_profile("3125550431", email="bob@example.org", first_name="Bob", last_name="Ray",
                         custom_columns={"Constituent ID": str(van)})
    world.mc.opt_in("3125550431", world.path_id)
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id, day_hours=["06:00", "07:00"]))
        await sup.activate(NAME)
        await trio.sleep(60)
        world.mc.opt_out("3125550431")
        report = await world.run("mc_to_ea")
        nursery.cancel_scope.cancel()
    profile = world.mc.profile("3125550431")
    assert profile is not None
    assert world.ea.phone_opt_in("3125550431") == OptInStatus.OPT_OUT
    assert world.ea.person(van).identifier("MobileCommonsID") == profile.id
    assert _by_mc(report)[profile.id]["crm_id"] == str(van)


# -- 5. "Mobile Commons pushes records to EveryAction to add the identifier to the profile" -------------------

async def test_issue7_5_ea_to_mc_writes_the_mobile_commons_id_to_everyaction_in_the_same_run(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    ann = world.ea.add_person("Ann", "Lee", email="ann@example.org", phone="3125550441",
                              phone_opt_in=OptInStatus.OPT_IN, **HOME)
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id, day_hours=["06:00", "07:00"]))
        await sup.activate(NAME)
        await world.run("ea_to_mc")
        nursery.cancel_scope.cancel()
    profile = world.mc.profile("3125550441")
    assert profile is not None
    assert world.ea.person(ann).identifier("MobileCommonsID") == profile.id


# -- 6. Report reasons say what happened ---------------------------------------------------------------------

async def test_issue7_6_reasons_no_email_for_keyword_joiners_and_country_for_foreign_numbers(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    canadian = world.ea.add_person("Cam", "North", email="cam@example.org", phone="4165550451",
                                   phone_opt_in=OptInStatus.OPT_IN, **HOME)
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id, day_hours=["06:00", "07:00"]))
        await sup.activate(NAME)
        nightly = await world.run("ea_to_mc")
        world.mc.opt_in("3125550452", world.path_id)  # keyword joiner: no email, no address
        world.mc.opt_in("4165550453", world.path_id)  # a Toronto number texts the keyword
        tick = await world.run("mc_to_ea")
        nursery.cancel_scope.cancel()
    assert rows_by_crm(nightly)[str(canadian)]["reason"] == "country_not_us"
    joiner, toronto = world.mc.profile("3125550452"), world.mc.profile("4165550453")
    assert joiner is not None and toronto is not None
    rows = _by_mc(tick)
    assert rows[joiner.id]["reason"] == "no_email"
    assert rows[toronto.id]["reason"] == "country_not_us"


async def test_issue7_6_a_consent_skip_says_which_side_won_and_why(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    van = world.ea.add_person("Dee", "Out", email="dee@example.org", phone="3125550461", **HOME)
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id, day_hours=["06:00", "07:00"]))
        await sup.activate(NAME)
        world.mc.opt_in("3125550461", world.path_id)  # she texts the keyword...
        await trio.sleep(60)
        world.ea.set_phone_opt_in(van, "3125550461", OptInStatus.OPT_OUT)  # ... and later opts out in EA
        tick = await world.run("mc_to_ea")
        nursery.cancel_scope.cancel()
    profile = world.mc.profile("3125550461")
    assert profile is not None
    row = _by_mc(tick)[profile.id]
    assert row["crm_id"] == str(van)
    assert row["outcome"] == "skipped" and row["reason"] == "opted_out_in_everyaction"
    assert "EveryAction opt-out wins" in (row["message"] or "")
    assert world.ea.phone_opt_in("3125550461") == OptInStatus.OPT_OUT


# -- 11. The export must not trust an echo the real API does not send ----------------------------------------

async def test_issue7_11_a_missing_export_column_fails_the_run_naming_the_field_and_its_setting(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    world.ea.add_person("Ann", "Lee", email="ann@example.org", phone="3125550471",
                        phone_opt_in=OptInStatus.OPT_IN, **HOME)
    config = make_config(tmp_path, world.path_id, day_hours=["06:00", "07:00"],
                         everyaction={"application_name": "crmsyncTest",
                                      "api_key_file": str(tmp_path / "ea.key"), "host": "http://ea.test/v4",
                                      "export_columns": {"email": "PreferredEmailAddress"}})
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, config)
        await sup.activate(NAME)
        report = await world.run("ea_to_mc")
        nursery.cancel_scope.cancel()
    assert report["run"]["status"] == "failed"
    error = report["run"]["error"] or ""
    assert "PreferredEmailAddress" in error and "everyaction.export_columns.email" in error
    assert world.mc.profiles() == []
    assert await world.db.tx(q.get_cursor, NAME, "ea_to_mc") is None


# -- found by the stateful test --------------------------------------------------------------------------------

async def test_opt_in_status_is_observed_per_phone_so_a_home_phone_record_does_not_forget_its_opt_in_time(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """VAN stores opt-in per phone. A record whose only phone is a Home phone has no listed mobile for ea_to_mc,
    but mc_to_ea matches it by that number: what ea_to_mc saw ("no mobile, status unknown") must not overwrite
    what mc_to_ea wrote, or a later STOP looks older than the opt-in it follows."""
    world = await make_world(tmp_path)
    world.ea.add_person("Hal", "Home", email="hal@example.org", phone="3125550481", phone_type="H", **HOME)
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id, day_hours=["06:00", "07:00"],
                                                     liberal_sync=True))
        await sup.activate(NAME)
        world.mc.opt_in("3125550481", world.path_id)
        await world.run("mc_to_ea")  # EveryAction opt-in written
        assert world.ea.phone_opt_in("3125550481") == OptInStatus.OPT_IN
        world.mc.opt_out("3125550481")  # then STOP
        await world.run("ea_to_mc")  # no listed mobile: skipped
        await world.run("mc_to_ea")
        nursery.cancel_scope.cancel()
    assert world.ea.phone_opt_in("3125550481") == OptInStatus.OPT_OUT


async def test_opt_outs_of_a_non_us_mobile_number_still_travel_both_ways(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Found by the stateful test: a Toronto cell's data never syncs (country_not_us), but an opt-out is always
    safe and must reach the other system (it crashed mc_to_ea, and ea_to_mc dropped it)."""
    world = await make_world(tmp_path)
    cam = world.ea.add_person("Cam", "North", email="cam@example.org", phone="4165550491", **HOME,
                              country_code="CA")
    world.ea.add_person("Dee", "North", email="dee@example.org", phone="4165550492",
                        phone_opt_in=OptInStatus.OPT_OUT, **HOME, country_code="CA")
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id, day_hours=["06:00", "07:00"]))
        await sup.activate(NAME)
        world.mc.opt_in("4165550491", world.path_id)
        world.mc.opt_in("4165550492", world.path_id)
        await world.run("mc_to_ea")
        world.mc.opt_out("4165550491")  # Cam texts STOP
        tick = await world.run("mc_to_ea")
        await trio.sleep(60)
        world.ea.set_phone_opt_in(cam, "4165550491", OptInStatus.OPT_OUT)  # touch: Dee is still opted out in EA
        world.ea.set_phone_opt_in(world.ea.van_ids_with_phone("4165550492")[0], "4165550492", OptInStatus.OPT_OUT)
        nightly = await world.run("ea_to_mc")
        nursery.cancel_scope.cancel()
    assert tick["run"]["status"] == "success", tick
    assert world.ea.phone_opt_in("4165550491") == OptInStatus.OPT_OUT
    dee = world.mc.profile("4165550492")
    assert nightly["run"]["status"] == "success", nightly
    assert dee is not None and dee.status != "Active Subscriber"
