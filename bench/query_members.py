"""Benchmark: the tag query's members read on their own, the daemon's memory for it measured alone.

The Efficy simulator runs in its own process (``bench/efficy_apsis_procs.py serve``, the sandbox's demo data,
no added latency); a fresh process then reads the demo's saved query (every tenth contact: 100,000 members at
1M contacts) as a full sync does - the members read, then written to the store - and prints its RSS before,
its peak RSS (``ru_maxrss``), the CPU time of the read and of the store write, and the members counted; with
``--tracemalloc``, the peak of Python's own allocations during the read too (slower).

    .venv/bin/python bench/query_members.py [--contacts 1000000] [--tracemalloc]

No assertions: the figures go to bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.full_sync import Simulators
from crmsync.connectors.efficy import EfficyClient
from crmsync.daemon.integrations.efficy_apsis import store
from crmsync.state import Database

API_KEY = "bench-efficy-key"  # bench/efficy_apsis_procs.py's


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def read_members(urls: dict[str, Any], trace: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        db = await Database.open(Path(d) / "bench.db")
        async with EfficyClient(urls["efficy"], api_key=API_KEY) as client:
            await client.current_user()  # the session and the connection, before measuring
            rss0, cpu0 = _rss_mb(), _cpu()
            if trace:
                tracemalloc.start()
            started = time.perf_counter()
            members = await client.query_members(urls["vip_query"])
            read_s, read_cpu = time.perf_counter() - started, _cpu() - cpu0
            traced = tracemalloc.get_traced_memory()[1] / 2 ** 20 if trace else None
            tracemalloc.stop()
            cpu1 = _cpu()
            count = await db.tx(store.replace_query_members("bench", "vip", members))
            write_cpu = _cpu() - cpu1
        await db.aclose()
    return {"members": count, "rss_before_mb": round(rss0, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "read_seconds": round(read_s, 2), "read_cpu_seconds": round(read_cpu, 2),
            "store_write_cpu_seconds": round(write_cpu, 2),
            "tracemalloc_peak_mb": None if traced is None else round(traced, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # the measured process
    args = parser.parse_args()
    if args.child:
        print(json.dumps(trio.run(read_members, json.loads(args.child), args.tracemalloc)))
        return
    with Simulators(args.contacts, 0.0) as urls:
        cmd = [sys.executable, __file__, "--child", json.dumps(urls)] + (["--tracemalloc"] if args.tracemalloc
                                                                           else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        print(json.dumps({"contacts": args.contacts, **json.loads(out.strip().splitlines()[-1])}))


if __name__ == "__main__":
    main()
