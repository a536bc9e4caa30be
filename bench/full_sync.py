"""Benchmark: an efficy_apsis full sync on the bulk-import path, against simulators in their own process.

For each size (10k and 100k contacts by default; ``--with-1m`` adds 1M, which needs several GB for the
simulators' in-memory data and takes minutes), with every simulated call taking ``--latency`` seconds
(20 ms by default) and APSIS's published limits enforced by its simulator:

1. start the simulators (``bench/efficy_apsis_procs.py serve``) with the sandbox's demo data;
2. time a bare page-through of the same Efficy contacts with the daemon's client, reader, page size and
   number of sessions (``--sessions``, the sync's ``full_sync.read_sessions``): the read floor;
3. run the daemon's full sync in a process of its own, and read its CPU time and peak RSS there;
4. read the APSIS simulator's call counter.

Printed beside each target: APSIS calls per profile (<= 0.01), daemon CPU per record (<= 50 us), peak RSS
(<= 200 MB, flat within 10 % across sizes), wall time / read floor (<= 1.2). No assertions: the machine is
shared and noisy; the figures go to bench/README.md.

    .venv/bin/python bench/full_sync.py [--sizes 10000,100000] [--with-1m] [--latency 0.02] [--sessions 1]

Profiling: ``BENCH_DAEMON_CMD``, when set, is a command prefix (e.g. a profiler wrapper such as
``.venv/bin/py-spy record -r 500 -f raw --threads -o sync.txt --``) put before the sync process's own
command line (``python bench/efficy_apsis_procs.py sync ...``); the simulators and the read floor run as
without it. A sampling profiler slows the sync down, so read its CPU figures as the profiled run's.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
PROCS = [sys.executable, str(HERE / "efficy_apsis_procs.py")]


def _run_json(args: list[str], prefix: list[str] | None = None) -> dict[str, Any]:
    out = subprocess.run([*(prefix or []), *PROCS, *args], check=True, capture_output=True, text=True).stdout
    # the process's own answer is its last JSON line (a wrapper such as a profiler may print after it)
    lines = [line for line in out.strip().splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


class Simulators:
    """The simulators' process, started with ``contacts`` demo contacts; stopped on exit."""

    def __init__(self, contacts: int, latency: float):
        self.contacts = contacts
        self.latency = latency

    def __enter__(self) -> dict[str, Any]:
        self._dir = tempfile.TemporaryDirectory()
        ready = Path(self._dir.name) / "ready.json"
        self.proc = subprocess.Popen([*PROCS, "serve", "--contacts", str(self.contacts), "--latency",
                                      str(self.latency), "--ready-file", str(ready)])
        while not ready.exists() or not ready.read_text():
            if self.proc.poll() is not None:
                raise RuntimeError("the simulators' process exited")
            time.sleep(0.2)
        time.sleep(0.1)
        self.urls: dict[str, Any] = json.loads(ready.read_text())
        return self.urls

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self._dir.cleanup()


def stats(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/_bench/stats", timeout=30).json()


def measure(contacts: int, latency: float, *, threshold: int = 1, page_size: int = 500,
            sessions: int = 1) -> dict[str, Any]:
    with Simulators(contacts, latency) as urls:
        blob = json.dumps(urls)
        common = ["--urls", blob, "--page-size", str(page_size), "--sessions", str(sessions)]
        floor = _run_json(["page-through", *common])
        apsis_before = stats(urls["apsis"])
        efficy_before = stats(urls["efficy"])
        wrapper = shlex.split(os.environ.get("BENCH_DAEMON_CMD", ""))  # e.g. a profiler (module docstring)
        result = _run_json(["sync", *common, "--threshold", str(threshold)], wrapper)
        apsis_after = stats(urls["apsis"])
        efficy_after = stats(urls["efficy"])
    result.update(
        contacts=contacts, floor_seconds=floor["seconds"],
        apsis_calls=apsis_after["requests"] - apsis_before["requests"],
        apsis_429=apsis_after["rate_limited"] - apsis_before["rate_limited"],
        efficy_calls=efficy_after["requests"] - efficy_before["requests"],
        profiles=apsis_after["profiles"], max_concurrent_imports=apsis_after["max_concurrent_imports"],
        simulators_peak_rss_mb=apsis_after["peak_rss_mb"])
    return result


def verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--with-1m", action="store_true", help="also 1,000,000 contacts (GBs of RAM, minutes)")
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--sessions", type=int, default=1,
                        help="Efficy sessions reading key ranges, in the sync and in the read floor alike")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.with_1m:
        sizes.append(1_000_000)
    print(f"efficy_apsis full sync, bulk-import path, simulators in their own process, "
          f"{args.latency * 1000:.0f} ms per call, {args.sessions} Efficy session(s) (sync and read floor)")
    results = []
    for n in sizes:
        r = measure(n, args.latency, sessions=args.sessions)
        results.append(r)
        calls_per_profile = r["apsis_calls"] / n
        cpu_us = r["cpu_seconds"] / n * 1e6
        ratio = r["seconds"] / r["floor_seconds"]
        print(f"\n{n:,} contacts: {r['state']} ({r['status']}), {r['done']:,} done, {r['profiles']:,} APSIS profiles,"
              f" {r['apsis_calls']} APSIS calls ({r['apsis_429']} answered 429), {r['efficy_calls']} Efficy calls,"
              f" at most {r['max_concurrent_imports']} imports unfinished at once;"
              f" simulators' process peak RSS {r['simulators_peak_rss_mb']:,.0f} MB")
        print(f"  {'figure':<32}{'measured':>12}{'target':>12}{'ratio':>9}")
        print(f"  {'APSIS calls per profile':<32}{calls_per_profile:>12.4f}{'<= 0.01':>12}"
              f"{calls_per_profile / 0.01:>9.2f}  {verdict(calls_per_profile <= 0.01)}")
        print(f"  {'daemon CPU per record (us)':<32}{cpu_us:>12.1f}{'<= 50':>12}{cpu_us / 50:>9.2f}"
              f"  {verdict(cpu_us <= 50)}")
        print(f"  {'daemon peak RSS (MB)':<32}{r['peak_rss_mb']:>12.1f}{'<= 200':>12}"
              f"{r['peak_rss_mb'] / 200:>9.2f}  {verdict(r['peak_rss_mb'] <= 200)}")
        print(f"  {'wall (s) / read floor (s)':<32}{r['seconds']:>6.1f}/{r['floor_seconds']:<5.1f}{'<= 1.2x':>12}"
              f"{ratio:>9.2f}  {verdict(ratio <= 1.2)}")
    if len(results) > 1:
        rss = [r["peak_rss_mb"] for r in results]
        spread = (max(rss) - min(rss)) / min(rss)
        print(f"\npeak RSS across sizes: {', '.join(f'{x:.0f}' for x in rss)} MB; spread {spread:.1%} "
              f"(target within 10 %): {verdict(spread <= 0.10)}")


if __name__ == "__main__":
    main()
