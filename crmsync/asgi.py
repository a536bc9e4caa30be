"""ASGI plumbing shared by the daemon's HTTP app and the simulators: the lifespan handshake and a body reader
that enforces a size cap. Hypercorn has no body cap of its own for ASGI apps, so whoever reads must count
(chunked bodies carry no Content-Length)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class BodyTooLarge(Exception):
    """The request body went past the cap while it was being read."""


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer the server's startup and shutdown messages (nothing to set up or tear down)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, counting bytes as they arrive; :class:`BodyTooLarge` past ``limit``."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body.extend(message.get("body", b""))
        if len(body) > limit:
            raise BodyTooLarge()
        if not message.get("more_body", False):
            break
    return bytes(body)
