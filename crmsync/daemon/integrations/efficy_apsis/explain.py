"""``explain`` for ``efficy_apsis``: one Efficy contact and its APSIS profile, rule by rule.

The record is found by K_CONTACT (which is also the APSIS profile key), or by an email address or phone
number (Efficy's contacts are read page by page until one matches). Shown: the sync conditions (the first
failing one named), the stale-read guard, the field mapping with the values that would be written, each
consent mapping with the CRM Profile on the contact card, the Efficy modification time, APSIS's live
consent and its time, and the rule that decided; the tags; then the verdict, which is the real-time flow's
own code run once for this contact against recording clients.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from crmsync.connectors.apsis.problems import ApsisNotFoundError
from crmsync.connectors.apsis.records import ATTR_CRMID, ATTR_EMAIL, Consent
from crmsync.connectors.efficy import EfficyContact
from crmsync.connectors.errors import NotFoundError
from crmsync.daemon.explain import ExplainContext, RecordNotFound, rule
from crmsync.daemon.integrations.efficy_apsis import realtime, store
from crmsync.daemon.integrations.efficy_apsis.rules import (
    OPT_IN,
    OPT_OUT,
    SyncSpec,
    apsis_optout_stands,
    attribute_value,
    condition_reason,
    contact_fields,
    is_stale,
    link_not_before,
    map_attributes,
    observe_contact,
    parse_apsis_time,
    plan_contact,
    profile_tags,
    resolve_link_consent,
    typed_equal,
)
from crmsync.state import QueuedEvent

FLOW = "realtime"


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


async def find(kind: Any, record: str) -> tuple[EfficyContact, str]:
    if record.isdigit():
        try:
            return await kind.efficy.get_contact(record), "K_CONTACT"
        except NotFoundError:
            raise RecordNotFound(f"Efficy has no contact {record}") from None
    wanted = record.casefold() if "@" in record else _digits(record)
    if not wanted or ("@" not in record and len(wanted) < 6):
        raise RecordNotFound(f"{record!r} is neither a K_CONTACT, an email address nor a phone number")
    position: str | None = None
    while True:  # no search API for these: read the contacts page by page (explain is a rare, manual command)
        page = await kind.efficy.list_contacts(position, include_profiles=False, with_total=False)
        for contact in page.records:
            if "@" in record:
                hit = (contact.email or "").casefold() == wanted or any(
                    isinstance(v, str) and v.strip().casefold() == wanted for v in contact.fields.values())
            else:
                hit = any(isinstance(v, str) and _digits(v).endswith(wanted[-9:]) and len(_digits(v)) >= 6
                          for v in contact.fields.values())
            if hit:
                how = "email address" if "@" in record else "phone number"
                return await kind.efficy.get_contact(contact.contact_id), f"{how} (Efficy contact fields)"
        position = page.next_position
        if position is None:
            raise RecordNotFound(f"no Efficy contact has {record!r}")


def condition_rules(contact: EfficyContact, spec: SyncSpec) -> list[dict[str, Any]]:
    fields = {k.upper(): v for k, v in contact_fields(contact, spec.email_field).items()}
    out = []
    failed = False
    for name, expected in spec.conditions.items():
        actual = fields.get(name.upper())
        ok = typed_equal(actual, expected)
        out.append(rule(f"sync condition {name.upper()} = {expected}", {name.upper(): attribute_value(actual)},
                        "pass" if ok else "fail",
                        None if ok else (condition_reason(name.upper(), expected)
                                         + ("" if not failed else " (an earlier condition already failed)"))))
        failed = failed or not ok
    if not spec.conditions:
        out.append(rule("sync conditions", {}, "pass", "none configured: every contact syncs"))
    return out


def consent_rules(contact: EfficyContact, spec: SyncSpec, state: store.ContactState,
                  live: dict[Any, Consent] | None, read_at: datetime) -> list[dict[str, Any]]:
    """Each consent mapping decided as the flows decide it (:func:`resolve_link_consent`), with the evidence."""
    out = []
    seen, _ = observe_contact(contact, spec.consents, state.observations, read_at)
    for mapping in spec.consents:
        slot = mapping.slot
        holds = contact.has_profile(mapping.profile_id)
        record = state.optouts.get((mapping.profile_id, slot))
        link_time = link_not_before(contact, mapping.profile_id, spec.created_field)
        observation = seen.get(mapping.profile_id)
        decided = resolve_link_consent(
            link_present=holds, opted_out=record is not None,
            opted_out_at=record.latest_time() if record is not None else None,
            link_changed_at=link_time, observation=observation, read_at=read_at)
        if not holds:
            why = "the CRM Profile is not on the contact card: opt-out"
        elif record is None:
            why = "the CRM Profile is on the contact card and APSIS has no opt-out on record: opt-in"
        elif decided == OPT_IN:
            why = ("the CRM Profile link is certainly newer than the APSIS opt-out (its own time, or seen absent "
                   "after the opt-out): opt-in")
        else:
            why = ("an opt-out made in APSIS stands: the link is not certainly newer (the contact's own change "
                   "time is no consent; doubt and ties mean opt-out)")
        existing = live.get(slot) if live is not None else None
        sent = state.current.consents.get(slot) if state.current is not None else None
        live_optout_at = parse_apsis_time(existing.modified_at) if existing is not None else None
        if (decided == OPT_IN and sent != OPT_IN and existing is not None and existing.type == OPT_OUT
                and apsis_optout_stands(live_optout_at, own_optout_at=state.own_optouts.get(slot),
                                        link_changed_at=link_time, observation=observation, read_at=read_at)):
            # what the writer checks before any opt-in: an opt-out made in APSIS meanwhile
            decided, why = OPT_OUT, ("an opt-out made in APSIS stands: the CRM Profile link is not certainly "
                                     "newer than it (doubt and ties mean opt-out)")
        looked = {
            "CRM Profile on the contact card": f"{mapping.profile_id}: {'held' if holds else 'not held'}",
            "link made no earlier than": _iso(link_time),
            "link seen absent at": _iso(observation.absent_at) if observation else None,
            "APSIS now": f"{existing.type} at {existing.modified_at}" if existing else
                         ("no profile" if live is None else "no consent"),
            "APSIS opt-out on record": (f"at {_iso(record.opted_out_at)}, CRM Profile removed at "
                                        f"{_iso(record.unlinked_version)}") if record else None,
            "last sent": sent,
        }
        out.append(rule(f"consent mapping {slot.topic}/{slot.channel}", looked, decided, why))
    return out


def mapping_rule(contact: EfficyContact, spec: SyncSpec, state: store.ContactState) -> dict[str, Any]:
    attributes = map_attributes(contact, spec.attributes, spec.email_field)
    columns = {ATTR_CRMID: "K_CONTACT", ATTR_EMAIL: spec.email_field, **{a: c for c, a in spec.attributes}}
    last = state.current.attributes if state.current is not None else {}
    looked = {attr: {"efficy": columns.get(attr, attr), "value": value, "last sent": last.get(attr),
                     "write": state.current is None or last.get(attr) != value}
              for attr, value in attributes.items()}
    changed = [a for a, v in looked.items() if v["write"]]
    return rule("field mapping (K_CONTACT and email automatic, then [attributes])", looked, "info",
                f"{len(changed)} attribute(s) to write" + (f": {', '.join(changed)}" if changed else ""))


async def explain_record(kind: Any, record: str, ctx: ExplainContext) -> dict[str, Any]:
    contact, how = await find(kind, record)
    cid = contact.contact_id
    spec: SyncSpec = kind.spec
    states = await ctx.db.tx(store.load_states, ctx.integration, [cid], spec.consents)
    state: store.ContactState = states[cid]
    try:
        live: dict[Any, Consent] | None = {c.key: c for c in await kind.apsis.get_consents(cid)}
    except ApsisNotFoundError:
        live = None
    steps = condition_rules(contact, spec)
    stale = is_stale(contact.modified_at, state.written_version)
    steps.append(rule("stale-read guard (never write an older Efficy state over a newer one)",
                      {"Efficy modified": _iso(contact.modified_at), "last written from": state.written_version},
                      "fail" if stale else "pass", "stale_read" if stale else None))
    mapping = mapping_rule(contact, spec, state)
    steps.append(mapping)
    read_at = ctx.clock.now()
    steps += consent_rules(contact, spec, state, live, read_at)
    holds = contact.profile_ids or ()
    steps.append(rule("tags from CRM Profiles", {"CRM Profiles held": list(holds)}, "info",
                      ", ".join(sorted(profile_tags(holds, spec.tag_profiles))) or "no tag"))
    plan = plan_contact(contact, spec, known=state, read_at=read_at)
    if plan.action == "skip":
        mapping["note"] = f"nothing is written: the contact is skipped ({plan.reason})"
    steps.append(rule("plan", {"action": plan.action, "reason": plan.reason, "linked": state.linked,
                               "APSIS profile": "exists" if live is not None else "none"}, plan.action,
                      "the payload equals the last one sent (fingerprint)" if plan.action == "unchanged" else None))
    event = QueuedEvent(0, ctx.integration, ctx.clock.now().isoformat(), {"contact_id": cid, "operation": "updated"}, 0)
    verdict = await ctx.verdict(FLOW, lambda run: realtime.process(
        [event], run, efficy=kind.efficy, apsis=kind.apsis, spec=spec, integration=ctx.integration))
    return {"found_by": how, "crm_id": cid, "messaging_id": cid if (state.linked or live is not None) else None,
            "sections": [{"flow": "full_sync / realtime", "from": {"system": "efficy", "id": cid},
                          "to": {"system": "apsis", "id": cid if live is not None else None}, "rules": steps,
                          "verdict": verdict}]}


async def resolve_ids(kind: Any, record: str, ctx: ExplainContext) -> tuple[str | None, str | None]:
    """The contact's id, which is also its APSIS profile key (for ``consent-history NAME EMAIL|PHONE``)."""
    contact, _ = await find(kind, record)
    return contact.contact_id, contact.contact_id
