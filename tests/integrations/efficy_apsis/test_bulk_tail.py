"""Issue 8 item 1 (wall time): the last import batch of a bulk full sync is small, because its upload,
processing and acknowledgement are the one part of the sync that nothing else overlaps."""

from __future__ import annotations

from pathlib import Path

import trio

from crmsync.clock import WallClock
from crmsync.daemon.integrations.efficy_apsis.full_sync import tail_batch_rows
from tests.integrations.efficy_apsis.harness import NAME, make_config, world
from tests.integrations.efficy_apsis.test_full_sync import assert_exact


def test_what_is_left_once_it_fits_one_batch_is_halved_into_the_tail_batches() -> None:
    sizes, before, tapered, total = [], 0, 0, 10_000
    while before < total:
        rows = tail_batch_rows(50_000, 3, total, before, tapered)
        take = min(rows, total - before)
        sizes.append(take)
        before += take
        tapered += rows < 50_000
    assert sizes == [5_000, 2_500, 2_500]
    assert tail_batch_rows(50_000, 3, 1_000_000, 0, 0) == 50_000  # far from the end: full batches
    assert tail_batch_rows(50_000, 3, 120_000, 70_000, 0) == 25_000
    assert tail_batch_rows(50_000, 1, 10_000, 0, 0) == 50_000  # 1: no tail split
    assert tail_batch_rows(50_000, 3, None, 0, 0) == 50_000  # no total (a resumed sync): full batches


async def test_a_bulk_sync_smaller_than_one_batch_ends_with_its_smallest_batch(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    config = make_config(tmp_path, full_sync={"import_threshold": 1, "import_rows": 1000, "page_size": 5})
    async with world(tmp_path, clock, contacts=80, config=config) as w:
        await w.supervisor.full_sync(NAME)
        fs = await w.wait_full_sync()
        assert fs["state"] == "completed" and fs["done"] == 80
        await assert_exact(w)
        # one opt-in file per batch (every batch here has rows to write), in the order the batches closed
        batches = [imp.rows_imported for imp in w.apsis._imports.values()
                   if imp.spec["consent_mappings"][0]["consents"][0]["type"] == "opt-in"]
    assert len(batches) == 3, batches  # 80 contacts fit one batch of 1000: halves, the last takes the rest
    assert batches[-1] < batches[1] < batches[0]
