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
        raise CommandError("bad_request", "person: an id of the person in either system")
    ids = [str(person).strip()]
    known = await sup.db.tx(ch.count, name, ids[0])
    if not known and ("@" in ids[0] or sum(c.isdigit() for c in ids[0]) >= 10):
        from crmsync.daemon.explain import resolve_ids

        ids += await resolve_ids(sup, name, ids[0])  # an email or phone: the person's ids, from the live systems

    def read(c: Any) -> dict[str, Any]:
        entries: list[dict[str, Any]] = []
        seen: set[int] = set()
        for pid in ids:
            for e in ch.for_person(c, name, pid, limit + offset, 0):
                if e["id"] not in seen:
                    seen.add(e["id"])
                    entries.append(e)
        entries.sort(key=lambda e: e["id"])
        return {"integration": name, "person": ids[0], "total": len(entries),
                "entries": entries[offset:offset + limit]}

    return await sup.db.tx(read)
