"""The daemon's per-connection HTTP server (LeanTCPServer, KeepAliveTimer): Hypercorn's protocol behaviour with
less work per request. Real sockets where the behaviour is about connections; hang guards only fail a test."""

from __future__ import annotations

from functools import partial
from typing import Any

import trio
from hypercorn.events import RawData
from hypercorn.trio.worker_context import WorkerContext

from crmsync.daemon.http import LeanTCPServer, hypercorn_config, serve_http

HANG_GUARD = 60


async def _echo_length_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = str(len(body)).encode()
    await send({"type": "http.response.start", "status": 202,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})


async def _serve(nursery: trio.Nursery) -> tuple[str, int]:
    url = await nursery.start(partial(serve_http, _echo_length_app, "127.0.0.1:0", 1.0, trio.Event()))
    host, _, port = url.removeprefix("http://").rpartition(":")
    return host, int(port)


async def _read_response(stream: trio.SocketStream, buf: bytes) -> tuple[bytes, bytes]:
    while b"\r\n\r\n" not in buf:
        chunk = await stream.receive_some(4096)
        assert chunk, "the server closed the connection"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(rest) < length:
        rest += await stream.receive_some(4096)
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


class _RecordingStream:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send_all(self, data: bytes) -> None:
        self.sent.append(bytes(data))


async def test_a_response_head_and_body_leave_in_one_send() -> None:
    stream = _RecordingStream()
    server = LeanTCPServer(None, hypercorn_config("127.0.0.1:0", 1.0), WorkerContext(None), {}, stream)  # type: ignore[arg-type]
    head = b"HTTP/1.1 202 \r\ncontent-length: 14\r\n\r\n"
    await server.protocol_send(RawData(data=head))
    assert stream.sent == []  # held for its body
    await server.protocol_send(RawData(data=b'{"accepted":1}'))
    await server.protocol_send(RawData(data=b""))  # h11's end of a Content-Length body: nothing to send
    assert stream.sent == [head + b'{"accepted":1}']


async def test_a_bodyless_response_goes_out_at_its_end_and_an_interim_one_at_once() -> None:
    stream = _RecordingStream()
    server = LeanTCPServer(None, hypercorn_config("127.0.0.1:0", 1.0), WorkerContext(None), {}, stream)  # type: ignore[arg-type]
    await server.protocol_send(RawData(data=b"HTTP/1.1 100 \r\n\r\n"))
    assert stream.sent == [b"HTTP/1.1 100 \r\n\r\n"]  # the client waits for it before sending its body
    await server.protocol_send(RawData(data=b"HTTP/1.1 204 \r\n\r\n"))
    await server.protocol_send(RawData(data=b""))
    assert stream.sent[1:] == [b"HTTP/1.1 204 \r\n\r\n"]


async def test_expect_100_continue_is_answered_before_the_body_is_sent() -> None:
    async with trio.open_nursery() as nursery:
        host, port = await _serve(nursery)
        stream = await trio.open_tcp_stream(host, port)
        with trio.fail_after(HANG_GUARD):
            await stream.send_all(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            interim = await stream.receive_some(4096)
            assert interim.startswith(b"HTTP/1.1 100"), interim
            await stream.send_all(b"hello")
            response, _ = await _read_response(stream, b"")
        assert response.startswith(b"HTTP/1.1 202") and response.endswith(b"\r\n\r\n5")
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_keep_alive_connection_serves_requests_in_a_row_then_closes_once_idle() -> None:
    async with trio.open_nursery() as nursery:
        host, port = await _serve(nursery)
        stream = await trio.open_tcp_stream(host, port)
        rest = b""
        with trio.fail_after(HANG_GUARD):
            for i in range(20):  # each request moves the keep-alive deadline; none is cut off
                body = b"x" * i
                await stream.send_all(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (i, body))
                response, rest = await _read_response(stream, rest)
                assert response.endswith(b"\r\n\r\n" + str(i).encode())
            # then idle: the keep-alive timer (5 s) closes the connection from the server's side
            assert await stream.receive_some(4096) == b""
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_pipelined_requests_are_all_answered_in_order() -> None:
    async with trio.open_nursery() as nursery:
        host, port = await _serve(nursery)
        stream = await trio.open_tcp_stream(host, port)
        with trio.fail_after(HANG_GUARD):
            await stream.send_all(b"".join(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
                                           % (i, b"y" * i) for i in range(1, 6)))
            rest = b""
            for i in range(1, 6):
                response, rest = await _read_response(stream, rest)
                assert response.endswith(b"\r\n\r\n" + str(i).encode())
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_shutdown_closes_idle_keep_alive_connections() -> None:
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(serve_http, _echo_length_app, "127.0.0.1:0", 1.0, shutdown))
        host, _, port = url.removeprefix("http://").rpartition(":")
        stream = await trio.open_tcp_stream(host, int(port))
        with trio.fail_after(HANG_GUARD):
            await stream.send_all(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nz")
            await _read_response(stream, b"")
            shutdown.set()
            assert await stream.receive_some(4096) == b""
        await stream.aclose()
