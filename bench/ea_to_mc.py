"""ea_to_mc throughput: N changed EveryAction contacts to Mobile Commons, with both simulators in their own
process (a child of this one) answering every call after a fixed latency, as the real APIs would. Prints calls
per contact, contacts/s, the ceiling workers / (calls per contact x latency), the ratio, and this process's
CPU per record (the daemon side only: the simulators' CPU is the child's). ``workers`` bounds the calls in flight
to each API, so the per-API ceiling (the busier API's slots) is printed too. Bounded, loopback only.

Usage: .venv/bin/python bench/ea_to_mc.py [CONTACTS] [LATENCY_MS] [WORKERS]   (defaults 10000, 50, the
default ``workers`` setting)
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from crmsync.clock import WallClock
from crmsync.connectors.everyaction import SIM_API_KEY, EveryActionClient, EveryActionSimulator, OptInStatus
from crmsync.connectors.http import NullObserver
from crmsync.connectors.mobilecommons import MobileCommonsClient, MobileCommonsSimulator
from crmsync.connectors.simkit import serve_app
from crmsync.daemon.config import config_from_mapping
from crmsync.daemon.integrations.everyaction_mobilecommons.config import EveryActionMobileCommonsConfig
from crmsync.daemon.integrations.everyaction_mobilecommons.ea_to_mc import run_ea_to_mc
from crmsync.daemon.integrations.everyaction_mobilecommons.kind import pooled_http
from crmsync.daemon.logging import configure_logging
from crmsync.daemon.runs import RunContext
from crmsync.state import Database
from crmsync.state import queries as q

TARGET_RATIO = 0.90
TARGET_RATE = 100.0


# -- the simulators' process ---------------------------------------------------------------------------------

async def serve(contacts: int, latency: float) -> None:
    clock = WallClock()
    ea = EveryActionSimulator(clock, latency=latency)
    mc = MobileCommonsSimulator(clock, latency=latency)
    campaign = mc.add_campaign("Supporters")
    path = mc.add_opt_in_path(campaign.id, "Web join")
    for i in range(contacts):
        ea.add_person(f"P{i}", "Bench", email=f"p{i}@example.org", phone=f"312{5550000 + i:07d}",
                      phone_opt_in=OptInStatus.OPT_IN, address_line1=f"{i + 1} Main St", city="Chicago",
                      zip="60601")
    async with trio.open_nursery() as nursery:
        ea_url = await nursery.start(serve_app, ea)
        mc_url = await nursery.start(serve_app, mc)
        print(json.dumps({"ea": ea_url, "mc": mc_url, "path_id": path.id}), flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)  # until the parent closes our stdin
        print(json.dumps({"cpu": time.process_time(), "mc_peak_in_flight": mc.peak_in_flight,
                          "mc_refusals": mc.concurrency_refusals, "welcomes": len(mc.welcome_messages),
                          "profiles": len(mc.profiles())}), flush=True)
        nursery.cancel_scope.cancel()


# -- the daemon side (this process) -------------------------------------------------------------------------

class CountingObserver(NullObserver):
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def api_request(self, system: str, status_class: str, duration_s: float | None = None) -> None:
        self.calls[system] += 1

    def rate_limit_wait(self, system: str, seconds: float) -> None:
        self.calls["rate_limit_waits"] += 1


async def sync(sims: dict[str, Any], workers: int | None, tmp: Path) -> tuple[dict[str, Any], float, float,
                                                                             CountingObserver]:
    (tmp / "ea.key").write_text(SIM_API_KEY)
    (tmp / "mc.pw").write_text("sim-password")
    section: dict[str, Any] = {
        "kind": "everyaction_mobilecommons", "default_opt_in_path_id": sims["path_id"],
        "everyaction": {"application_name": "bench", "api_key_file": str(tmp / "ea.key"),
                        "host": sims["ea"] + "/v4", "export_poll_interval": "1s"},
        "mobilecommons": {"auth": "basic", "login": "api@example.org", "password_file": str(tmp / "mc.pw"),
                          "base_url": sims["mc"] + "/api"},
    }
    if workers is not None:
        section["workers"] = workers
    config = config_from_mapping({"daemon": {"state_dir": str(tmp)}, "integrations": {"bench": section}})
    cfg = config.integrations["bench"]
    assert isinstance(cfg, EveryActionMobileCommonsConfig)
    observer = CountingObserver()
    ea_http, mc_http = pooled_http(sims["ea"] + "/v4", cfg.workers), pooled_http(sims["mc"] + "/api", cfg.workers)
    ea = EveryActionClient("bench", SIM_API_KEY, base_url=sims["ea"] + "/v4", poll_interval=1.0,
                           contact_columns=cfg.everyaction.contact_columns(), max_concurrency=cfg.workers,
                           observer=observer, http=ea_http)
    mc = MobileCommonsClient(sims["mc"] + "/api", login="api@example.org", password="sim-password",
                             max_concurrency=cfg.workers, observer=observer, http=mc_http)
    db = await Database.open(tmp / "state.db")
    clock = WallClock()
    run_id = await db.tx(q.start_run, "bench", "ea_to_mc", "bench", clock.now().isoformat())
    run = RunContext(db=db, clock=clock, integration="bench", flow="ea_to_mc", run_id=run_id)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await run_ea_to_mc(cfg, ea, mc, run)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    await ea_http.aclose()
    await mc_http.aclose()
    await db.aclose()
    return {"workers": cfg.workers, "counts": run.counts.as_dict()}, wall, cpu, observer


def main(contacts: int, latency_ms: float, workers: int | None) -> None:
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(contacts), str(latency_ms)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    try:
        sims = json.loads(child.stdout.readline())
        time.sleep(1.1)  # the changes lie before the export window's end (VAN windows are [from, to), in seconds)
        with tempfile.TemporaryDirectory() as tmp:
            result, wall, cpu, observer = trio.run(sync, sims, workers, Path(tmp))
        child.stdin.close()
        stats = json.loads(child.stdout.readline())
    finally:
        if not child.stdin.closed:
            child.stdin.close()  # the simulators' process ends when its stdin does
        child.wait(timeout=60)
    done = result["counts"]["created"] + result["counts"]["updated"] + result["counts"]["unchanged"]
    calls = observer.calls["everyaction"] + observer.calls["mobilecommons"]
    per_contact = calls / contacts
    rate = contacts / wall
    ceiling = result["workers"] / (per_contact * latency_ms / 1000)
    # ``workers`` bounds the calls in flight to each API, so each API has its own slots: the busier one bounds
    per_api = {system: observer.calls[system] / contacts for system in ("everyaction", "mobilecommons")}
    api_ceiling = min(result["workers"] / (n * latency_ms / 1000) for n in per_api.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"ea_to_mc: {contacts} changed contacts, {latency_ms:.0f} ms per call, simulators in another process, "
          f"workers {result['workers']}")
    print(f"  synced {done} (created {result['counts']['created']}), rejected {result['counts']['rejected']}, "
          f"welcomes {stats['welcomes']}")
    print(f"  calls per contact      {per_contact:8.2f}   (EveryAction {observer.calls['everyaction']}, "
          f"Mobile Commons {observer.calls['mobilecommons']}, export job and files included)")
    print(f"  contacts/s             {rate:8.1f}   target >= {TARGET_RATE:.0f}: "
          f"{'met' if rate >= TARGET_RATE else 'NOT met'}")
    print(f"  ceiling                {ceiling:8.1f}   workers / (calls per contact x latency)")
    print(f"  ratio                  {rate / ceiling:8.0%}   target >= {TARGET_RATIO:.0%}: "
          f"{'met' if rate / ceiling >= TARGET_RATIO else 'NOT met'}")
    print(f"  per-API ceiling        {api_ceiling:8.1f}   workers / (the busier API's calls per contact x latency): "
          f"EveryAction {per_api['everyaction']:.2f}, Mobile Commons {per_api['mobilecommons']:.2f} calls per "
          f"contact; ratio {rate / api_ceiling:.0%}")
    print(f"  daemon CPU per record  {cpu / contacts * 1000:8.2f} ms   (this process; peak RSS {peak:.0f} MB)")
    print(f"  simulators' CPU        {stats['cpu']:8.1f} s    (the other process, seeding included)")
    print(f"  wall {wall:.1f} s; Mobile Commons peak calls in flight {stats['mc_peak_in_flight']}, "
          f"refused beyond 160: {stats['mc_refusals']}; rate-limit waits {observer.calls['rate_limit_waits']}")


if __name__ == "__main__":
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(__doc__)
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        configure_logging("error", stream=sys.stderr)
        trio.run(serve, int(sys.argv[2]), float(sys.argv[3]) / 1000)
    else:
        configure_logging("error", stream=sys.stderr)
        args = sys.argv[1:]
        main(int(args[0]) if args else 10_000, float(args[1]) if len(args) > 1 else 50.0,
             int(args[2]) if len(args) > 2 else None)
