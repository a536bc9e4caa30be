"""Issue 11, item 3: every consent change crmsync makes or observes is kept per person, oldest first, with the
system, both ids, old and new status, the source, when at the source and when seen, and the run."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from crmsync.connectors.everyaction import OptInStatus
from crmsync.daemon.consent_history import consent_history
from tests.integrations.everyaction_mobilecommons.harness import NAME, make_config, make_world


async def test_ea_opt_in_then_a_stop_keyword_then_an_everyaction_edit_are_all_in_the_history(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    ann = world.ea.add_person("Ann", "Lee", email="ann@example.org", phone="3125550101",
                              phone_opt_in=OptInStatus.OPT_IN, city="Chicago", state="IL", zip="60601")
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id))
        await sup.activate(NAME)
        first = await world.run("ea_to_mc")
        profile_id = world.mc.profile("3125550101").id
        await trio.sleep(600)
        world.mc.opt_out("3125550101")  # the person texts STOP
        stop = await world.run("mc_to_ea")
        assert world.ea.person(ann).phones[0].effective_opt_in == OptInStatus.OPT_OUT
        history = await consent_history(sup, NAME, str(ann))
        by_profile = await consent_history(sup, NAME, profile_id)
        by_phone = await consent_history(sup, NAME, "(312) 555-0101")
        by_email = await consent_history(sup, NAME, "ann@example.org")
        nursery.cancel_scope.cancel()
    entries = history["entries"]
    assert by_profile["entries"] == entries  # either system's id finds the same trail
    assert by_phone["entries"] == entries and by_email["entries"] == entries  # so do a phone and an email
    summary = [(e["system"], e["old_status"], e["new_status"], e["source"], e["by_crmsync"]) for e in entries]
    assert summary == [
        ("everyaction", None, "opt-in", "everyaction_edit", False),  # first seen in EveryAction
        ("mobilecommons", None, "opt-in", "everyaction_edit", True),  # crmsync subscribed them (welcome)
        ("mobilecommons", "opt-in", "opt-out", "mobilecommons_stop", False),  # the STOP word, observed
        ("everyaction", "opt-in", "opt-out", "mobilecommons_stop", True),  # crmsync set it in EveryAction
    ]
    assert all(e["crm_id"] == str(ann) for e in entries)
    assert all(e["messaging_id"] == profile_id for e in entries[1:])
    assert [e["run_id"] for e in entries] == [first["run"]["id"]] * 2 + [stop["run"]["id"]] * 2
    stop_entry = entries[2]
    assert stop_entry["changed_at"] is not None and stop_entry["changed_at"] <= stop_entry["seen_at"]
    assert stop_entry["source_label"] == "Mobile Commons STOP word"
    assert [e["id"] for e in entries] == sorted(e["id"] for e in entries)  # oldest first


async def test_an_everyaction_edit_is_dated_by_the_interval_crmsync_can_know(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    bob = world.ea.add_person("Bob", "Ray", email="bob@example.org", phone="3125550102",
                              phone_opt_in=OptInStatus.OPT_IN, city="Chicago", state="IL", zip="60601")
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id))
        await sup.activate(NAME)
        await world.run("ea_to_mc")
        await trio.sleep(3600)
        world.ea.set_phone_opt_in(bob, "3125550102", OptInStatus.OPT_OUT)  # an EveryAction edit
        await world.run("ea_to_mc")
        entries = (await consent_history(sup, NAME, str(bob)))["entries"]
        nursery.cancel_scope.cancel()
    edit = [e for e in entries if e["system"] == "everyaction" and e["new_status"] == "opt-out"]
    assert len(edit) == 1 and edit[0]["old_status"] == "opt-in" and edit[0]["source"] == "everyaction_edit"
    assert edit[0]["changed_after"] < edit[0]["changed_at"]  # after the last sighting, by this one
    applied = entries[-1]
    assert (applied["system"], applied["new_status"], applied["by_crmsync"]) == ("mobilecommons", "opt-out", True)
