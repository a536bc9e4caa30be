"""The APSIS simulator's limits, auth and faults: the account's request windows (100 requests a second,
10 token requests a minute) answered with 429 problem+json, OAuth2 tokens that expire, per-call latency and
the injected faults, rendered in APSIS's error shape.

Split from :mod:`.simulator` (routes) and :mod:`.sim_state` (state) by concern.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any

import trio

from crmsync.connectors.apsis.sim_state import StreamedResponse, _Problem, problem
from crmsync.connectors.simkit import (
    Fault,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    SimulatedDisconnect,
    SimulatorApp,
    read_request,
    send_response,
)


class ApsisLimits(SimulatorApp):
    """Limits, auth and faults of :class:`~crmsync.connectors.apsis.simulator.ApsisSimulator` (its
    ``__init__`` creates the attributes declared here)."""

    client_id: str
    _client_secret: str
    token_lifetime: int
    expired_token_status: int
    token_requests_per_minute: int
    retry_after_on_429: float | None
    rate_limited: int
    token_requests: int
    tokens_issued: int
    in_flight: int
    max_in_flight: int
    report_chunks_sent: int
    report_downloads_completed: int
    _tokens: dict[str, float]
    _token_seq: Iterator[int]
    _token_window: deque[float]
    _signing_key: bytes

    # -- SimulatorApp ------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """:meth:`SimulatorApp.__call__`, plus streamed bodies (report downloads) sent chunk by chunk."""
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = await read_request(scope, receive)
        self.requests.append((request.method, request.path))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._answer(request, send)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: Request, send: Send) -> None:
        if self.latency > 0:
            await trio.sleep(self.latency)
        fault = self.faults.take(request.method, request.path)
        if fault is not None:  # as the base class applies faults
            if fault.kind == "slow":
                await trio.sleep(fault.delay)
            elif fault.kind == "drop":
                raise SimulatedDisconnect()
            else:
                await send_response(send, self.render_malformed(request) if fault.kind == "malformed"
                                    else self.render_fault(fault, request))
                return
        response = await self.handle(request)
        if not isinstance(response, StreamedResponse):
            await send_response(send, response)
            return
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        for chunk in response.chunks:
            if chunk:
                self.report_chunks_sent += 1
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self.report_downloads_completed += 1

    def render_fault(self, fault: Fault, request: Request) -> Response:
        headers = [("retry-after", str(int(fault.retry_after)))] if fault.retry_after is not None else []
        titles = {401: "Unauthorized", 403: "Forbidden", 408: "Request timeout", 409: "Conflict",
                  413: "Payload too large", 429: "Too many requests", 500: "Internal server error",
                  503: "Service unavailable"}
        return problem(fault.status, titles.get(fault.status, "Error"), "Simulated fault", headers)

    def render_malformed(self, request: Request) -> Response:
        return Response(200, b'{"items": [{"discriminator": "com.apsis1',
                        [("content-type", "application/json")])

    # -- limits and auth ---------------------------------------------------------------------------------

    def _throttle(self, window: deque[float], now: float, span: float, limit: int, detail: str) -> None:
        while window and window[0] <= now - span:
            window.popleft()
        if len(window) >= limit:
            self.rate_limited += 1
            headers = ([("retry-after", str(int(self.retry_after_on_429)))]
                       if self.retry_after_on_429 is not None else [])
            raise _Problem(429, "Too many requests", detail, headers)
        window.append(now)

    def _token(self, request: Request, now: float) -> Response:
        self.token_requests += 1
        self._throttle(self._token_window, now, 60.0, self.token_requests_per_minute,
                       "Token endpoint allows 10 requests per minute")
        try:
            body = request.json()
        except ValueError:
            raise _Problem(400, "Bad request", "Body must be JSON") from None
        if not isinstance(body, dict) or body.get("grant_type") != "client_credentials":
            raise _Problem(400, "Bad request", "grant_type must be client_credentials")
        secret_ok = hmac.compare_digest(str(body.get("client_secret", "")).encode(),
                                        self._client_secret.encode())
        if body.get("client_id") != self.client_id or not secret_ok:
            raise _Problem(401, "Unauthorized", "Invalid client credentials")
        exp = int(now) + self.token_lifetime
        token = self._make_jwt({"sub": self.client_id, "iat": int(now), "exp": exp,
                                "jti": next(self._token_seq)})
        self._tokens[token] = float(exp)
        self.tokens_issued += 1
        return Response.json({"access_token": token, "expires_in": self.token_lifetime,
                              "token_type": "Bearer"})

    def _make_jwt(self, claims: Mapping[str, Any]) -> str:
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = b64(json.dumps(dict(claims)).encode())
        sig = b64(hmac.new(self._signing_key, f"{head}.{body}".encode(), hashlib.sha256).digest())
        return f"{head}.{body}.{sig}"

    def _authenticate(self, request: Request, now: float) -> None:
        auth = request.header("authorization") or ""
        if not auth.startswith("Bearer "):
            raise _Problem(401, "Unauthorized", "Missing bearer token")
        expiry = self._tokens.get(auth[len("Bearer "):])
        if expiry is None:
            raise _Problem(401, "Unauthorized", "Invalid token")
        if now >= expiry:
            raise _Problem(self.expired_token_status, "Unauthorized" if self.expired_token_status == 401
                           else "Forbidden", "Access token has expired")
