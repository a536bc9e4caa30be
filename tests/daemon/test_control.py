"""The control protocol: NDJSON replies, stable error codes, line cap, pipelining, socket mode."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import trio

from crmsync.daemon.control import MAX_LINE, ControlClient, ControlServer, open_unix_listener
from tests.conftest import fake_config, start_supervisor


async def _serve(tmp_path: Path, db: Any, sim_clock: Any, nursery: trio.Nursery) -> tuple[Path, Any]:
    config = fake_config(tmp_path, {"a": {"records": 3}})
    supervisor = await start_supervisor(nursery, config, db, sim_clock)

    async def reload() -> dict[str, Any]:
        return {"reloaded": False}

    server = ControlServer(supervisor, idle_timeout=300, reload_config=reload)
    path = tmp_path / "ctl.sock"
    listener = await open_unix_listener(path, 0o660)
    nursery.start_soon(server.serve, listener)
    return path, server


async def test_protocol_replies_and_errors(tmp_path: Path, db: Any, sim_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        path, _ = await _serve(tmp_path, db, sim_clock, nursery)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        async with ControlClient(path) as c:
            hello = await c.call("hello")
            assert hello["ok"] and hello["result"]["protocol"] == 1
            assert (await c.call("activate"))["error"]["code"] == "bad_request"
            assert (await c.call("activate", integration="zzz"))["error"]["code"] == "unknown_integration"
            assert (await c.call("full_sync", integration="a"))["error"]["code"] == "not_active"
            assert (await c.call("activate", integration="a"))["ok"]
            assert (await c.call("run_flow", integration="a", flow="nope"))["error"]["code"] == "unknown_flow"
            done = await c.call("run_flow", integration="a", flow="once", wait=True)
            assert done["ok"] and done["result"]["run"]["status"] == "success"
            runs = (await c.call("runs", integration="a"))["result"]["runs"]
            assert {"id", "flow", "status", "started_at", "finished_at"} <= set(runs[0])
            report = (await c.call("report", integration="a"))["result"]
            assert set(report["counts"]) == {"fetched", "created", "updated", "unchanged", "rejected", "skipped"}
            assert (await c.call("report", integration="a", run_id="x"))["error"]["code"] == "bad_request"
            assert (await c.call("cancel", integration="a"))["error"]["code"] == "not_running"
            assert (await c.call("status", name="a"))["result"]["name"] == "a"  # alias of "integration"
            assert (await c.call("report", name="a", run=report["run"]["id"]))["ok"]
            status = (await c.call("status", integration="a"))["result"]
            assert status["name"] == "a" and status["kind"] == "fake" and status["active"] is True
        nursery.cancel_scope.cancel()


async def test_garbage_and_pipelining(tmp_path: Path, db: Any, sim_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        path, _ = await _serve(tmp_path, db, sim_clock, nursery)
        stream = await trio.open_unix_socket(str(path))
        await stream.send_all(b'\xff\xfe garbage\n"a string"\n{"id": 1, "cmd": 5}\n{"id": 2, "cmd": "hello", '
                              b'"args": []}\n{"id": 3, "cmd": "hello"}\n{"id": 4, "cmd": "status"}\n')
        buf = b""
        while buf.count(b"\n") < 6:
            buf += await stream.receive_some(65536)
        replies = [json.loads(line) for line in buf.splitlines()]
        assert [r["ok"] for r in replies] == [False, False, False, False, True, True]
        assert [r.get("error", {}).get("code") for r in replies[:4]] == [
            "bad_json", "bad_request", "bad_request", "bad_request"]
        assert [r["id"] for r in replies[4:]] == [3, 4]  # answered in order
        # an over-long line: an error reply and the connection closes; the server keeps serving others
        await stream.send_all(b"x" * (MAX_LINE + 10))
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            buf += chunk
        assert json.loads(buf)["error"]["code"] == "line_too_long"
        await stream.aclose()
        async with ControlClient(path) as c:
            assert (await c.call("hello"))["ok"]
        nursery.cancel_scope.cancel()


async def test_idle_connections_are_closed(autojump_clock: Any, tmp_path: Path, db: Any, sim_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        path, server = await _serve(tmp_path, db, sim_clock, nursery)
        server.idle_timeout = 30
        stream = await trio.open_unix_socket(str(path))
        data = await stream.receive_some(65536)
        assert json.loads(data)["error"]["code"] == "idle_timeout"
        assert await stream.receive_some(65536) == b""
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_stale_socket_is_replaced_but_a_file_is_not(tmp_path: Path) -> None:
    path = tmp_path / "x.sock"
    listener = await open_unix_listener(path)
    await listener.aclose()
    listener = await open_unix_listener(path)  # stale socket left behind: replaced
    await listener.aclose()
    regular = tmp_path / "file"
    regular.write_text("keep me")
    try:
        await open_unix_listener(regular)
    except OSError:
        pass
    else:
        raise AssertionError("bound over a regular file")
    assert regular.read_text() == "keep me"
