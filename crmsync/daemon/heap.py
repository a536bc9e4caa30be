"""The daemon process's garbage collector: what lives as long as the process is left out of its scans.

CPython's full collections traverse every tracked object. A started daemon holds a few hundred thousand that
live as long as the process (modules, functions, classes, library metadata, the config). Measured:

* a bulk full sync allocates enough short-lived containers to trigger several full collections: on the
  10k-contact benchmark they were about a tenth of the sync's CPU;
* under webhook load (bench/webhooks.py --trace) each full collection was a 60-100 ms pause, a few times a
  minute, landing on every request in flight (the p99).

:func:`freeze_startup_heap` moves what is alive once the daemon is set up into the collector's permanent
generation (``gc.freeze``), so later collections skip it, and widens the young generation so that a request's
or a page's objects die before the collector sees them instead of being promoted while they wait.

The cost: an object frozen here that later becomes cyclic garbage is never freed (reference counting still
frees the rest). What is alive at startup is meant to stay; a config reload leaves at most one old config.
"""

from __future__ import annotations

import gc

#: allocations before a young collection (Python's default is 700). Measured: 50,000 with older thresholds of
#: (20, 100) kept cyclic garbage so long that a 100k-contact bulk sync peaked at 114 MB instead of 81 MB, for no
#: gain in CPU or webhook latency over 10,000 with Python's older thresholds.
GC_YOUNG_THRESHOLD = 10_000
#: young collections before a middle one, middle ones before a full one (Python's defaults)
GC_OLDER_THRESHOLDS = (10, 10)


def freeze_startup_heap() -> None:
    """Call once per daemon process, after imports and the config, before the work starts (``crmsync run``
    does, through ``Daemon(settle_gc=True)``; tests sharing a process do not)."""
    gc.collect()  # garbage of the startup itself is freed, not frozen
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *GC_OLDER_THRESHOLDS)


__all__ = ["GC_OLDER_THRESHOLDS", "GC_YOUNG_THRESHOLD", "freeze_startup_heap"]
