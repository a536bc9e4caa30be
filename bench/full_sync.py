"""Benchmark: an efficy_apsis full sync of N contacts against the in-process simulators.

Prints records/s and peak Python memory (tracemalloc) for two sizes (N/4 and N; N from argv, default
20000), for the bulk-import path. The simulators hold every contact and profile in memory, so what is
shown as "transient peak" is the peak above what is still held after the sync (simulator state, store
caches): the daemon's own working set, which should stay flat as N grows. No assertions on timing.

    .venv/bin/python bench/full_sync.py [N]
"""

from __future__ import annotations

import sys
import tempfile
import time
import tracemalloc
from datetime import timedelta
from functools import partial
from pathlib import Path

import httpx
import trio

from crmsync.clock import WallClock
from crmsync.connectors.apsis import ApsisSimulator
from crmsync.connectors.efficy.simulator import EfficySimulator
from crmsync.daemon.config import config_from_mapping
from crmsync.daemon.logging import configure_logging
from crmsync.daemon.metrics import Metrics
from crmsync.daemon.supervisor import Supervisor
from crmsync.state import Database
from crmsync.state import queries as q

NAME = "bench"


async def one_run(n: int, tmp: Path, *, page_size: int, threshold: int) -> dict[str, float]:
    clock = WallClock()
    efficy = EfficySimulator(clock, api_key="k", session_ttl=timedelta(hours=10))
    efficy.seed_demo(n)
    apsis = ApsisSimulator(clock, client_id="c", client_secret="s", requests_per_second=10**9,
                           imports_per_minute=10**6, max_pending_imports=3, public_url="http://apsis.test")
    (tmp / "k").write_text("k")
    (tmp / "s").write_text("s")
    config = config_from_mapping({
        "daemon": {"state_dir": str(tmp), "control_socket": str(tmp / "c.sock")},
        "integrations": {NAME: {
            "kind": "efficy_apsis",
            "efficy": {"url": "http://efficy.test", "api_key_file": str(tmp / "k")},
            "apsis": {"url": "http://apsis.test", "client_id": "c", "client_secret_file": str(tmp / "s"),
                      "rate_limit": 1e9, "imports_per_minute": 10**6, "import_poll_interval": "0.001s"},
            "conditions": {"OPENED": 1},
            "attributes": {"FIRSTNAME": "com.apsis1.attributes.firstname",
                           "NAME": "com.apsis1.attributes.lastname", "MOBILE": "com.apsis1.attributes.mobile"},
            "consents": {"news": {"profile": 1, "topic": "usercreated.topics.newsletter-a1b2c3", "channel": "email"},
                         "sms": {"profile": 2, "topic": "usercreated.topics.offers-d4e5f6", "channel": "sms"}},
            "full_sync": {"page_size": page_size, "import_threshold": threshold},
        }},
    })
    db = await Database.open(tmp / f"bench-{n}-{threshold}.db")
    supervisor = Supervisor(config, db, Metrics(), clock, transports={
        "efficy": httpx.ASGITransport(app=efficy), "apsis": httpx.ASGITransport(app=apsis)})  # type: ignore[arg-type]
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await supervisor.activate(NAME)
        await supervisor.full_sync(NAME)
        while True:
            await trio.sleep(0.05)
            fs = await db.tx(q.get_full_sync, NAME)
            if fs is not None and fs["state"] != "running":
                break
        nursery.cancel_scope.cancel()
    elapsed = time.perf_counter() - started
    after, peak = tracemalloc.get_traced_memory()
    await db.aclose()
    assert fs["state"] == "completed", fs
    return {"n": n, "seconds": elapsed, "rate": n / elapsed, "peak_mb": (peak - before) / 1e6,
            "retained_mb": (after - before) / 1e6, "transient_mb": (peak - after) / 1e6,
            "profiles": len(apsis.profiles())}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    configure_logging("error", stream=sys.stderr)
    tracemalloc.start()
    print(f"efficy_apsis full sync, bulk-import path, page size 500 (N = {n // 4} and {n})")
    print(f"{'contacts':>9} {'seconds':>8} {'records/s':>10} {'peak MB':>8} {'retained MB':>12} "
          f"{'transient MB':>13}")
    for size in (max(1, n // 4), n):
        with tempfile.TemporaryDirectory() as d:
            r = trio.run(partial(one_run, size, Path(d), page_size=500, threshold=1))
        print(f"{r['n']:>9} {r['seconds']:>8.1f} {r['rate']:>10.0f} {r['peak_mb']:>8.1f} "
              f"{r['retained_mb']:>12.1f} {r['transient_mb']:>13.1f}")
    print("retained = simulator state and store caches still held after the sync (grows with N);")
    print("transient = peak above that: the sync's working set (one page at a time), plus the in-process")
    print("simulators' handling of one request; it should not grow with N.")


if __name__ == "__main__":
    main()
