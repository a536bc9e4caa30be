"""What every simulator shares: a minimal ASGI request/response layer, fault injection, and serving.

Simulators are product code (they serve tests, benchmarks and ``crmsync sandbox``), so they reproduce the
real APIs' quirks. This module gives them only plumbing; each simulator renders faults in its own API's
native error shape (Mobile Commons' ``success="false"`` XML in a 200, APSIS's problem+json, ...).

Faults are queued on a :class:`FaultPlan` and consumed one per matching request:

* ``status``: answer with an HTTP status (and ``Retry-After`` if given) in the API's error shape;
* ``slow``: sleep ``delay`` seconds before answering normally;
* ``drop``: break the connection (raises :class:`SimulatedDisconnect`, which httpx's ASGI transport passes to
  the client as a transport error, and which Hypercorn turns into a closed connection);
* ``malformed``: answer 200 with a truncated, unparseable body.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, cast
from urllib.parse import parse_qsl

import httpx
import trio

from crmsync.asgi import BodyTooLarge, Receive, Scope, Send, lifespan, read_body

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

FaultKind = Literal["status", "slow", "drop", "malformed"]


class SimulatedDisconnect(httpx.RemoteProtocolError):
    """Raised inside a simulator to drop the connection mid-request."""

    def __init__(self) -> None:
        super().__init__("simulated dropped connection")


@dataclass
class Fault:
    kind: FaultKind
    status: int = 503
    retry_after: float | None = None
    delay: float = 0.0
    path_contains: str | None = None
    method: str | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method.upper() != method.upper():
            return False
        return not (self.path_contains and self.path_contains not in path)


@dataclass
class FaultPlan:
    """A queue of faults; each request consumes the first that matches it."""

    pending: list[Fault] = field(default_factory=list)
    injected: int = 0

    def add(self, fault: Fault, times: int = 1) -> None:
        self.pending.extend(Fault(**fault.__dict__) for _ in range(times))

    def fail(self, status: int = 503, times: int = 1, *, retry_after: float | None = None,
             path_contains: str | None = None, method: str | None = None) -> None:
        self.add(Fault("status", status=status, retry_after=retry_after, path_contains=path_contains,
                       method=method), times)

    def slow(self, delay: float, times: int = 1, *, path_contains: str | None = None) -> None:
        self.add(Fault("slow", delay=delay, path_contains=path_contains), times)

    def drop(self, times: int = 1, *, path_contains: str | None = None) -> None:
        self.add(Fault("drop", path_contains=path_contains), times)

    def malformed(self, times: int = 1, *, path_contains: str | None = None) -> None:
        self.add(Fault("malformed", path_contains=path_contains), times)

    def clear(self) -> None:
        self.pending.clear()

    def take(self, method: str, path: str) -> Fault | None:
        for i, fault in enumerate(self.pending):
            if fault.matches(method, path):
                self.injected += 1
                return self.pending.pop(i)
        return None


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    query_list: list[tuple[str, str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    raw_path: str = ""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.text, keep_blank_values=True))

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: Iterable[tuple[str, str]] = (),
             content_type: str = "application/json") -> Response:
        return cls(status, json.dumps(data).encode(), [("content-type", content_type), *headers])

    @classmethod
    def text(cls, text: str, status: int = 200, content_type: str = "text/plain; charset=utf-8",
             headers: Iterable[tuple[str, str]] = ()) -> Response:
        return cls(status, text.encode(), [("content-type", content_type), *headers])

    @classmethod
    def empty(cls, status: int = 204, headers: Iterable[tuple[str, str]] = ()) -> Response:
        return cls(status, b"", list(headers))


async def read_request(scope: Scope, receive: Receive, max_body: int = 64 * 1024 * 1024) -> Request:
    body = await read_body(receive, max_body)
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    qs = scope.get("query_string", b"").decode("latin-1")
    query_list = parse_qsl(qs, keep_blank_values=True)
    return Request(
        method=scope["method"].upper(),
        path=scope["path"],
        query=dict(query_list),
        query_list=query_list,
        headers=headers,
        body=bytes(body),
        raw_path=scope["path"] + (f"?{qs}" if qs else ""),
    )


async def send_response(send: Send, response: Response) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    if not any(k.lower() == b"content-length" for k, _ in headers):
        headers.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


Handler = Callable[[Request], Awaitable[Response]]
FaultRenderer = Callable[[Fault, Request], Response]


class SimulatorApp:
    """Base ASGI app for simulators: reads the request, applies queued faults, calls :meth:`handle`.

    Subclasses implement :meth:`handle` and :meth:`render_fault` (the API's own error shape for a status).
    """

    #: a simulator whose limits count calls in flight sleeps its ``latency`` itself, inside that count
    latency_in_handle = False

    def __init__(self) -> None:
        self.faults = FaultPlan()
        self.requests: list[tuple[str, str]] = []  # (method, path) log, for tests
        #: seconds every request takes before it is answered (network and server time), so that benchmarks
        #: and the sandbox see an API with a real API's latency; requests still overlap, as on a real server
        self.latency = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            request = await read_request(scope, receive)
        except BodyTooLarge:
            await send_response(send, Response.text("request body too large", status=413))
            return
        self.requests.append((request.method, request.path))
        if self.latency > 0 and not self.latency_in_handle:
            await trio.sleep(self.latency)
        fault = self.faults.take(request.method, request.path)
        if fault is not None:
            if fault.kind == "slow":
                await trio.sleep(fault.delay)
            elif fault.kind == "drop":
                raise SimulatedDisconnect()
            elif fault.kind == "malformed":
                await send_response(send, self.render_malformed(request))
                return
            else:
                await send_response(send, self.render_fault(fault, request))
                return
        await send_response(send, await self.handle(request))

    async def handle(self, request: Request) -> Response:
        raise NotImplementedError

    def render_fault(self, fault: Fault, request: Request) -> Response:
        headers = [("retry-after", str(int(fault.retry_after)))] if fault.retry_after is not None else []
        return Response.text(f"simulated HTTP {fault.status}", status=fault.status, headers=headers)

    def render_malformed(self, request: Request) -> Response:
        return Response(200, b'{"truncated": [1, 2', [("content-type", "application/json")])


def asgi_client(app: ASGIApp, base_url: str = "http://sim.test") -> httpx.AsyncClient:
    """An httpx client wired straight to a simulator app (no sockets): what connector tests use."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=cast(Any, app)), base_url=base_url)


async def serve_app(app: ASGIApp, host: str = "127.0.0.1", port: int = 0, *,
                    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve an ASGI app with Hypercorn on loopback; ``task_status.started`` gets its base URL."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0

    async def _serve(*, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        await serve(app, config, task_status=task_status)  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(_serve)
        task_status.started(binds[0])
