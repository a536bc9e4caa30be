"""Issue 7, item 13: a person who signed up through an APSIS form has an email-keyspace profile; syncing
their Efficy contact must not leave them as two marketing profiles (research §9.5). The seed: APSIS "utilizes
its integration middle layer to handle the operations related to consents and handling merging"."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from crmsync.clock import WallClock
from crmsync.connectors.apsis.records import CHANNEL_EMAIL, KEYSPACE_CRM_ID, KEYSPACE_EMAIL
from tests.integrations.efficy_apsis.direct import Flows, flows
from tests.integrations.efficy_apsis.harness import NEWS, NEWS_SMS, make_config

T0 = datetime(2024, 2, 1, 9, 0, tzinfo=UTC)
EMAIL = "jane@example.be"


def jane(f: Flows, profiles: list[int]) -> int:
    return f.efficy.add_contact(name="Peeters", first_name="Jane", email=EMAIL, profiles=profiles,
                                MOBILE="+32470123456", COUNTRY="BE", ROBINSON=False)


async def sync(f: Flows, path: str, cid: int) -> dict[str, object]:
    if path == "realtime":
        await f.push(cid)
        run = await f.realtime()
        assert run is not None
    else:
        run = await f.full_sync()
    return next(r for r in await f.rows(run) if r["crm_id"] == str(cid))


@pytest.mark.parametrize("path", ["realtime", "full_sync"])
async def test_a_form_signup_profile_is_merged_on_first_sync_and_its_optout_stays_in_force(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, path: str) -> None:
    clock = WallClock(start=T0)
    async with flows(tmp_path, clock) as f:
        cid = jane(f, [1])  # linked to the Newsletter on 2024-02-01
        f.apsis.add_profile(EMAIL, keyspace=KEYSPACE_EMAIL, consents={NEWS: "opt-in"})  # the form
        clock.advance_origin(timedelta(days=10).total_seconds())
        f.apsis.opt_out(EMAIL, NEWS.topic, CHANNEL_EMAIL, keyspace=KEYSPACE_EMAIL)  # footer link, 02-11
        clock.advance_origin(timedelta(days=10).total_seconds())
        row = await sync(f, path, cid)
        assert f.apsis.same_profile((KEYSPACE_CRM_ID, str(cid)), (KEYSPACE_EMAIL, EMAIL))
        assert "merged" in str(row["message"]) and EMAIL not in str(row["message"])
        assert f.apsis.consents_of(str(cid))[NEWS] == "opt-out"  # the opt-out given on the form profile
        assert f.apsis.consents_of(str(cid))[NEWS_SMS] == "opt-in"
        assert f.apsis.writes["merge_profiles"] == 1
        await sync(f, path, cid)
        assert f.apsis.writes["merge_profiles"] == 1  # first sync only


async def test_an_optout_on_the_crm_side_stays_in_force_after_merging(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    clock = WallClock(start=T0)
    async with flows(tmp_path, clock) as f:
        f.apsis.add_profile(EMAIL, keyspace=KEYSPACE_EMAIL, consents={NEWS: "opt-in"})
        clock.advance_origin(60)
        cid = jane(f, [])  # holds no CRM Profile: opted out
        await sync(f, "realtime", cid)
        assert f.apsis.same_profile((KEYSPACE_CRM_ID, str(cid)), (KEYSPACE_EMAIL, EMAIL))
        assert f.apsis.consents_of(str(cid))[NEWS] == "opt-out"
        assert f.apsis.consents_of(EMAIL, keyspace=KEYSPACE_EMAIL)[NEWS] == "opt-out"


async def test_a_merge_conflict_is_reported_and_never_retried(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    clock = WallClock(start=T0)
    async with flows(tmp_path, clock) as f:
        # the form profile is already one with another CRM id: merging it with ours is a 409
        f.apsis.add_profile("99999", consents={NEWS: "opt-in"})
        f.apsis.add_profile(EMAIL, keyspace=KEYSPACE_EMAIL)
        f.apsis._profiles[(KEYSPACE_EMAIL, EMAIL)] = f.apsis._profiles[(KEYSPACE_CRM_ID, "99999")]
        cid = jane(f, [1])
        # the first attempt goes no further than the merge: a later call is refused
        f.apsis.faults.fail(400, times=1, path_contains="/consents", method="POST")
        row = await sync(f, "realtime", cid)
        assert row["outcome"] == "rejected"
        assert "409" in str(row["message"]) and "not merged" in str(row["message"])
        row = await sync(f, "realtime", cid)  # the next attempt: reported again, not merged again
        assert row["outcome"] == "created"
        assert "409" in str(row["message"]) and "not merged" in str(row["message"])
        assert not f.apsis.same_profile((KEYSPACE_CRM_ID, str(cid)), (KEYSPACE_EMAIL, EMAIL))
        assert f.apsis.consents_of(str(cid))[NEWS] == "opt-in"
        merges = f.apsis.writes["merge_profiles"]
        await sync(f, "realtime", cid)
        await sync(f, "full_sync", cid)
        assert f.apsis.writes["merge_profiles"] == merges == 1


async def test_merging_can_be_switched_off(autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    clock = WallClock(start=T0)
    config = make_config(tmp_path, apsis={"merge_email_profiles": False})
    async with flows(tmp_path, clock, config=config) as f:
        f.apsis.add_profile(EMAIL, keyspace=KEYSPACE_EMAIL, consents={NEWS: "opt-in"})
        cid = jane(f, [1])
        await sync(f, "realtime", cid)
        assert not f.apsis.same_profile((KEYSPACE_CRM_ID, str(cid)), (KEYSPACE_EMAIL, EMAIL))
        assert f.apsis.writes["merge_profiles"] == 0
