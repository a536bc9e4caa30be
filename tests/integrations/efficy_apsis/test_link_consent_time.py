"""Issue 7, item 7: consent time is the CRM Profile link's time, never the contact's change time.

The seed: consent is managed by "a CRM User changing the profile for the customer's contact card, or the
contact themselves opting out from a Subscription by clicking the Opt-out link in the footer of an Email".
Invariant 1: an opt-out is never overwritten by an older opt-in; invariant 4: the newer change wins, a tie
goes to the opt-out. An unrelated edit of the contact is no consent change at all.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import trio

from crmsync.clock import WallClock
from crmsync.connectors.apsis.records import CHANNEL_EMAIL
from tests.integrations.efficy_apsis.direct import Flows, flows
from tests.integrations.efficy_apsis.harness import NEWS, NEWS_SMS, make_config


def at(clock: WallClock, when: datetime) -> None:
    """Move the simulated wall clock to ``when`` (forward only)."""
    seconds = (when - clock.now()).total_seconds()
    assert seconds >= 0
    clock.advance_origin(seconds)


def news_contact(f: Flows) -> int:
    return f.efficy.add_contact(name="Peeters", first_name="Jane", email="jane@example.be", profiles=[1],
                                MOBILE="+32470123456", COUNTRY="BE", ROBINSON=False)


async def synced_then_unsubscribed(f: Flows, clock: WallClock) -> int:
    """A contact linked to "Newsletter" on 2024-02-01, synced, then unsubscribed in APSIS on 2024-03-15 12:00."""
    cid = news_contact(f)
    await f.full_sync()
    at(clock, datetime(2024, 3, 15, 12, 0, tzinfo=UTC))
    f.apsis.opt_out(str(cid), NEWS.topic, CHANNEL_EMAIL)
    return cid


async def test_an_unrelated_edit_after_a_footer_unsubscribe_keeps_the_person_opted_out(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    clock = WallClock(start=datetime(2024, 2, 1, 9, 0, tzinfo=UTC))
    async with flows(tmp_path, clock) as f:
        cid = news_contact(f)  # linked to "Newsletter" on 2024-02-01
        await f.full_sync()
        assert f.apsis.consents_of(str(cid))[NEWS] == "opt-in"
        at(clock, datetime(2024, 3, 1, 12, 0, tzinfo=UTC))
        f.apsis.opt_out(str(cid), NEWS.topic, CHANNEL_EMAIL)  # the footer link
        at(clock, datetime(2024, 5, 6, 10, 0, tzinfo=UTC))
        f.efficy.update_contact(cid, first_name="Janet")  # unrelated edit
        await f.push(cid)
        await f.realtime()
        await f.full_sync()
        assert f.apsis.consents_of(str(cid))[NEWS] == "opt-out"
        await f.backflow()
        assert 1 not in f.efficy.contact(cid)["profile_ids"]  # consent_backflow removed the CRM link
        await f.push(cid)
        await f.realtime()
        await f.full_sync()
        assert f.apsis.consents_of(str(cid))[NEWS] == "opt-out"


async def test_an_unrelated_edit_does_not_resubscribe_on_the_first_sync_of_an_existing_profile(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """The APSIS profile predates crmsync's store (an earlier integration, a restored state directory)."""
    clock = WallClock(start=datetime(2024, 2, 1, 9, 0, tzinfo=UTC))
    async with flows(tmp_path, clock) as f:
        cid = news_contact(f)
        f.apsis.add_profile(str(cid), consents={NEWS: "opt-in", NEWS_SMS: "opt-in"})
        at(clock, datetime(2024, 3, 1, 12, 0, tzinfo=UTC))
        f.apsis.opt_out(str(cid), NEWS.topic, CHANNEL_EMAIL)
        at(clock, datetime(2024, 5, 6, 10, 0, tzinfo=UTC))
        f.efficy.update_contact(cid, first_name="Janet")
        await f.push(cid)
        await f.realtime()
        assert f.apsis.consents_of(str(cid))[NEWS] == "opt-out"
        await f.full_sync()
        assert f.apsis.consents_of(str(cid))[NEWS] == "opt-out"
        assert f.apsis.consents_of(str(cid))[NEWS_SMS] == "opt-in"
        await f.backflow()
        assert 1 not in f.efficy.contact(cid)["profile_ids"]


