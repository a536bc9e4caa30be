"""Issue 8 item 2, no redundant calls: a profile created by this upsert carries no tag, so removing the
managed tags it lacks would be a wasted request; a profile that already existed still gets them removed."""

from __future__ import annotations

from trio.testing import MockClock

from crmsync.connectors.apsis.client import ApsisClient
from crmsync.connectors.apsis.records import ATTR_EMAIL, ApsisProfile
from crmsync.connectors.apsis.simulator import ApsisSimulator

VIP = "usercreated.tags.vip-ab12cd"


async def test_a_new_profile_costs_no_tag_removal_but_an_existing_one_is_cleaned(
        autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator) -> None:
    result = await client.upsert_profile(ApsisProfile("1", {ATTR_EMAIL: "a@x.be"}), None, managed_tags={VIP})
    assert result.created and result.tag_requests == 0 and sim.writes["patch_tags"] == 0
    sim.add_profile("2", tags=[VIP])
    result = await client.upsert_profile(ApsisProfile("2", {ATTR_EMAIL: "b@x.be"}), None, managed_tags={VIP})
    assert not result.created and result.tag_requests == 1 and sim.tags_of("2") == frozenset()
