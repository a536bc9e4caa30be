"""Issue 11, item 3 for efficy_apsis: consents written to APSIS from the CRM Profile on the contact card, and
an APSIS unsubscribe link flowing back, are in the consent history with their sources and times."""

from __future__ import annotations

from pathlib import Path

import trio

from crmsync.clock import WallClock
from crmsync.connectors.apsis.records import CHANNEL_EMAIL
from crmsync.daemon.consent_history import consent_history
from tests.integrations.efficy_apsis.harness import NAME, NEWS, world


async def test_crm_profile_consents_and_an_apsis_unsubscribe_are_recorded(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    async with world(tmp_path, clock, contacts=6) as w:
        cid = "10001"  # holds the newsletter (CRM Profile 1), passes the conditions
        await w.supervisor.full_sync(NAME)
        await w.wait_full_sync()
        await trio.sleep(60)
        w.apsis.opt_out(cid, NEWS.topic, CHANNEL_EMAIL)  # the unsubscribe link
        await w.supervisor.run_flow(NAME, "consent_backflow", wait=True)
        entries = (await consent_history(w.supervisor, NAME, cid))["entries"]
        assert (await consent_history(w.supervisor, NAME, "p0@example.com"))["entries"] == entries
        whole = await consent_history(w.supervisor, NAME, None, limit=100_000)
    news = f"{NEWS.topic}/{NEWS.channel}"
    summary = [(e["system"], e["subject"], e["old_status"], e["new_status"], e["source"], e["by_crmsync"])
               for e in entries if e["subject"] in (news, "crm_profile:1")]
    assert summary == [
        ("apsis", news, None, "opt-in", "efficy_crm_profile", True),
        ("apsis", news, "opt-in", "opt-out", "apsis_unsubscribe_link", False),
        ("efficy", "crm_profile:1", "opt-in", "opt-out", "apsis_unsubscribe_link", True),
    ]
    unsubscribe = next(e for e in entries if e["source"] == "apsis_unsubscribe_link" and e["system"] == "apsis")
    assert unsubscribe["changed_at"] is not None and unsubscribe["changed_at"] <= unsubscribe["seen_at"]
    first = entries[0]
    assert first["changed_at"] is not None  # the contact's Efficy modification time
    # the whole trail holds every synced contact's entries, oldest first
    assert whole["total"] >= len(entries) and {e["crm_id"] for e in whole["entries"]} >= {cid}
    ids = [e["id"] for e in whole["entries"]]
    assert ids == sorted(ids)
