"""The daemon process's garbage collector: what lives as long as the process is left out of its scans.

CPython's full collections traverse every tracked object. A started daemon holds a few hundred thousand that
live as long as the process (modules, functions, classes, library metadata, the config), and a bulk full sync
allocates enough short-lived containers to trigger several full collections: measured on the 10k-contact
benchmark, they were about a tenth of the sync's CPU. :func:`freeze_startup_heap` moves what is alive once the
daemon is set up into the collector's permanent generation (``gc.freeze``), so later collections skip it.

The cost: an object frozen here that later becomes cyclic garbage is never freed (reference counting still
frees the rest). What is alive at startup is meant to stay; a config reload leaves at most one old config.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Call once per daemon process, after imports and the config, before the work starts."""
    gc.collect()  # garbage of the startup itself is freed, not frozen
    gc.freeze()


__all__ = ["freeze_startup_heap"]
