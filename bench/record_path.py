"""The daemon's CPU per record on the bulk path's pure stages, in one process, without I/O.

Efficy rows as the simulator renders them (the sandbox's demo data) are typed into ``EfficyContact`` records
(``contacts_from_rows``, as the client does page by page), planned by the rules (``plan_contact``) for a
first sync, and the writes placed in import files as the bulk plan stage places them (``addressed``,
``import_row``, the fingerprint, the ledger entry, ``ImportBatch.add``); prints microseconds per record for
each stage (rows: per record of the sync, writes or not). A quick, steady figure to profile against: the
end-to-end figure (``bench/full_sync.py``) adds HTTP, the store and the import files.

    .venv/bin/python -m bench.record_path [--contacts 10000] [--repeat 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from datetime import UTC, datetime

from crmsync.clock import WallClock
from crmsync.connectors.apsis.imports import ImportLayout
from crmsync.connectors.apsis.records import (
    ATTR_CRMID,
    ATTR_EMAIL,
    ATTR_FIRSTNAME,
    ATTR_LASTNAME,
    ATTR_MOBILE,
    CHANNEL_EMAIL,
    CHANNEL_SMS,
    ConsentKey,
)
from crmsync.connectors.efficy.records import contacts_from_rows
from crmsync.connectors.efficy.simulator import EfficySimulator
from crmsync.daemon.heap import freeze_startup_heap
from crmsync.daemon.integrations.efficy_apsis.bulk import (
    ImportBatch,
    LedgerEntry,
    addressed,
    import_row,
    plan_outcome,
)
from crmsync.daemon.integrations.efficy_apsis.rules import (
    OPT_IN,
    OPT_OUT,
    ConsentRule,
    Plan,
    SyncSpec,
    fingerprint,
    plan_contact,
    version_str,
)


def demo_rows(contacts: int) -> tuple[list[dict[str, object]], dict[str, list[str]], dict[str, int]]:
    sim = EfficySimulator(WallClock(), api_key="k")
    ids = sim.seed_demo(contacts)
    keys = sorted(sim._contacts)
    rows = [sim._render_contact(k, key_as_string=False) for k in keys]
    links: dict[str, list[str]] = {}
    for cid, pids in sorted(sim._links.items()):
        links[str(cid)] = [str(p) for p in sorted(pids)]
    return rows, links, ids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contacts", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    rows, links, ids = demo_rows(args.contacts)
    spec = SyncSpec(
        conditions={"OPENED": 1},
        attributes=(("FIRSTNAME", ATTR_FIRSTNAME), ("NAME", ATTR_LASTNAME), ("MOBILE", ATTR_MOBILE)),
        consents=(ConsentRule(str(ids["newsletter_profile"]), ConsentKey("news", CHANNEL_EMAIL)),
                  ConsentRule(str(ids["sms_profile"]), ConsentKey("offers", CHANNEL_SMS))),
        query_tags=frozenset({"vip"}))
    read_at = datetime(2026, 1, 2, tzinfo=UTC)
    page = 500
    freeze_startup_heap()  # the collector as the daemon sets it once set up (the demo rows count as set-up)

    slots = tuple(sorted((r.slot for r in spec.consents), key=lambda ck: (ck.topic, ck.channel)))
    addresses = {CHANNEL_EMAIL: ATTR_EMAIL, CHANNEL_SMS: ATTR_MOBILE}
    columns = tuple(sorted({a for _, a in spec.attributes} | {ATTR_CRMID, ATTR_EMAIL}))
    layouts = [ImportLayout(OPT_IN, False, columns, slots, tuple(sorted(spec.managed_tags))),
               ImportLayout(OPT_IN, True, tuple(sorted(set(addresses.values()))), slots),
               ImportLayout(OPT_OUT, False, tuple(sorted(set(addresses.values()))), slots)]

    def place(plans: list[tuple[Plan, object]]) -> None:
        """What the bulk plan stage does with each write of a first sync (no reported opt-outs)."""
        batch = ImportBatch(1, layouts, max_bytes=50_000_000, max_rows=len(plans) + 1, spool_bytes=10**9)
        for plan, contact in plans:
            if plan.action != "write" or plan.desired is None:
                continue
            sent, per_profile = addressed(plan.desired, plan.current, addresses)
            row = import_row(sent, plan.current, plan.current, (), managed_tags=spec.managed_tags,
                             tags_in_import=True, clear_in_import=False, per_profile_optouts=per_profile)
            entry = LedgerEntry(plan.contact_id, plan_outcome(plan), (), fingerprint(sent),
                                version_str(contact.modified_at), (), plan.obsolete_optouts,  # type: ignore
                                row.post_add_tags, row.post_remove_tags, row.post_clear, row.post_optouts)
            batch.add(plan.contact_id, sent, row, entry)
        batch.close()

    def once() -> tuple[float, float, float]:
        t0 = time.process_time()
        contacts = []
        for i in range(0, len(rows), page):
            for c in contacts_from_rows(rows[i:i + page]):
                contacts.append(c.with_profiles(links.get(c.contact_id, ()), None))
        t1 = time.process_time()
        plans = [(plan_contact(c, spec, read_at=read_at), c) for c in contacts]
        t2 = time.process_time()
        place(plans)
        t3 = time.process_time()
        return t1 - t0, t2 - t1, t3 - t2

    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(once)
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return
    n = len(rows)
    for _ in range(args.repeat):
        read, plan, place_s = once()
        print(f"records: {read / n * 1e6:6.1f} us/record   plan: {plan / n * 1e6:6.1f} us/record   "
              f"rows: {place_s / n * 1e6:6.1f} us/record   total {(read + plan + place_s) / n * 1e6:6.1f}")


if __name__ == "__main__":
    main()
