"""A Mobile Commons opt-in that could not sync yet waits, and reaches EveryAction once the record can sync.

The seed: "Any new opt-ins or opt-outs from Mobile Commons are synced to EveryAction every five minutes during
the day" and "Phone number, Email, or Opt-in status fields ... must by default exist in both databases in order
to sync data". An opt-in matched to an EveryAction record without an email waits; once the record has one, the
opt-in must be synced, although the Mobile Commons profile itself did not change again.
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from crmsync.connectors.everyaction import OptInStatus
from crmsync.daemon.explain import explain
from tests.integrations.everyaction_mobilecommons.harness import NAME, make_config, make_world, welcomes

PHONE = "3125550701"


async def test_an_opt_in_waiting_for_the_records_email_reaches_everyaction_once_it_has_one(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    # a US number listed as a home phone (not a mobile type), and no email: the record cannot sync yet
    van_id = world.ea.add_person("Ann", "Lee", phone=PHONE, phone_type="H", address_line1="1 Main St",
                                 city="Chicago", state="IL", zip="60601", country_code="US")
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id, field_mappings={}))
        await sup.activate(NAME)
        world.mc.opt_in(PHONE, world.path_id)  # a keyword opt-in (Conservative sync: the default)
        profile = world.mc.profile(PHONE)
        assert profile is not None
        await world.run("ea_to_mc")
        waiting = await world.run("mc_to_ea")
        [row] = [r for r in waiting["rows"] if r["messaging_id"] == profile.id]
        assert (row["outcome"], row["reason"]) == ("skipped", "no_email")
        assert "waits" in row["message"]
        assert world.ea.phone_opt_in(PHONE) == OptInStatus.UNKNOWN  # the opt-in waits
        # explain says so, and agrees with the runs: still skipped, nothing written
        section = next(s for s in (await explain(sup, NAME, PHONE))["sections"]
                       if s["flow"] == "mc_to_ea")
        waiting_rule = next(r for r in section["rules"] if r["verdict"] == "waiting")
        assert waiting_rule["looked_at"]["reason"] == "no_email"
        assert (section["verdict"]["outcome"], section["verdict"]["reason"]) == ("skipped", "no_email")
        # while the record does not change, the next five-minute runs do not look at it again
        await trio.sleep(300)
        assert not [r for r in (await world.run("mc_to_ea"))["rows"] if r["messaging_id"] == profile.id]
        # much later, someone adds an email to the EveryAction record; the profile does not change again
        await trio.sleep(6 * 3600)
        world.ea.edit_person(van_id, email="ann@example.org")
        await world.run("ea_to_mc")
        await world.run("mc_to_ea")
        await world.run("ea_to_mc")
        nursery.cancel_scope.cancel()
    assert world.ea.phone_opt_in(PHONE) == OptInStatus.OPT_IN
    assert world.ea.person(van_id).identifier("MobileCommonsID") == profile.id
    assert welcomes(world, PHONE) == 1  # the keyword's own welcome only: no second one


async def test_an_opt_in_without_email_or_record_reaches_a_record_added_later_and_a_stop_ends_the_wait(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    other = "3125550702"
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id, field_mappings={}))
        await sup.activate(NAME)
        world.mc.opt_in(PHONE, world.path_id)  # no email, no EveryAction record: nothing to create or match
        world.mc.opt_in(other, world.path_id)
        waiting = await world.run("mc_to_ea")
        assert sorted(r["reason"] for r in waiting["rows"]) == ["no_email", "no_email"]
        await trio.sleep(3600)
        world.mc.opt_out(other)  # STOP: that profile is no longer an opt-in; nothing may reach EveryAction
        # a record with the number and an email is added in EveryAction (a home phone: ea_to_mc skips it)
        van_id = world.ea.add_person("Ann", "Lee", email="ann@example.org", phone=PHONE, phone_type="H",
                                     address_line1="1 Main St", city="Chicago", state="IL", zip="60601",
                                     country_code="US")
        world.ea.add_person("Bo", "Ray", email="bo@example.org", phone=other, phone_type="H",
                                   address_line1="2 Main St", city="Chicago", state="IL", zip="60601",
                                   country_code="US")
        await world.run("ea_to_mc")
        await world.run("mc_to_ea")
        await trio.sleep(300)
        later = await world.run("mc_to_ea")
        nursery.cancel_scope.cancel()
    assert world.ea.phone_opt_in(PHONE) == OptInStatus.OPT_IN
    joined = world.mc.profile(PHONE)
    assert joined is not None and world.ea.person(van_id).identifier("MobileCommonsID") == joined.id
    assert world.ea.phone_opt_in(other) != OptInStatus.OPT_IN
    assert later["rows"] == []  # nothing waits any more: no further look at either
    assert await world.db.tx(lambda c: c.execute("SELECT COUNT(*) FROM ea_mc_waiting_opt_ins").fetchone()[0]) == 0