async def test_a_link_recreated_after_an_unsubscribe_resubscribes(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    clock = WallClock(start=datetime(2024, 2, 1, 9, 0, tzinfo=UTC))
    async with flows(tmp_path, clock) as f:
        cid = await synced_then_unsubscribed(f, clock)
        at(clock, datetime(2024, 3, 20, 8, 0, tzinfo=UTC))
        f.efficy.remove_profile_from_contact(cid, 1)  # a CRM user removes it ...
        await f.push(cid)
        await f.realtime()  # ... and crmsync sees the card without it, after the unsubscribe
        at(clock, datetime(2024, 4, 2, 9, 0, tzinfo=UTC))
        f.efficy.add_profile_to_contact(cid, 1)  # ... and re-creates it on 2024-04-02
        await f.push(cid)
        await f.realtime()
        assert f.apsis.consents_of(str(cid))[NEWS] == "opt-in"


async def test_a_link_recreated_after_the_backflow_removed_it_resubscribes(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    clock = WallClock(start=datetime(2024, 2, 1, 9, 0, tzinfo=UTC))
    async with flows(tmp_path, clock) as f:
        cid = await synced_then_unsubscribed(f, clock)
        at(clock, datetime(2024, 3, 15, 12, 15, tzinfo=UTC))
        await f.backflow()
        assert 1 not in f.efficy.contact(cid)["profile_ids"]
        at(clock, datetime(2024, 4, 2, 9, 0, tzinfo=UTC))
        f.efficy.add_profile_to_contact(cid, 1)
        await f.push(cid)
        await f.realtime()
        assert f.apsis.consents_of(str(cid))[NEWS] == "opt-in"


async def test_a_link_first_seen_after_an_unsubscribe_says_nothing_about_when_it_was_made(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """Removed and re-added while crmsync did not look: without the link's own time, that is doubt."""
    clock = WallClock(start=datetime(2024, 2, 1, 9, 0, tzinfo=UTC))
    async with flows(tmp_path, clock) as f:
        cid = await synced_then_unsubscribed(f, clock)
        at(clock, datetime(2024, 3, 20, 8, 0, tzinfo=UTC))
        f.efficy.remove_profile_from_contact(cid, 1)
        at(clock, datetime(2024, 4, 2, 9, 0, tzinfo=UTC))
        f.efficy.add_profile_to_contact(cid, 1)
        await f.push(cid)
        await f.realtime()
        await f.full_sync()
        assert f.apsis.consents_of(str(cid))[NEWS] == "opt-out"


async def test_the_links_own_change_time_decides_when_efficy_exposes_it(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    clock = WallClock(start=datetime(2024, 2, 1, 9, 0, tzinfo=UTC))
    config = make_config(tmp_path, efficy={"profile_link_changed_field": "D_CHANGE"})
    async with flows(tmp_path, clock, config=config) as f:
        f.efficy.link_changed_field = "D_CHANGE"
        cid = await synced_then_unsubscribed(f, clock)
        at(clock, datetime(2024, 3, 20, 8, 0, tzinfo=UTC))
        f.efficy.remove_profile_from_contact(cid, 1)  # unseen by crmsync
        at(clock, datetime(2024, 4, 2, 9, 0, tzinfo=UTC))
        f.efficy.add_profile_to_contact(cid, 1)  # the relation's D_CHANGE says 2024-04-02
        at(clock, datetime(2024, 4, 3, 9, 0, tzinfo=UTC))
        run = await f.backflow()  # finds the opt-out: older than the link, so the link stays
        assert 1 in f.efficy.contact(cid)["profile_ids"]
        assert "older than the CRM Profile link" in (await f.rows(run))[0]["message"]
        await f.realtime()  # the contact the backflow queued
        assert f.apsis.consents_of(str(cid))[NEWS] == "opt-in"
        await f.full_sync()
        assert f.apsis.consents_of(str(cid))[NEWS] == "opt-in"


async def test_a_link_made_in_the_same_second_as_the_unsubscribe_loses_to_it(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    clock = WallClock(start=datetime(2024, 2, 1, 9, 0, tzinfo=UTC))
    config = make_config(tmp_path, efficy={"profile_link_changed_field": "D_CHANGE"})
    async with flows(tmp_path, clock, config=config) as f:
        f.efficy.link_changed_field = "D_CHANGE"
        cid = news_contact(f)
        await f.full_sync()
        at(clock, datetime(2024, 4, 2, 10, 0, 0, 100000, tzinfo=UTC))
        f.efficy.remove_profile_from_contact(cid, 1)
        at(clock, datetime(2024, 4, 2, 10, 0, 0, 200000, tzinfo=UTC))
        f.efficy.add_profile_to_contact(cid, 1)  # relation D_CHANGE 10:00:00
        at(clock, datetime(2024, 4, 2, 10, 0, 0, 700000, tzinfo=UTC))
        f.apsis.opt_out(str(cid), NEWS.topic, CHANNEL_EMAIL)  # 10:00:00.7, the same second
        at(clock, datetime(2024, 4, 2, 10, 5, tzinfo=UTC))
        await f.full_sync()
        assert f.apsis.consents_of(str(cid))[NEWS] == "opt-out"


async def test_crmsyncs_own_optout_is_no_persons_optout_and_a_readded_link_resubscribes(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """Found by the stateful test: a CRM user removes the profile (crmsync writes the opt-out), then
    re-adds it; the APSIS opt-out is crmsync's own, not the person's, so the link wins and stays."""
    clock = WallClock(start=datetime(2024, 2, 1, 9, 0, tzinfo=UTC))
    async with flows(tmp_path, clock) as f:
        cid = f.efficy.add_contact(name="Peeters", first_name="Jane", email="jane@example.be",
                                   MOBILE="+32470123456", COUNTRY="BE", ROBINSON=False)  # no profile yet
        await f.full_sync()
        assert f.apsis.consents_of(str(cid))[NEWS] == "opt-out"  # written by crmsync
        f.efficy.add_profile_to_contact(cid, 1)  # the same second as that write
        await f.push(cid)
        await f.realtime()
        assert f.apsis.consents_of(str(cid))[NEWS] == "opt-in"
        await f.backflow()
        assert 1 in f.efficy.contact(cid)["profile_ids"]
        assert f.apsis.consents_of(str(cid))[NEWS] == "opt-in"


async def test_an_sms_optout_crmsync_wrote_is_not_flowed_back_when_the_mobile_is_invalid(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """Found by the stateful test: the SMS opt-in is not written without a valid mobile, so the payload
    last sent lacks that slot; the SMS opt-out crmsync wrote earlier is still its own, not the person's."""
    clock = WallClock(start=datetime(2024, 2, 1, 9, 0, tzinfo=UTC))
    async with flows(tmp_path, clock) as f:
        cid = f.efficy.add_contact(name="Peeters", first_name="Jane", email="jane@example.be",
                                   MOBILE="0470 12 34 56", COUNTRY="", ROBINSON=False)
        await f.full_sync()
        assert f.apsis.consents_of(str(cid))[NEWS_SMS] == "opt-out"
        f.efficy.add_profile_to_contact(cid, 1)
        await f.push(cid)
        await f.realtime()
        await f.backflow()
        assert 1 in f.efficy.contact(cid)["profile_ids"]  # no one opted out: the link stays
        assert f.apsis.consents_of(str(cid))[NEWS] == "opt-in"


async def test_a_second_change_in_the_same_second_is_not_dropped_as_a_redelivery(
        autojump_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    """Native Efficy webhooks carry no event id and a date to the second: a removal made in the same second
    as an addition already processed is a new change, and real-time must carry it (not drop it as a
    replay). Replays stay harmless: real-time reads the contact fresh and writes nothing unchanged."""
    clock = WallClock(start=datetime(2024, 2, 1, 9, 0, 0, 100000, tzinfo=UTC))

    def native(change: object) -> bytes:
        c = change  # a ChangeRecord
        record = {"table": c.table, "key": c.key, "operation": c.operation, "user": c.user,  # type: ignore[attr-defined]
                  "subject": c.subject, "fields": {},  # type: ignore[attr-defined]
                  "date": c.date.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}  # type: ignore[attr-defined]
        return json.dumps({"database": "EFFICY_SIM", "version": "12.1", "records": [record]}).encode()

    async with flows(tmp_path, clock) as f:
        cid = news_contact(f)
        await f.full_sync()
        f.efficy.drain_outbox()
        f.efficy.update_contact(cid, first_name="Janet")  # 09:00:00.1
        for change in f.efficy.drain_outbox():
            await f.deliver(native(change))
        await f.realtime()
        clock.advance_origin(0.5)
        f.efficy.remove_profile_from_contact(cid, 1)  # 09:00:00.6, the same second: an opt-out
        bodies = [native(change) for change in f.efficy.drain_outbox()]
        for body in bodies:
            await f.deliver(body)
        await f.realtime()
        assert f.apsis.consents_of(str(cid))[NEWS] == "opt-out"
        writes, profiles = f.apsis.write_calls, len(f.apsis.profiles())
        for body in bodies + bodies:  # redelivered twice
            await f.deliver(body)
        await f.realtime()
        assert f.apsis.write_calls == writes and len(f.apsis.profiles()) == profiles
