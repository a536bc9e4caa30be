"""Real-time sync end to end: Efficy pushes (both forms) -> the daemon's HTTP app -> queue -> APSIS."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from crmsync.clock import WallClock
from crmsync.connectors.apsis.records import ATTR_CRMID, ATTR_EMAIL, ATTR_FIRSTNAME, ATTR_LASTNAME, ATTR_MOBILE
from crmsync.connectors.efficy.webhooks import sign_contract_body
from crmsync.state import queries as q
from tests.integrations.efficy_apsis.harness import (
    COUNTRY,
    HOOK_SECRET,
    NAME,
    NEWS,
    NEWS_SMS,
    OFFERS,
    PROSPECT,
    make_config,
    world,
)


async def test_a_webhook_reaches_apsis_with_attributes_consents_and_tags(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    async with world(tmp_path, clock) as w:
        cid = w.efficy.add_contact(name="Peeters", first_name="Jane", email="jane@example.be", profiles=[1, 2],
                                   MOBILE="+32470123456", COUNTRY="BE", ROBINSON=False)
        sender = w.sender("contract")
        assert await sender.flush() > 0
        await w.wait_queue_empty()
        profile = w.apsis.profile(str(cid))
        assert profile is not None
        assert profile.attributes == {ATTR_CRMID: str(cid), ATTR_EMAIL: "jane@example.be",
                                      ATTR_FIRSTNAME: "Jane", ATTR_LASTNAME: "Peeters",
                                      ATTR_MOBILE: "+32470123456", COUNTRY: "BE"}
        assert w.apsis.consents_of(str(cid)) == {NEWS: "opt-in", NEWS_SMS: "opt-in", OFFERS: "opt-in"}
        assert w.apsis.tags_of(str(cid)) == {PROSPECT}
        run = await w.last_run("realtime")
        assert run["status"] == "success" and run["counts"]["created"] == 1
        assert await w.db.tx(q.link_for_crm, NAME, str(cid)) == str(cid)

        # removing the CRM Profile from the contact card is an opt-out, and the profile tag goes
        w.efficy.remove_profile_from_contact(cid, 2)
        await sender.flush()
        await w.wait_queue_empty()
        assert w.apsis.consents_of(str(cid))[OFFERS] == "opt-out"
        assert w.apsis.tags_of(str(cid)) == frozenset()


async def test_native_form_is_accepted_and_other_tables_are_ignored(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    config = make_config(tmp_path, form="native")
    async with world(tmp_path, clock, config=config) as w:
        cid = w.efficy.add_contact(name="Maes", first_name="Lucas", email="lucas@example.be", profiles=[1],
                                   ROBINSON=False)
        w.efficy.record_foreign_change(table=5000, key=77)
        await w.sender("native").flush()
        await w.wait_queue_empty()
        assert w.apsis.consents_of(str(cid))[NEWS] == "opt-in"
        assert w.apsis.profile("77") is None


async def test_failing_conditions_are_skipped_and_named_in_the_report(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    async with world(tmp_path, clock) as w:
        robinson = w.efficy.add_contact(name="R", email="r@example.be", profiles=[1], ROBINSON=True)
        closed = w.efficy.add_contact(name="C", email="c@example.be", profiles=[1], opened=False, ROBINSON=False)
        ok = w.efficy.add_contact(name="O", email="o@example.be", profiles=[1], ROBINSON=False)
        await w.sender().flush()
        await w.wait_queue_empty()
        assert w.apsis.profile(str(robinson)) is None and w.apsis.profile(str(closed)) is None
        assert w.apsis.profile(str(ok)) is not None
        run = await w.last_run("realtime")
        assert run["counts"]["skipped"] == {"condition_failed:OPENED=1": 1, "condition_failed:ROBINSON=0": 1}
        rows = {r["crm_id"]: r for r in await w.rows(run["id"])}
        assert rows[str(robinson)]["reason"] == "condition_failed:ROBINSON=0"
        assert rows[str(ok)]["outcome"] == "created"
        # a later failing change does not update the profile either
        w.efficy.update_contact(ok, first_name="Changed", ROBINSON=True)
        await w.sender().flush()
        await w.wait_queue_empty()
        profile = w.apsis.profile(str(ok))
        assert profile is not None and profile.attributes.get(ATTR_FIRSTNAME) is None


async def test_malformed_unsigned_or_wrongly_signed_bodies_are_refused_and_nothing_is_stored(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    async with world(tmp_path, clock) as w:
        url = f"/webhooks/{NAME}"
        good = json.dumps([{"record_id": "10001", "operation": "updated"}]).encode()
        cases = [
            (good, {}, 401),  # unsigned
            (good, {"X-Justin-Signature": "sha256=" + "0" * 64}, 401),  # wrongly signed
            (good, {"X-Justin-Signature": sign_contract_body(good, "other-secret")}, 401),
        ]
        for body in (b"{not json", b'[{"operation": "updated"}]', b'"text"', b'{"records": "x"}',
                     b'[{"record_id": "1", "operation": "exploded"}]', b"[]"):
            cases.append((body, {"X-Justin-Signature": sign_contract_body(body, HOOK_SECRET)}, 400))
        for body, headers, status in cases:
            r = await w.http.post(url, content=body, headers=headers)
            assert r.status_code == status, (body, r.text)
        assert await w.db.tx(q.queue_depth, NAME) == 0
        assert await w.db.tx(q.peek_queue, NAME, 10) == []
        r = await w.http.post(url, content=good, headers={"X-Justin-Signature": sign_contract_body(good, HOOK_SECRET)})
        assert r.status_code == 202
