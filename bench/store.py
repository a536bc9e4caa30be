"""Store throughput: one thread hop per transaction, queue enqueue/drain, batched report rows.

Usage: .venv/bin/python bench/store.py [N]   (default N = 5000)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import trio

from crmsync.state import Database, ReportRow
from crmsync.state import queries as q


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = await Database.open(Path(tmp) / "bench.db")

        t0 = time.perf_counter()
        for i in range(n):
            await db.tx(q.set_cursor, "bench", "flow", str(i), "now")
        dt = time.perf_counter() - t0
        print(f"cursor writes, 1 hop each:     {n / dt:10.0f} tx/s   ({dt / n * 1e6:7.1f} us/tx)")

        t0 = time.perf_counter()
        for _ in range(n):
            await db.tx(q.get_cursor, "bench", "flow")
        dt = time.perf_counter() - t0
        print(f"point reads, 1 hop each:       {n / dt:10.0f} tx/s   ({dt / n * 1e6:7.1f} us/tx)")

        batch = 100
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            events = [(f"k{j}", {"contact_id": j}) for j in range(i, i + batch)]
            await db.tx(q.enqueue, "bench", events, "now")
        dt = time.perf_counter() - t0
        print(f"webhook events enqueued:       {n / dt:10.0f} ev/s   (batches of {batch})")

        t0 = time.perf_counter()
        drained = 0
        while True:
            events = await db.tx(q.peek_pending, "bench", batch)
            if not events:
                break
            await db.tx(q.ack_queue, "bench", [e.seq for e in events])
            drained += len(events)
        dt = time.perf_counter() - t0
        print(f"queue drained (peek+ack):      {drained / dt:10.0f} ev/s")

        run_id = await db.tx(q.start_run, "bench", "flow", "bench", "now")
        rows = [ReportRow("created", str(i), str(i)) for i in range(500)]
        t0 = time.perf_counter()
        for _ in range(n // 500 or 1):
            await db.tx(q.add_report_rows, run_id, rows, "now")
        dt = time.perf_counter() - t0
        print(f"report rows (500 per tx):      {(n // 500 or 1) * 500 / dt:10.0f} rows/s")
        await db.aclose()


if __name__ == "__main__":
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(__doc__)
        sys.exit(0)
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
