"""What ``efficy_apsis`` adds to the consent history (:mod:`crmsync.state.consent_history`).

Every consent crmsync writes to APSIS goes through ``store.written`` (the fingerprint of the payload sent),
which compares it with the previous payload per topic/channel and records each change here, in the same
transaction. Its source is the CRM Profile on the Efficy contact card (held: opt-in; removed: opt-out), dated
with the contact's Efficy modification time, unless the slot is an opt-out made in APSIS (the unsubscribe
link): those are recorded as observed in APSIS, dated with APSIS's time. When the consent backflow removes
the CRM Profile in Efficy for such an opt-out, that write is recorded too.
"""

from __future__ import annotations

from collections.abc import Sequence

from crmsync.connectors.apsis.records import ApsisProfile, ConsentKey
from crmsync.daemon.integrations.efficy_apsis.rules import OptOutRecord
from crmsync.state import consent_history as ch

APSIS, EFFICY = "apsis", "efficy"


def subject(slot: ConsentKey) -> str:
    return f"{slot.topic}/{slot.channel}"


def apsis_changes(previous: ApsisProfile | None, sent: ApsisProfile, efficy_version: str | None, seen: str,
                  standing: Sequence[OptOutRecord] = ()) -> list[ch.ConsentChange]:
    """Consent slots whose status differs from the last payload sent (all of them for a first payload)."""
    by_slot = {r.slot: r for r in standing}
    run_id = ch.current_run_id()
    out = []
    for slot, status in sorted(sent.consents.items(), key=lambda kv: (kv[0].topic, kv[0].channel)):
        old = previous.consents.get(slot) if previous is not None else None
        if old == status:
            continue
        record = by_slot.get(slot)
        if record is not None and status == "opt-out":
            out.append(ch.ConsentChange(
                APSIS, subject(slot), status, "apsis_unsubscribe_link", False, seen, crm_id=sent.key,
                messaging_id=sent.key, old_status=old,
                changed_at=record.opted_out_at.isoformat() if record.opted_out_at else None, run_id=run_id,
                detail=f"opted out in APSIS; stands over the CRM Profile {record.profile_id} state"))
        else:
            out.append(ch.ConsentChange(
                APSIS, subject(slot), status, "efficy_crm_profile", True, seen, crm_id=sent.key,
                messaging_id=sent.key, old_status=old, changed_at=efficy_version, run_id=run_id,
                detail="CRM Profile " + ("held" if status == "opt-in" else "not held") + " on the contact card"))
    return out


def efficy_unlinked(records: Sequence[OptOutRecord], seen: str, confirmed: bool) -> list[ch.ConsentChange]:
    """The consent backflow removed these CRM Profiles in Efficy (an APSIS opt-out flowing back)."""
    if not records:
        return []
    run_id = ch.current_run_id()
    slots: dict[str, list[str]] = {}
    for r in records:  # one removal per CRM Profile, however many topics/channels it maps to
        slots.setdefault(r.profile_id, []).append(subject(r.slot))
    return [ch.ConsentChange(
        EFFICY, f"crm_profile:{pid}", "opt-out", "apsis_unsubscribe_link", True, seen, crm_id=records[0].contact_id,
        messaging_id=records[0].contact_id, old_status="opt-in", changed_at=seen, run_id=run_id,
        detail=f"CRM Profile {pid} removed from the contact card ({', '.join(names)} opted out in APSIS)"
               + ("" if confirmed else "; removal not confirmed yet")) for pid, names in slots.items()]


def apsis_observed(records: Sequence[OptOutRecord], seen: str) -> list[ch.ConsentChange]:
    """APSIS opt-outs on a profile crmsync holds no payload of (nothing to compare with)."""
    if not records:
        return []
    sent = ApsisProfile(records[0].contact_id, {}, {r.slot: "opt-out" for r in records}, frozenset())
    return apsis_changes(None, sent, None, seen, records)
