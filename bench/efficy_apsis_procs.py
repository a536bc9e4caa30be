"""Processes the efficy_apsis benchmarks run, each measured on its own.

* ``serve``: the Efficy and APSIS simulators in their own process, on loopback, with demo data, the APSIS
  limits (100 requests/s, 10 imports a minute, 3 unfinished, 50 MB files, 100 kB bodies) and a per-call
  latency; ``/_bench/stats`` on each answers the simulator's call counters.
* ``page-through``: a bare read of every Efficy contact with its CRM Profiles with the daemon's client,
  reader, page size and number of Efficy sessions (``--sessions``): the read floor a full sync is compared
  with.
* ``sync``: the daemon's supervisor running one full sync of the integration against the simulators; prints
  the wall time of the sync, the process's CPU time during it (``resource.getrusage``) and its peak RSS.

Each prints one JSON line on stdout. The orchestrators are ``bench/full_sync.py`` and ``bench/per_profile.py``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import trio

from crmsync.asgi import Receive, Scope, Send
from crmsync.clock import WallClock
from crmsync.connectors.apsis import ApsisSimulator
from crmsync.connectors.apsis.records import ATTR_FIRSTNAME, ATTR_LASTNAME, ATTR_MOBILE
from crmsync.connectors.efficy import EfficyClient
from crmsync.connectors.efficy.paging import ContactPage
from crmsync.connectors.efficy.ranges import read_pages
from crmsync.connectors.efficy.simulator import EfficySimulator
from crmsync.connectors.simkit import Response, SimulatorApp, send_response, serve_app
from crmsync.daemon.config import config_from_mapping
from crmsync.daemon.heap import freeze_startup_heap
from crmsync.daemon.logging import configure_logging
from crmsync.daemon.metrics import Metrics
from crmsync.daemon.supervisor import Supervisor
from crmsync.state import Database
from crmsync.state import queries as q

NAME = "bench"
NEWS_TOPIC = "usercreated.topics.newsletter-a1b2c3"
OFFERS_TOPIC = "usercreated.topics.offers-d4e5f6"
VIP_TAG = "usercreated.tags.vip-ab12cd"
API_KEY = "bench-efficy-key"
CLIENT_SECRET = "bench-apsis-secret"
#: [U] APSIS's import processing speed is not published; the benchmark assumes this many rows a second.
IMPORT_ROWS_PER_SECOND = 50_000


class _Stats:
    """The simulator app plus ``GET /_bench/stats`` (bench plumbing, not part of any simulated API)."""

    def __init__(self, sim: SimulatorApp):
        self.sim = sim

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/_bench/stats":
            body: dict[str, Any] = {"requests": len(self.sim.requests),  # and the simulators' process's peak RSS
                                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
            if isinstance(self.sim, ApsisSimulator):
                body.update(rate_limited=self.sim.rate_limited, writes=dict(self.sim.writes),
                            profiles=len(self.sim.profiles()),
                            max_concurrent_imports=self.sim.max_concurrent_imports_seen)
            await send_response(send, Response.json(body))
            return
        await self.sim(scope, receive, send)


async def serve(contacts: int, latency: float, ready_file: Path) -> None:
    clock = WallClock()
    efficy = EfficySimulator(clock, api_key=API_KEY, session_ttl=timedelta(hours=10), latency=latency)
    ids = efficy.seed_demo(contacts)
    apsis = ApsisSimulator(clock, client_id="crmsync", client_secret=CLIENT_SECRET, latency=latency,
                           import_rows_per_second=IMPORT_ROWS_PER_SECOND, report_polls_until_ready=1)
    async with trio.open_nursery() as nursery:
        efficy_url = await nursery.start(serve_app, _Stats(efficy))
        apsis_url = await nursery.start(serve_app, _Stats(apsis))
        apsis.public_url = apsis_url
        await trio.Path(ready_file).write_text(json.dumps({"efficy": efficy_url, "apsis": apsis_url, **ids}))


def integration_config(tmp: Path, urls: dict[str, Any], *, threshold: int, page_size: int,
                       sessions: int = 1) -> dict[str, Any]:
    (tmp / "efficy-key").write_text(API_KEY)
    (tmp / "apsis-secret").write_text(CLIENT_SECRET)
    return {
        "daemon": {"state_dir": str(tmp), "control_socket": str(tmp / "c.sock")},
        "integrations": {NAME: {
            "kind": "efficy_apsis",
            "efficy": {"url": urls["efficy"], "api_key_file": str(tmp / "efficy-key")},
            "apsis": {"url": urls["apsis"], "client_id": "crmsync",
                      "client_secret_file": str(tmp / "apsis-secret"),
                      "import_poll_first": "0.2s", "import_poll_interval": "2s"},
            "conditions": {"OPENED": 1},
            "attributes": {"FIRSTNAME": ATTR_FIRSTNAME, "NAME": ATTR_LASTNAME, "MOBILE": ATTR_MOBILE},
            "consents": {"news": {"profile": urls["newsletter_profile"], "topic": NEWS_TOPIC, "channel": "email"},
                         "sms": {"profile": urls["sms_profile"], "topic": OFFERS_TOPIC, "channel": "sms"}},
            "tags": {"queries": {VIP_TAG: urls["vip_query"]}},
            "full_sync": {"page_size": page_size, "import_threshold": threshold, "read_sessions": sessions},
            "consent_backflow": {"report": {"poll_interval": "0.2s"}},
        }},
    }


async def page_through(urls: dict[str, Any], page_size: int, sessions: int) -> None:
    """The read floor: the first page (with the total, as a full sync reads it), then the rest with the
    full sync's own reader on ``sessions`` Efficy sessions, pages consumed as they come."""
    async with EfficyClient(urls["efficy"], api_key=API_KEY, page_size=page_size) as client:
        clock = WallClock()
        started = time.perf_counter()
        first = await client.list_contacts(None, include_profiles=True)
        count = len(first.records)

        async def deliver(page: ContactPage, read_at: object) -> None:
            nonlocal count
            count += len(page.records)

        if first.next_position is not None:
            clients = [client] + [client.new_session() for _ in range(sessions - 1)]
            await read_pages(clients, first.next_position, deliver, page_size=page_size, now=clock.now)
        print(json.dumps({"contacts": count, "seconds": time.perf_counter() - started, "sessions": sessions}))


