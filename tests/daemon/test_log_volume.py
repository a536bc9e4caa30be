"""Issue 10, item 11: per-record events are debug, summaries info. At info, the number of lines a run writes
does not grow with the number of records; at debug, there is a line per record."""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from pathlib import Path

import pytest
import structlog
import trio
import trio.testing

from crmsync.connectors.everyaction import OptInStatus
from crmsync.daemon.logging import configure_logging
from tests.integrations.everyaction_mobilecommons.harness import NAME, make_config, make_world

PEOPLE = 12


async def _events_of_a_run(tmp_path: Path, level: str) -> Counter[str]:
    world = await make_world(tmp_path)
    for i in range(PEOPLE):
        world.ea.add_person(f"P{i}", "Lee", email=f"p{i}@example.org", phone=f"31255501{i:02d}",
                            phone_opt_in=OptInStatus.OPT_IN, address_line1="1 Main St", city="Chicago",
                            state="IL", zip="60601")
    out = io.StringIO()
    configure_logging(level, stream=out)
    try:
        async with trio.open_nursery() as nursery:
            sup = await world.start(nursery, make_config(tmp_path, world.path_id))
            await sup.activate(NAME)
            report = await world.run("ea_to_mc")
            assert report["counts"]["created"] == PEOPLE, report["counts"]
            nursery.cancel_scope.cancel()
    finally:
        logging.getLogger().handlers[:] = []
        structlog.reset_defaults()
        await world.db.aclose()
    return Counter(json.loads(line)["event"] for line in out.getvalue().splitlines())


@pytest.mark.parametrize("level", ["info", "debug"])
async def test_per_record_lines_only_at_debug(autojump_clock: trio.testing.MockClock, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, level: str) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    events = await _events_of_a_run(tmp_path, level)
    per_record = {name: n for name, n in events.items() if n >= PEOPLE}
    if level == "info":
        assert not per_record, f"one info line per record: {per_record}"
        assert events["run_finished"] >= 1  # the summary is there
    else:
        assert per_record, events  # the detail exists, at debug
