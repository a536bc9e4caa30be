"""The control command ``consent_history``: one person's consent history, or the whole trail (CSV export).

The entries are written by the integration kinds (see :mod:`crmsync.state.consent_history`); this reads them.
``person`` is either system's id of the person (VAN ID or Mobile Commons profile id; K_CONTACT, which is also
the APSIS profile key), or a phone number or email address, which is looked up in both live systems the way
``explain`` finds a record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crmsync.state import consent_history as ch

if TYPE_CHECKING:
    from crmsync.daemon.supervisor import Supervisor

CSV_COLUMNS = ("id", "integration", "system", "crm_id", "messaging_id", "subject", "old_status", "new_status",
               "source", "source_label", "by_crmsync", "changed_after", "changed_at", "seen_at", "run_id", "detail")


async def consent_history(sup: Supervisor, name: str, person: Any = None, limit: int = 1000,
                          offset: int = 0) -> dict[str, Any]:
    from crmsync.daemon.supervisor import CommandError

    sup._kind(name)
    limit, offset = max(1, min(int(limit), 100_000)), max(0, int(offset))
    if person is None:
        def read_all(c: Any) -> dict[str, Any]:
            return {"integration": name, "person": None, "total": ch.count(c, name),
                    "entries": ch.trail(c, name, limit, offset)}

        return await sup.db.tx(read_all)
    if not isinstance(person, str | int) or not str(person).strip():
        raise CommandError("bad_request", "person: an id of the person in either system, a phone or an email")
    asked = str(person).strip()
    crm, msg = await _ids(sup, name, asked)

    def read(c: Any) -> dict[str, Any]:
        crm_ids, msg_ids = ch.counterparts(c, name, crm, msg)
        return {"integration": name, "person": asked, "crm_ids": sorted(crm_ids), "messaging_ids": sorted(msg_ids),
                "total": ch.count_for(c, name, sorted(crm_ids), sorted(msg_ids)),
                "entries": ch.for_person(c, name, sorted(crm_ids), sorted(msg_ids), limit, offset)}

    return await sup.db.tx(read)


async def _ids(sup: Supervisor, name: str, asked: str) -> tuple[list[str], list[str]]:
    """(CRM ids, messaging ids) for what was asked: ``crm:ID`` / ``van:ID`` or ``mc:ID`` / ``apsis:ID``;
    a bare id is a CRM id when the history knows it as one, else a messaging id; a phone number or an email
    address is looked up in the live systems (as ``explain`` does)."""
    prefix, _, rest = asked.partition(":")
    if prefix.casefold() in ("crm", "van", "efficy") and rest:
        return [rest.strip()], []
    if prefix.casefold() in ("mc", "messaging", "apsis") and rest:
        return [], [rest.strip()]
    as_crm = await sup.db.tx(ch.count_for, name, [asked], [])
    as_msg = await sup.db.tx(ch.count_for, name, [], [asked])
    if "@" in asked or (sum(c.isdigit() for c in asked) >= 10 and not as_crm and not as_msg):
        from crmsync.daemon.explain import resolve_ids

        crm_id, messaging_id = await resolve_ids(sup, name, asked)
        return ([crm_id] if crm_id else []), ([messaging_id] if messaging_id else [])
    return ([asked], []) if as_crm or not as_msg else ([], [asked])