async def sync(urls: dict[str, Any], threshold: int, page_size: int, sessions: int = 1) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        config = config_from_mapping(integration_config(tmp, urls, threshold=threshold, page_size=page_size,
                                                        sessions=sessions))
        db = await Database.open(tmp / "bench.db")
        supervisor = Supervisor(config, db, Metrics(), WallClock())
        freeze_startup_heap()  # as `crmsync run` does once set up
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            await supervisor.activate(NAME)
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            main0 = time.thread_time()
            started = time.perf_counter()
            await supervisor.full_sync(NAME)
            while True:
                await trio.sleep(0.05)
                fs = await db.tx(q.get_full_sync, NAME)
                if fs is not None and fs["state"] != "running":
                    break
            wall = time.perf_counter() - started
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            main_cpu = time.thread_time() - main0
            run = await db.tx(q.last_run, NAME, "full_sync")
            nursery.cancel_scope.cancel()
        await db.aclose()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    print(json.dumps({"state": fs["state"], "done": fs["done"], "seconds": wall, "cpu_seconds": cpu,
                      "main_thread_cpu_seconds": main_cpu,
                      "peak_rss_mb": cpu1.ru_maxrss / 1024, "counts": run["counts"] if run else None,
                      "status": run["status"] if run else None}))


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--contacts", type=int, required=True)
    p.add_argument("--latency", type=float, default=0.02)
    p.add_argument("--ready-file", type=Path, required=True)
    for name in ("page-through", "sync"):
        p = sub.add_parser(name)
        p.add_argument("--urls", required=True)
        p.add_argument("--page-size", type=int, default=500)
        p.add_argument("--threshold", type=int, default=1)
        p.add_argument("--sessions", type=int, default=1, help="Efficy sessions reading key ranges")
    args = parser.parse_args()
    configure_logging("error", stream=sys.stderr)
    if args.cmd == "serve":
        trio.run(serve, args.contacts, args.latency, args.ready_file)
    elif args.cmd == "page-through":
        trio.run(page_through, json.loads(args.urls), args.page_size, args.sessions)
    else:
        trio.run(sync, json.loads(args.urls), args.threshold, args.page_size, args.sessions)


if __name__ == "__main__":
    main()
