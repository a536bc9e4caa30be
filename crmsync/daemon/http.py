"""The HTTP side: ``POST /webhooks/{integration}``, ``GET /metrics``, ``GET /healthz``, served by Hypercorn's
trio worker.

Webhook rules: unknown integration 404; no or wrong signature 401; body over the cap 413 (checked on
Content-Length first, then counted while reading, since chunked bodies have no length); a body the kind
cannot parse 400 with nothing stored; 202 only after the events are committed to the store (group commit:
:mod:`crmsync.daemon.intake`), 503 when that commit failed (nothing stored); 200 with a note for a replay of a
body already accepted within the replay window (nothing stored). Hypercorn has no body cap of its own for ASGI
apps, hence the counting here.

Slow clients: Hypercorn's ``read_timeout`` restarts on every read, so a body trickled a byte at a time would
hold its connection forever; the whole body must arrive within ``http.request_timeout`` (else 408 and the
connection closes). Headers are bounded by Hypercorn's keep-alive timer, which runs until a request's headers
are complete. At most ``http.max_connections`` connections are served at once per listener; more wait in the
kernel's backlog until one closes (:class:`ConnectionSlots`).
"""

from __future__ import annotations

import json
import logging
from functools import partial
from math import inf
from typing import Any

import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Event as ServerEvent
from hypercorn.events import RawData
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

from crmsync.asgi import BodyTooLarge, Receive, Scope, Send, lifespan, read_body
from crmsync.daemon.intake import IntakeFailed
from crmsync.daemon.integrations.base import WebhookRejected
from crmsync.daemon.metrics import CONTENT_TYPE, Metrics
from crmsync.daemon.supervisor import CommandError, Supervisor
from crmsync.daemon.webhook_auth import verify
from crmsync.redaction import redact

log = structlog.get_logger("crmsync.daemon.http")

REPLAY_NOTE = "this signed body was already accepted within the replay window; nothing new was queued"



