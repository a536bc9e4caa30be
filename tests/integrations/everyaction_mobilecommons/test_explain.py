"""Issue 11, item 1: ``explain`` evaluates every rule for one record without writing, and its verdict is what
the next real run does with that record (compared over the sandbox's demo data)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from crmsync.daemon.explain import explain
from crmsync.daemon.integrations.everyaction_mobilecommons.sandbox import seed
from crmsync.daemon.supervisor import CommandError
from tests.integrations.everyaction_mobilecommons.harness import NAME, make_config, make_world, rows_by_crm


def _section(result: dict, flow: str) -> dict:
    return next(s for s in result["sections"] if s["flow"] == flow)


async def test_explain_agrees_with_the_next_real_run_over_the_demo_data(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    seed(world.ea, world.mc, 40)
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id, liberal_sync=False))
        await sup.activate(NAME)
        await trio.sleep(1)
        people = [str(p.van_id) for p in world.ea.people()]
        verdicts = {}
        for van_id in people:
            result = await explain(sup, NAME, van_id)
            assert result["crm_id"] == van_id
            verdicts[van_id] = _section(result, "ea_to_mc")["verdict"]
        assert world.write_calls() == []  # explaining writes nothing
        real = rows_by_crm(await world.run("ea_to_mc"))
        for van_id in people:
            assert (verdicts[van_id]["outcome"], verdicts[van_id]["reason"]) == \
                (real[van_id]["outcome"], real[van_id]["reason"]), van_id
        linked = next(r for r in real.values() if r["outcome"] == "created")
        by_profile = await explain(sup, NAME, f"mc:{linked['messaging_id']}")  # unambiguous prefixes
        assert by_profile["crm_id"] == linked["crm_id"] and by_profile["messaging_id"] == linked["messaging_id"]
        assert (await explain(sup, NAME, f"van:{linked['crm_id']}"))["messaging_id"] == linked["messaging_id"]
        assert {v["reason"] for v in verdicts.values()} >= {None, "not_opted_in", "country_not_us",
                                                             "no_mobile_number", "required_field_empty:first_name"}
        # the Mobile Commons side, by mobile number, against the next mc_to_ea run
        assert world.calls is not None
        world.calls.clear()
        phones = [p.phone_number for p in world.mc.profiles()]
        mc_verdicts = {}
        for phone in phones:
            result = await explain(sup, NAME, phone)
            mc_verdicts[result["messaging_id"]] = _section(result, "mc_to_ea")["verdict"]
        assert world.write_calls() == []
        report = await world.run("mc_to_ea")
        real_mc = {r["messaging_id"]: r for r in report["rows"]}
        for pid, verdict in mc_verdicts.items():
            assert (verdict["outcome"], verdict["reason"]) == (real_mc[pid]["outcome"], real_mc[pid]["reason"]), pid
        nursery.cancel_scope.cancel()


async def test_explain_shows_each_rule_and_what_would_be_written(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    seed(world.ea, world.mc, 8)
    people = world.ea.people()
    no_first = next(p for p in people if p.first_name is None)
    opted_in = people[0]
    welcomes = len(world.mc.welcome_messages)  # the demo data's own keyword opt-ins
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id))
        await trio.sleep(1)
        skipped = _section(await explain(sup, NAME, str(no_first.van_id)), "ea_to_mc")
        failing = [r for r in skipped["rules"] if r["verdict"] == "fail"]
        assert [r["rule"] for r in failing] == ["Required? first_name"]
        assert failing[0]["looked_at"] == {"first_name": None}
        assert skipped["verdict"]["reason"] == "required_field_empty:first_name"
        assert skipped["verdict"]["would_write"] == []
        email = opted_in.preferred_email
        assert email is not None
        result = await explain(sup, NAME, email)  # found by email
        assert result["crm_id"] == str(opted_in.van_id) and result["found_by"] == "EveryAction email"
        section = _section(result, "ea_to_mc")
        consent = next(r for r in section["rules"] if r["rule"] == "consent resolution")
        assert consent["verdict"] == "in" and consent["looked_at"]["EveryAction"]["status"] == "in"
        assert consent["note"] == "a known status beats an unknown one"
        assert section["verdict"]["outcome"] == "created"
        calls = [w["call"] for w in section["verdict"]["would_write"]]
        # the new profile (with its welcome path), then its Mobile Commons id onto the EveryAction record in the
        # same run (seed: "Mobile Commons pushes records to EveryAction to add the identifier")
        assert calls[0] == "profile_update" and "opt_in_path_id" in section["verdict"]["would_write"][0]["summary"]
        assert len(calls) == 2 and section["verdict"]["would_write"][1]["system"] == "everyaction"
        with pytest.raises(CommandError) as missing:
            await explain(sup, NAME, "nobody@example.org")
        assert missing.value.code == "not_found"
        nursery.cancel_scope.cancel()
    assert world.write_calls() == []
    assert len(world.mc.welcome_messages) == welcomes
