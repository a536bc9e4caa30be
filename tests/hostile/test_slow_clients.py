"""Issue 9 items 4 and 8: slow clients are cut off after a bound, and the daemon caps its own concurrent HTTP
connections and control clients. Real sockets, one trio run; hang guards only fail a test, never time it."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from crmsync.daemon.control import ControlClient, ControlServer, open_unix_listener
from crmsync.daemon.http import HttpApp, serve_http
from tests.conftest import fake_config, start_supervisor

HANG_GUARD = 60  # seconds: a broken bound fails the test here instead of hanging CI


async def _http(nursery: trio.Nursery, tmp_path: Path, db: Any, clock: Any, **limits: Any) -> tuple[str, int]:
    (tmp_path / "s").write_text("hook-secret-123")
    config = fake_config(tmp_path, {"hooked": {"webhook": {"header": "X-Sig", "secret_file": str(tmp_path / "s")}}})
    supervisor = await start_supervisor(nursery, config, db, clock)
    app = HttpApp(supervisor, supervisor.metrics, max_body=4096, request_timeout=limits.pop("request_timeout", 30))
    url = await nursery.start(partial(serve_http, app, "127.0.0.1:0", 1.0, trio.Event(), **limits))
    host, _, port = url.removeprefix("http://").rpartition(":")
    return host, int(port)


async def test_trickled_webhook_body_is_cut_off_by_the_whole_request_bound(tmp_path: Path, db: Any,
                                                                           sim_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        host, port = await _http(nursery, tmp_path, db, sim_clock, request_timeout=1.0)
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(b"POST /webhooks/hooked HTTP/1.1\r\nHost: t\r\nContent-Length: 400\r\n"
                              b"X-Sig: 00\r\n\r\n")
        answer = b""
        sent = 0
        with trio.fail_after(HANG_GUARD):
            while sent < 400 and b"\r\n\r\n" not in answer:
                try:
                    await stream.send_all(b" ")  # one byte per 0.1 s: every read is well inside read_timeout
                    sent += 1
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                with trio.move_on_after(0.1):
                    answer += await stream.receive_some(4096)
            with trio.move_on_after(5):
                while b"\r\n\r\n" not in answer and (chunk := await stream.receive_some(4096)):
                    answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        assert sent < 400  # cut off before the body was complete
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_trickled_headers_are_cut_off_too(tmp_path: Path, db: Any, sim_clock: Any) -> None:
    """Headers are bounded by Hypercorn's keep-alive timer (5 s), which runs until they are complete."""
    async with trio.open_nursery() as nursery:
        host, port = await _http(nursery, tmp_path, db, sim_clock)
        stream = await trio.open_tcp_stream(host, port)
        await stream.send_all(b"POST /webhooks/hooked HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        sent, closed = 0, False
        with trio.fail_after(HANG_GUARD):
            while sent < 200 and not closed:  # one byte per 0.2 s: 40 s if never cut off
                try:
                    await stream.send_all(b"a")
                    sent += 1
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                with trio.move_on_after(0.2):
                    closed = await stream.receive_some(4096) == b""
        assert sent < 200
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_http_connections_are_capped(tmp_path: Path, db: Any, sim_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        host, port = await _http(nursery, tmp_path, db, sim_clock, max_connections=2)
        idle = [await trio.open_tcp_stream(host, port) for _ in range(2)]
        third = await trio.open_tcp_stream(host, port)
        await third.send_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        events: list[str] = []

        async def read_third() -> None:
            await third.receive_some(4096)
            events.append("answered")

        with trio.fail_after(HANG_GUARD):
            async with trio.open_nursery() as inner:
                inner.start_soon(read_third)
                await trio.testing.wait_all_tasks_blocked(cushion=0.3)
                events.append("slot freed")
                await idle[0].aclose()
        # served only once a slot was free (Hypercorn lets a closed connection go within its keep-alive timer)
        assert events == ["slot freed", "answered"]
        await idle[1].aclose()
        await third.aclose()
        nursery.cancel_scope.cancel()


async def _control(nursery: trio.Nursery, tmp_path: Path, db: Any, clock: Any, **limits: Any) -> Path:
    supervisor = await start_supervisor(nursery, fake_config(tmp_path, {"a": {}}), db, clock)

    async def reload() -> dict[str, Any]:
        return {}

    server = ControlServer(supervisor, idle_timeout=300, reload_config=reload, **limits)
    path = tmp_path / "ctl.sock"
    nursery.start_soon(server.serve, await open_unix_listener(path))
    return path


async def test_control_client_that_never_reads_replies_is_disconnected(tmp_path: Path, db: Any,
                                                                       sim_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        path = await _control(nursery, tmp_path, db, sim_clock, send_timeout=0.5)
        stream = await trio.open_unix_socket(str(path))
        requests = b'{"id": 1, "cmd": "status", "args": {}}\n' * 2000
        with trio.fail_after(HANG_GUARD), pytest.raises((trio.BrokenResourceError, trio.ClosedResourceError)):
            while True:  # pipelines forever and never reads: the daemon must hang up
                await stream.send_all(requests)
        await stream.aclose()
        async with ControlClient(path) as client:  # others are still served
            assert (await client.call("hello"))["ok"]
        nursery.cancel_scope.cancel()


async def test_control_clients_are_capped_with_a_clear_error(tmp_path: Path, db: Any, sim_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        path = await _control(nursery, tmp_path, db, sim_clock, max_clients=2)
        first, second = ControlClient(path), ControlClient(path)
        await first.__aenter__()
        await second.__aenter__()
        assert (await first.call("hello"))["ok"] and (await second.call("hello"))["ok"]
        async with ControlClient(path) as third:
            reply = await third.read_reply()
            assert reply["ok"] is False and reply["error"]["code"] == "too_many_clients"
        await first.__aexit__()
        with trio.fail_after(HANG_GUARD):
            while True:  # the slot frees once the daemon has seen the close
                async with ControlClient(path) as fourth:
                    reply = await fourth.call("hello")
                if reply["ok"]:
                    break
                await trio.sleep(0.01)
        await second.__aexit__()
        nursery.cancel_scope.cancel()
