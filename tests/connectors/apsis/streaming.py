"""An httpx transport that runs an ASGI app in a task and passes the response body on chunk by chunk.

httpx's own ``ASGITransport`` collects the whole body before returning, which hides whether a client
streams. Here the app's ``send`` blocks until the client has taken the previous chunk (an unbuffered
channel), so a test can observe how far the server got when the client produced its first result.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import httpx
import trio

from crmsync.connectors.simkit import ASGIApp


class _ChannelStream(httpx.AsyncByteStream):
    def __init__(self, channel: trio.MemoryReceiveChannel[bytes]):
        self._channel = channel

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._channel:
            yield chunk

    async def aclose(self) -> None:
        await self._channel.aclose()


class StreamingASGITransport(httpx.AsyncBaseTransport):
    def __init__(self, app: ASGIApp, nursery: trio.Nursery):
        self.app = app
        self.nursery = nursery

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = b"".join([part async for part in request.stream])  # type: ignore[union-attr]
        scope: dict[str, Any] = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
            "headers": [(k.lower(), v) for k, v in request.headers.raw], "scheme": request.url.scheme,
            "path": unquote(request.url.path), "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query, "server": (request.url.host, request.url.port),
            "client": ("127.0.0.1", 1234), "root_path": "",
        }
        send_chunk, receive_chunk = trio.open_memory_channel[bytes](0)
        started = trio.Event()
        start: dict[str, Any] = {}
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                started.set()
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    await send_chunk.send(message["body"])
                if not message.get("more_body", False):
                    await send_chunk.aclose()

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client closed the response early
            finally:
                send_chunk.close()
                started.set()

        self.nursery.start_soon(run)
        await started.wait()
        if not start:
            raise httpx.RemoteProtocolError("the app sent no response")
        return httpx.Response(start["status"], headers=start.get("headers", []),
                              stream=_ChannelStream(receive_chunk))
