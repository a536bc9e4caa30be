"""The daemon's CPU per record on the bulk path's pure stages, in one process, without I/O.

Efficy rows as the simulator renders them (the sandbox's demo data) are typed into ``EfficyContact`` records
(``contacts_from_rows``, as the client does page by page) and planned by the rules (``plan_contact``) for a
first sync; prints microseconds per record for each stage. A quick, steady figure to profile against: the
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
from crmsync.connectors.apsis.records import (
    ATTR_FIRSTNAME,
    ATTR_LASTNAME,
    ATTR_MOBILE,
    CHANNEL_EMAIL,
    CHANNEL_SMS,
    ConsentKey,
)
from crmsync.connectors.efficy.records import contacts_from_rows
from crmsync.connectors.efficy.simulator import EfficySimulator
from crmsync.daemon.integrations.efficy_apsis.rules import ConsentRule, SyncSpec, plan_contact


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

    def once() -> tuple[float, float]:
        t0 = time.process_time()
        contacts = []
        for i in range(0, len(rows), page):
            for c in contacts_from_rows(rows[i:i + page]):
                contacts.append(c.with_profiles(links.get(c.contact_id, ()), None))
        t1 = time.process_time()
        for c in contacts:
            plan_contact(c, spec, read_at=read_at)
        t2 = time.process_time()
        return t1 - t0, t2 - t1

    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(once)
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return
    n = len(rows)
    for _ in range(args.repeat):
        read, plan = once()
        print(f"records: {read / n * 1e6:6.1f} us/record   plan: {plan / n * 1e6:6.1f} us/record   "
              f"total {(read + plan) / n * 1e6:6.1f}")


if __name__ == "__main__":
    main()
