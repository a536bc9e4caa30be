"""Tracing for ``bench/webhooks.py --trace``: where a webhook request's tail latency comes from, measured rather
than guessed. Used in the daemon's process (``--traced-daemon``) and in the load generator's.

* :class:`GcPauses`: every garbage collection's pause, per generation (``gc.callbacks``).
* :class:`LoopSteps`: trio instrumentation, how long each task step holds the event loop (a step that runs long
  delays every other connection's work), and the loop's total busy time.
* :func:`trace_intake`: the group commit's own timings, per batch: how long the requests waited before their
  batch was taken, the commit (thread hop, transaction, fsync), and the batch's statements alone, wall time
  beside the store thread's CPU (the gap is the thread waiting, mostly for the GIL).

A summary is written as JSON when the process ends; ``bench/webhooks.py`` prints it beside the run.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any

import trio


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return {"n": len(ordered), "total_ms": round(sum(ordered) * 1e3, 1), "p50_ms": round(pct(0.5) * 1e3, 2),
            "p99_ms": round(pct(0.99) * 1e3, 2), "max_ms": round(ordered[-1] * 1e3, 2)}


class GcPauses:
    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.full_at: list[float] = []  # when each full collection started, seconds after install()
        self._started = 0.0
        self._installed = time.perf_counter()

    def install(self) -> None:
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self._started)
            if info["generation"] == 2:
                self.full_at.append(round(self._started - self._installed, 2))

    def summary(self) -> dict[str, Any]:
        return {**{f"gen{g}": _summary(v) for g, v in self.pauses.items()}, "gen2_started_at_s": self.full_at[:30]}


class LoopSteps(trio.abc.Instrument):
    """Task steps longer than ``long_s``, by task name, and the loop's busy time."""

    def __init__(self, long_s: float = 0.005):
        self.long_s = long_s
        self.busy_s = 0.0
        self.steps = 0
        self.long: dict[str, list[float]] = {}
        self._t0 = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._t0 = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        d = time.perf_counter() - self._t0
        self.busy_s += d
        self.steps += 1
        if d >= self.long_s:
            self.long.setdefault(task.name.rsplit(".", 1)[-1], []).append(d)

    def summary(self) -> dict[str, Any]:
        return {"busy_s": round(self.busy_s, 3), "task_steps": self.steps,
                f"steps_over_{self.long_s * 1e3:g}ms": {k: _summary(v) for k, v in
                                                         sorted(self.long.items(), key=lambda kv: -len(kv[1]))[:8]}}


def trace_intake(record: dict[str, list[float]]) -> None:
    """Wrap :meth:`WebhookIntake._commit` to note each batch's size, its oldest member's wait before the batch
    was taken, and the commit's duration (thread hop + transaction + fsync)."""
    from crmsync.daemon import intake

    original = intake.WebhookIntake._commit

    async def timed(self: intake.WebhookIntake, batch: list[Any]) -> None:
        t0 = trio.current_time()
        record["batch_size"].append(len(batch))
        record["waited_before_commit_s"].append(t0 - batch[0].arrived)
        # in WAL mode only a checkpoint writes the main database file: its mtime tells which commits ran one
        before = os.stat(self.db.path).st_mtime_ns
        await original(self, batch)
        took = trio.current_time() - t0
        record["commit_s"].append(took)
        if os.stat(self.db.path).st_mtime_ns != before:
            record["checkpoint_commit_s"].append(took)

    intake.WebhookIntake._commit = timed  # type: ignore[method-assign]

    original_batch = intake._commit_batch

    def timed_batch(*args: Any) -> Any:
        # in the store's thread: the batch's statements, before the COMMIT (its fsync) runs
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            return original_batch(*args)
        finally:
            record["statements_wall_s"].append(time.perf_counter() - w0)
            record["statements_cpu_s"].append(time.thread_time() - c0)

    intake._commit_batch = timed_batch  # type: ignore[assignment]


def intake_summary(record: dict[str, list[float]]) -> dict[str, Any]:
    sizes = record["batch_size"]
    return {"batches": len(sizes), "requests_per_batch": round(sum(sizes) / max(1, len(sizes)), 1),
            "oldest_wait_before_commit": _summary(record["waited_before_commit_s"]),
            "commit": _summary(record["commit_s"]),
            "commits_that_wrote_the_main_db_file (a WAL checkpoint)": _summary(record["checkpoint_commit_s"]),
            "statements_wall": _summary(record["statements_wall_s"]),
            "statements_cpu": _summary(record["statements_cpu_s"])}
