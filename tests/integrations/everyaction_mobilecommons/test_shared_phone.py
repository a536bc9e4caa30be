"""Two EveryAction people with one mobile number: Mobile Commons has one profile per phone, so it stays with
the record that holds its link; the other is skipped with a reason, and nothing flips from night to night."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from crmsync.connectors.everyaction import OptInStatus
from crmsync.state import queries as q
from tests.integrations.everyaction_mobilecommons.harness import NAME, make_config, make_world, welcomes

PHONE = "3125550177"


async def test_a_shared_mobile_number_stays_with_its_linked_record(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    world = await make_world(tmp_path)
    home = {"address_line1": "10 Main St", "city": "Chicago", "zip": "60601"}
    first = world.ea.add_person("Ann", "Lee", email="ann@example.org", phone=PHONE,
                                phone_opt_in=OptInStatus.OPT_IN, **home)
    second = world.ea.add_person("Bob", "Lee", email="bob@example.org", phone=PHONE,
                                 phone_opt_in=OptInStatus.OPT_IN, **home)
    async with trio.open_nursery() as nursery:
        sup = await world.start(nursery, make_config(tmp_path, world.path_id))
        await sup.activate(NAME)
        first_run = await world.run("ea_to_mc")
        profile = world.mc.profile(PHONE)
        assert profile is not None
        owner = profile.custom("Constituent ID")
        assert owner == str(first)  # the first in the export keeps the profile
        other = str(second)
        rows = {r["crm_id"]: r for r in first_run["rows"]}
        assert rows[other]["outcome"] == "skipped"
        assert rows[other]["reason"] == "mobile_number_linked_to_another_record"
        assert str(first) in (rows[other]["message"] or "")
        # both are edited, so both are in the next export: nothing flips, nothing is rewritten
        world.ea.edit_person(first, first_name="Ann")
        world.ea.edit_person(second, first_name="Bob")
        writes_before = sum(1 for m, p in world.mc.requests if "profile_update" in p)
        second_run = await world.run("ea_to_mc")
        nursery.cancel_scope.cancel()
    assert world.mc.profile(PHONE).custom("Constituent ID") == str(first)  # type: ignore[union-attr]
    assert await world.db.tx(q.link_for_messaging, NAME, profile.id) == str(first)
    assert sum(1 for m, p in world.mc.requests if "profile_update" in p) == writes_before
    rows = {r["crm_id"]: r for r in second_run["rows"]}
    assert rows[str(first)]["outcome"] == "unchanged" and rows[other]["outcome"] == "skipped"
    assert welcomes(world, PHONE) == 1