class HttpApp:
    """ASGI app. ``serve_webhooks``/``serve_metrics`` pick which routes this listener answers."""

    def __init__(self, supervisor: Supervisor, metrics: Metrics, max_body: int, *,
                 serve_webhooks: bool = True, serve_metrics: bool = True, request_timeout: float = 30.0):
        self.supervisor = supervisor
        self.metrics = metrics
        self.max_body = max_body
        self.request_timeout = request_timeout
        self.serve_webhooks = serve_webhooks
        self.serve_metrics = serve_metrics
        self.accepting = True
        self._webhook_counters: dict[tuple[str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if self.serve_metrics and path == "/metrics":
            if method not in ("GET", "HEAD"):
                return await _respond(send, 405, {"error": "method not allowed"})
            await self.supervisor.refresh_metrics()  # store-derived gauges, exact at each scrape
            return await _respond_raw(send, 200, self.metrics.render(), CONTENT_TYPE)
        if self.serve_metrics and path == "/healthz":
            return await _respond(send, 200, {"status": "ok", "integrations_running": len(self.supervisor.runtimes)})
        if self.serve_webhooks and path.startswith("/webhooks/"):
            if method != "POST":
                return await _respond(send, 405, {"error": "use POST"})
            return await self._webhook(path[len("/webhooks/"):], scope, receive, send)
        return await _respond(send, 404, {"error": "not found"})

    async def _webhook(self, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        status = await self._webhook_status(name, scope, receive, send)
        label = name if name in self.supervisor.kinds else "_unknown"
        counter = self._webhook_counters.get((label, status))
        if counter is None:  # prometheus' labels() takes a lock and builds its key each call: once per pair
            counter = self._webhook_counters[(label, status)] = self.metrics.webhooks.labels(label, str(status))
        counter.inc()

    async def _webhook_status(self, name: str, scope: Scope, receive: Receive, send: Send) -> int:
        kind = self.supervisor.kinds.get(name)
        if kind is None or not kind.supports_webhooks or kind.config.webhook is None:
            await _respond(send, 404, {"error": f"no webhook endpoint for {name!r}"})
            return 404
        if not self.accepting:
            await _respond(send, 503, {"error": "shutting down"}, [(b"retry-after", b"30")])
            return 503
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _respond(send, 413, {"error": f"body larger than {self.max_body} bytes"})
            return 413
        try:
            # the whole body within the bound, however it is trickled (read_timeout restarts per read)
            with trio.move_on_after(self.request_timeout) as slow:
                body = await read_body(receive, self.max_body)
        except BodyTooLarge:
            await _respond(send, 413, {"error": f"body larger than {self.max_body} bytes"})
            return 413
        if slow.cancelled_caught:
            log.warning("webhook_request_timeout", integration=name, timeout_s=self.request_timeout)
            await _respond(send, 408, {"error": f"request not received within {self.request_timeout:g}s"},
                           [(b"connection", b"close")])
            return 408
        if not verify(kind.config.webhook, headers, body):
            log.warning("webhook_unauthenticated", integration=name, header=kind.config.webhook.header)
            await _respond(send, 401, {"error": "missing or invalid signature"})
            return 401
        try:
            result = await self.supervisor.accept_webhook(name, headers, body)
        except WebhookRejected as exc:
            reason = redact(str(exc))  # it may quote the body
            log.warning("webhook_rejected", integration=name, reason=reason)
            await _respond(send, 400, {"error": reason})
            return 400
        except CommandError as exc:
            await _respond(send, 404, {"error": exc.message})
            return 404
        except IntakeFailed as exc:  # its batch did not commit: nothing stored, the sender retries
            log.error("webhook_not_stored", integration=name, error=str(exc))
            await _respond(send, 503, {"error": "not stored, retry later"}, [(b"retry-after", b"5")])
            return 503
        if result.replay:  # a 2xx, so that the sender does not retry a duplicate
            await _respond(send, 200, {"accepted": 0, "replay": True, "note": REPLAY_NOTE})
            return 200
        await _respond_raw(send, 202, _accepted_body(result.accepted), "application/json")
        return 202


_ACCEPTED_BODIES = {n: json.dumps({"accepted": n}).encode() for n in range(65)}


def _accepted_body(n: int) -> bytes:
    """The 202 answer's body, made once for the usual counts (it is the same bytes every time)."""
    body = _ACCEPTED_BODIES.get(n)
    return body if body is not None else json.dumps({"accepted": n}).encode()


async def _respond(send: Send, status: int, payload: Any, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await _respond_raw(send, status, json.dumps(payload).encode(), "application/json", extra)


async def _respond_raw(send: Send, status: int, body: bytes, content_type: str,
                       extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
               *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def hypercorn_config(bind: str, graceful_timeout: float) -> HypercornConfig:
    cfg = HypercornConfig()
    cfg.bind = [bind]
    cfg.graceful_timeout = graceful_timeout
    # No access log: crmsync's logging keeps "hypercorn.access" at WARNING (its lines are INFO, never shown), and
    # Hypercorn builds each line's atoms (a copy of os.environ among them) before the level check, per request.
    cfg.accesslog = None
    cfg.errorlog = logging.getLogger("hypercorn.error")
    cfg.read_timeout = 30
    cfg.keep_alive_timeout = 5
    return cfg


class KeepAliveTimer:
    """Hypercorn's keep-alive timer (closes a connection idle for ``keep_alive_timeout``, or at shutdown), as one
    long-lived task per connection whose deadline moves on each request. Hypercorn's own timer starts a new task
    (and cancels the previous one) twice per request, a measurable share of a small request's CPU. Same rules:
    armed between requests (and until a request's headers are complete), disarmed while one is served."""

    def __init__(self, server: LeanTCPServer):
        self._server = server
        self._armed = False
        self._deadline = inf
        self._waiting: trio.CancelScope | None = None
        self._rearmed = trio.Event()
        self._lifetime = trio.CancelScope()
        self._started = False

    async def restart(self, task_group: Any, action: Any) -> None:  # ``action``: Hypercorn's, replaced by _watch
        self._armed = True
        self._deadline = trio.current_time() + self._server.config.keep_alive_timeout
        if not self._started:
            self._started = True
            task_group.spawn(self._watch)
        elif self._waiting is not None:
            self._waiting.deadline = self._deadline
        self._rearmed.set()

    async def stop(self) -> None:
        self._armed = False

    def close(self) -> None:
        """The connection is over: end the timer's task."""
        self._lifetime.cancel()

    async def _watch(self) -> None:
        with self._lifetime:
            terminated = self._server.context.terminated
            while True:
                if not self._armed:
                    self._rearmed = trio.Event()
                    await self._rearmed.wait()
                    continue
                with trio.CancelScope(deadline=self._deadline) as self._waiting:
                    await terminated.wait()
                self._waiting = None
                # a request began meanwhile: wait to be re-armed (at shutdown too, as Hypercorn does)
                if self._armed and (terminated.is_set() or trio.current_time() >= self._deadline):
                    break
            with trio.CancelScope(shield=True):
                await self._server._initiate_server_close()


class LeanTCPServer(TCPServer):
    """Hypercorn's per-connection server with less work per request, same protocol behaviour:
    the keep-alive timer of :class:`KeepAliveTimer`; a response's head and body leave in one ``send_all``
    (Hypercorn sends the head, the body and h11's empty end of a Content-Length body separately, each under a
    lock and a shielded scope). A final response's head is held until the next bytes, the end of the response
    or any connection event, so nothing waits on more than the same response's next message; interim
    responses (``100 Continue``) go at once."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.idle_task = self._keep_alive = KeepAliveTimer(self)  # type: ignore[assignment]
        self._held = b""

    async def protocol_send(self, event: ServerEvent) -> None:
        if isinstance(event, RawData):
            data = event.data
            if self._held:
                data, self._held = self._held + data, b""
            elif data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 1"):
                self._held = data
                return
            if data:  # h11 ends a Content-Length body with b""
                await super().protocol_send(RawData(data=data))
            return
        if self._held:
            held, self._held = self._held, b""
            await super().protocol_send(RawData(data=held))
        await super().protocol_send(event)

    async def _read_data(self) -> None:
        try:
            await super()._read_data()
        finally:
            self._keep_alive.close()  # the peer is gone or the connection was closed: no timer needed


class ConnectionSlots(trio.abc.Listener[trio.SocketStream]):
    """A listener that accepts only while fewer than ``limit`` of its connections are open: the rest wait in
    the kernel's backlog. The handler calls :meth:`release` when its connection ends."""

    def __init__(self, inner: trio.SocketListener, limit: int):
        self.inner = inner
        self._slots = trio.Semaphore(limit)

    async def accept(self) -> trio.SocketStream:
        await self._slots.acquire()
        try:
            return await self.inner.accept()
        except BaseException:
            self._slots.release()
            raise

    def release(self) -> None:
        self._slots.release()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def serve_http(app: HttpApp, bind: str, graceful_timeout: float, shutdown: trio.Event, *,
                     max_connections: int = 100,
                     task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until ``shutdown`` is set; in-flight requests get ``graceful_timeout`` to finish.

    Hypercorn's own ``serve`` builds its listeners itself, leaving no place for a connection cap, so this runs
    its per-connection :class:`TCPServer` over :class:`ConnectionSlots` listeners (same shutdown order: stop
    accepting, tell keep-alive connections to close, give in-flight requests ``graceful_timeout``).
    """
    cfg = hypercorn_config(bind, graceful_timeout)
    sockets = cfg.create_sockets()
    listeners = []
    binds = []
    for sock in sockets.insecure_sockets:
        sock.listen(cfg.backlog)
        listeners.append(ConnectionSlots(trio.SocketListener(trio.socket.from_stdlib_socket(sock)),
                                         max_connections))
        binds.append("http://" + repr_socket_addr(sock.family, sock.getsockname()))
    wrapped = wrap_app(app, cfg.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
    context = WorkerContext(None)

    async def handle(slots: ConnectionSlots, stream: trio.SocketStream) -> None:
        try:
            await LeanTCPServer(wrapped, cfg, context, ConnectionState({}), stream)
        finally:
            slots.release()

    async with trio.open_nursery() as handlers:
        async with trio.open_nursery() as accepting:
            for listener in listeners:
                accepting.start_soon(partial(trio.serve_listeners, partial(handle, listener), [listener],
                                             handler_nursery=handlers))
            task_status.started(binds[0] if binds else bind)
            await shutdown.wait()
            accepting.cancel_scope.cancel()
        await context.terminated.set()
        handlers.cancel_scope.deadline = trio.current_time() + graceful_timeout
