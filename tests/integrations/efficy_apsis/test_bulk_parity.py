"""Issue 7 item 9: the bulk-import path ends exactly where the per-profile path ends.

The same world (Efficy contacts, APSIS profiles made before crmsync ever ran, opt-outs on either side of a
CRM change) goes through a full sync on each path; the whole APSIS state afterwards (every profile's
attributes, consents and tags) must be the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from crmsync.clock import WallClock
from crmsync.connectors.apsis import ApsisSimulator
from crmsync.connectors.apsis.records import CHANNEL_EMAIL
from tests.integrations.efficy_apsis.harness import NAME, NEWS, OFFERS, PROSPECT, make_config, world


def apsis_state(apsis: ApsisSimulator) -> dict[str, Any]:
    """Every profile of the CRM-id keyspace: attributes, consent types, tags (times and sources left out:
    they say when, not what)."""
    return {p.key: {"attributes": dict(p.attributes),
                    "consents": {(ck.topic, ck.channel): kind for ck, kind in p.consents.items()},
                    "tags": sorted(p.tags)}
            for p in apsis.profiles()}


async def synced_world(tmp_path: Path, clock: WallClock, threshold: int, **full_sync: Any) -> dict[str, Any]:
    config = make_config(tmp_path, full_sync={"import_threshold": threshold, **full_sync})
    async with world(tmp_path, clock, contacts=30, config=config) as w:
        resubscribed, optout_newer, offers_left, tagged = 10002, 10004, 10005, 10007
        # APSIS profiles that exist before crmsync runs (forms, an earlier integration)
        w.apsis.add_profile(str(resubscribed), consents={NEWS: "opt-out"})  # unsubscribed long ago
        w.apsis.add_profile(str(offers_left), consents={OFFERS: "opt-in"})  # no Offers profile in Efficy
        w.apsis.add_profile(str(tagged), tags=[PROSPECT])  # no Offers profile, so no Prospect tag
        await trio.sleep(60)
        w.efficy.add_profile_to_contact(resubscribed, 1)  # a CRM user links Newsletter after the opt-out
        await trio.sleep(60)
        w.apsis.add_profile(str(optout_newer))
        w.apsis.opt_out(str(optout_newer), NEWS.topic, CHANNEL_EMAIL)  # unsubscribed after the link
        w.efficy.drain_outbox()
        await trio.sleep(60)
        await w.supervisor.full_sync(NAME)
        fs = await w.wait_full_sync()
        assert fs["state"] == "completed"
        run = await w.last_run("full_sync")
        assert run["status"] == "success", run
        assert (w.apsis.writes["create_import"] > 0) == bool(threshold)
        return apsis_state(w.apsis)


async def test_bulk_import_path_ends_exactly_where_the_per_profile_path_ends(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    per_profile = await synced_world(tmp_path / "a", clock, threshold=0)
    bulk = await synced_world(tmp_path / "b", clock, threshold=1)
    assert per_profile  # a world with profiles in it
    differing = {key: (per_profile.get(key), bulk.get(key))
                 for key in sorted(set(per_profile) | set(bulk)) if per_profile.get(key) != bulk.get(key)}
    assert differing == {}
