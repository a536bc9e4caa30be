"""Issue 11, item 4: dead letters handled. ``dead-letters NAME`` lists them with their error and first/last
attempt; ``requeue`` puts them back at the end of the real-time queue; ``drop`` removes them, logged with the
caller's uid; ``status`` shows their count and the oldest."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import structlog
import trio

from crmsync.clock import WallClock
from crmsync.daemon.control import ControlClient, ControlServer, open_unix_listener
from crmsync.state import Database
from crmsync.state import queries as q
from tests.conftest import fake_config, start_supervisor
from tests.fake_kind import world


async def test_list_requeue_and_drop_dead_letters_over_the_socket(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, db: Database, sim_clock: WallClock
) -> None:
    config = fake_config(tmp_path, {"a": {}})
    w = world("a")
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, sim_clock)

        async def reload() -> dict[str, Any]:
            return {}

        path = tmp_path / "ctl.sock"
        nursery.start_soon(ControlServer(supervisor, 300, reload).serve, await open_unix_listener(path))
        await supervisor.activate("a")
        body = json.dumps([{"id": "poison1", "version": 1}, {"id": "poison2", "version": 1},
                           {"id": "r1", "version": 1}]).encode()
        await supervisor.accept_webhook("a", {}, body)
        await trio.sleep(3600)
        async with ControlClient(path) as c:
            assert "dead_letters" in (await c.call("hello"))["result"]["commands"]
            listed = (await c.call("dead_letters", integration="a"))["result"]
            assert listed["total"] == 2 and [d["payload"]["id"] for d in listed["dead_letters"]] == [
                "poison1", "poison2"]
            first = listed["dead_letters"][0]
            assert "cannot handle poison1" in first["error"]
            assert first["first_attempt_at"] and first["last_attempt_at"]
            assert first["first_attempt_at"] < first["last_attempt_at"]  # five attempts, with backoff between
            status = (await c.call("status", integration="a"))["result"]
            assert status["dead_letters"] == 2 and status["dead_letters_oldest"] == first["received_at"]
            # requeue one: it goes to the end of the queue (after an event that arrived later)
            await c.call("pause", integration="a")
            await supervisor.accept_webhook("a", {}, json.dumps([{"id": "r2", "version": 1}]).encode())
            moved = (await c.call("requeue", integration="a", ids=[first["id"]]))["result"]
            assert moved["requeued"][0]["new_id"] > first["id"]
            pending = [e.payload["id"] for e in await db.tx(q.peek_pending, "a", 10)]
            assert pending == ["r2", "poison1"]
            assert (await c.call("requeue", integration="a", ids=[999]))["error"]["code"] == "unknown_dead_letter"
            assert (await c.call("drop", integration="a"))["error"]["code"] == "bad_request"
            with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
                dropped = (await c.call("drop", integration="a", ids=[listed["dead_letters"][1]["id"]]))["result"]
            assert dropped["dropped"] == [listed["dead_letters"][1]["id"]]
            drop_logs = [e for e in logs if e["event"] == "dead_letter_dropped"]
            assert drop_logs and drop_logs[0]["peer_uid"] == os.getuid()
            # a replay of the dropped webhook is not queued again
            assert (await supervisor.accept_webhook(
                "a", {}, json.dumps([{"id": "poison2", "version": 1}]).encode())).accepted == 0
            await c.call("resume", integration="a")
        await trio.sleep(3600)
        async with ControlClient(path) as c:
            after = (await c.call("dead_letters", integration="a"))["result"]
            assert [d["payload"]["id"] for d in after["dead_letters"]] == ["poison1"]  # failed again, set aside
        nursery.cancel_scope.cancel()
    assert [rid for via, rid, _ in w.dest.log if via == "realtime"] == ["r1", "r2"]
