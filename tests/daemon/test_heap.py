"""``crmsync run`` takes what is alive once it is set up out of the collector's scans, after freeing the
garbage of its startup (which would otherwise never be freed)."""

from __future__ import annotations

import gc
import weakref

from crmsync.daemon.heap import freeze_startup_heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_startup_garbage_is_freed_and_the_rest_frozen() -> None:
    garbage = _Node()
    gone = weakref.ref(garbage)
    del garbage
    kept = [_Node()]
    before = gc.get_threshold()
    try:
        freeze_startup_heap()
        assert gone() is None
        assert gc.get_freeze_count() > 0
        assert not any(obj is kept for obj in gc.get_objects())  # frozen: no longer in a scanned generation
    finally:
        gc.unfreeze()  # the test process goes on allocating
        gc.set_threshold(*before)
    assert gc.get_freeze_count() == 0
