"""Webhook intake: signed POSTs over loopback to a running daemon, each answered 202 only once its events
are committed to the durable queue. Prints requests/s and latency percentiles. Loopback only, bounded.

Usage: .venv/bin/python bench/webhooks.py [REQUESTS] [CONCURRENCY]   (defaults 2000, 20)
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

from crmsync.daemon.app import Daemon
from crmsync.daemon.config import config_from_mapping
from crmsync.daemon.logging import configure_logging
from crmsync.daemon.webhook_auth import sign
from crmsync.state import queries as q

SECRET = "bench-webhook-secret"


async def main(requests: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for name in ("key", "secret", "hook"):
            (d / name).write_text(SECRET)
        # an inactive efficy_apsis integration: the queue holds what arrives, so this measures intake only
        config = config_from_mapping({
            "daemon": {"state_dir": str(d), "control_socket": str(d / "c.sock")},
            "http": {"webhook_listen": "127.0.0.1:0"},
            "integrations": {"bench": {
                "kind": "efficy_apsis",
                "efficy": {"url": "http://127.0.0.1:9", "api_key_file": str(d / "key")},
                "apsis": {"url": "http://127.0.0.1:9", "client_id": "c", "client_secret_file": str(d / "secret")},
                "webhook": {"header": "X-Justin-Signature", "prefix": "sha256=", "secret_file": str(d / "hook")},
            }},
        })
        daemon = Daemon(config, handle_signals=False)
        latencies: list[float] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            url = f"{daemon.webhook_url}/webhooks/bench"
            limit = trio.CapacityLimiter(concurrency)

            async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as http:
                async def one(i: int) -> None:
                    body = json.dumps([{"record_id": str(10000 + i), "operation": "update"}]).encode()
                    headers = {"X-Justin-Signature": "sha256=" + sign(SECRET, body),
                               "Content-Type": "application/json"}
                    async with limit:
                        t0 = time.perf_counter()
                        r = await http.post(url, content=body, headers=headers)
                        latencies.append(time.perf_counter() - t0)
                    if r.status_code != 202:
                        raise RuntimeError(f"HTTP {r.status_code}: {r.text}")

                started = time.perf_counter()
                async with trio.open_nursery() as senders:
                    for i in range(requests):
                        senders.start_soon(one, i)
                elapsed = time.perf_counter() - started
            assert daemon.db is not None
            queued = await daemon.db.tx(q.queue_depth, "bench")
            daemon.stop()
        latencies.sort()
        pct = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000  # noqa: E731
        print(f"webhook intake: {requests} signed requests, concurrency {concurrency}, loopback")
        print(f"  {requests / elapsed:8.0f} requests/s   ({queued} events durably queued)")
        print(f"  latency ms: p50 {pct(0.50):.1f}  p90 {pct(0.90):.1f}  p99 {pct(0.99):.1f}  "
              f"mean {statistics.mean(latencies) * 1000:.1f}")


if __name__ == "__main__":
    configure_logging("error", stream=sys.stderr)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    c = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    trio.run(main, n, c)
