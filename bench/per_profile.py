"""Benchmark: an efficy_apsis full sync on the per-profile path (what small syncs and real time use), against
simulators in their own process with 20 ms per call and APSIS's 100 requests/s enforced.

Prints APSIS requests/s over the sync (target >= 90 % of 100/s: the shared token bucket, not the client's
concurrency, must be the bound), the 429s the simulator answered (target 0), calls per profile and the
daemon's CPU per record. No assertions (shared, noisy machine); figures go to bench/README.md.

    .venv/bin/python bench/per_profile.py [--contacts 2000] [--latency 0.02]
"""

from __future__ import annotations

import argparse

from bench.full_sync import measure, verdict

ACCOUNT_LIMIT = 100.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.02)
    args = parser.parse_args()
    r = measure(args.contacts, args.latency, threshold=0)
    rate = r["apsis_calls"] / r["seconds"]
    print(f"efficy_apsis full sync, per-profile path, {args.contacts:,} contacts, "
          f"{args.latency * 1000:.0f} ms per call: {r['state']} ({r['status']}), {r['profiles']:,} APSIS "
          f"profiles, {r['apsis_calls']} APSIS calls in {r['seconds']:.1f} s")
    print(f"  {'figure':<32}{'measured':>12}{'target':>12}{'ratio':>9}")
    print(f"  {'APSIS requests/s':<32}{rate:>12.1f}{'>= 90':>12}{rate / 90:>9.2f}  {verdict(rate >= 90)}")
    print(f"  {'HTTP 429 answered':<32}{r['apsis_429']:>12}{'0':>12}{'':>9}  {verdict(r['apsis_429'] == 0)}")
    print(f"  {'APSIS calls per profile':<32}{r['apsis_calls'] / max(1, r['profiles']):>12.2f}")
    print(f"  {'daemon CPU per record (us)':<32}{r['cpu_seconds'] / args.contacts * 1e6:>12.1f}")


if __name__ == "__main__":
    main()
