"""The base every API client builds on: one httpx client, bounded concurrency, retries with jittered backoff.

A connector subclasses :class:`ApiClient` and overrides two points, in the spirit of the Meltano SDK's REST
stream:

* :meth:`ApiClient.prepare_request` adds authentication (and anything else per request);
* :meth:`ApiClient.check_response` turns the API's own error shapes into :class:`RetriableApiError` or
  :class:`FatalApiError` (including errors hidden inside HTTP 200 bodies).

:meth:`ApiClient.request` retries what is retriable (429, 5xx, dropped connections, malformed bodies),
honouring ``Retry-After``, and gives up after :attr:`RetryPolicy.attempts`. Sleeping uses ``trio.sleep`` so
tests with ``MockClock(autojump_threshold=0)`` run retries instantly.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import httpx
import structlog
import trio

from crmsync import jsonlimits
from crmsync.connectors.errors import (
    ApiError,
    AuthError,
    FatalApiError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    RetriableApiError,
)
from crmsync.redaction import learn_headers

log = structlog.get_logger("crmsync.connectors.http")
_stdlog = logging.getLogger("crmsync.connectors.http")


class RequestObserver(Protocol):
    """Receives one call per HTTP exchange; the daemon's metrics implement it."""

    def api_request(self, system: str, status_class: str, duration_s: float | None = None) -> None: ...

    def api_retry(self, system: str, reason: str) -> None: ...

    def rate_limit_wait(self, system: str, seconds: float) -> None: ...


class NullObserver:
    def api_request(self, system: str, status_class: str, duration_s: float | None = None) -> None:
        pass

    def api_retry(self, system: str, reason: str) -> None:
        pass

    def rate_limit_wait(self, system: str, seconds: float) -> None:
        pass


@dataclass(frozen=True)
class RetryPolicy:
    """Full-jitter exponential backoff (AWS architecture blog's "full jitter"), capped, honouring Retry-After."""

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 60.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt number ``attempt + 1`` (``attempt`` counts from 1)."""
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.max_delay)
        r = rng or random
        return r.uniform(0, min(self.max_delay, self.base_delay * (2 ** (attempt - 1))))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` is either delta-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_reason(exc: RetriableApiError) -> str:
    """The ``reason`` label of ``crmsync_api_retries_total``."""
    if isinstance(exc, RateLimitedError):
        return "rate_limited"
    if isinstance(exc, MalformedResponseError):
        return "malformed"
    if exc.status is not None and exc.status >= 500:
        return "server_error"
    if exc.message.startswith("timeout"):
        return "timeout"
    return "connection"


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class RateLimiter:
    """A token bucket on trio's clock: at most ``rate`` requests per second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int | None = None):
        self.rate = rate
        self.capacity = float(burst if burst is not None else max(1, int(rate)))
        self._tokens = self.capacity
        self._stamp: float | None = None
        self._lock = trio.Lock()

    async def acquire(self) -> float:
        """Take one token; returns the seconds spent waiting."""
        waited = 0.0
        async with self._lock:
            now = trio.current_time()
            if self._stamp is None:
                self._stamp = now
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens < 1:
                waited = (1 - self._tokens) / self.rate
                await trio.sleep(waited)
                # refill by the time that really passed: waking late must not lose the rate's budget
                now = trio.current_time()
                self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                waited = max(waited, 0.0)
            self._tokens -= 1
        return waited


class ApiClient:
    """Base class for one external system's API client.

    ``http`` may be passed in (tests pass an ``httpx.AsyncClient`` over a simulator's ASGI app);
    otherwise one is created for ``base_url`` and closed by :meth:`aclose`.
    """

    system: ClassVar[str] = "api"

    def __init__(
        self,
        base_url: str,
        *,
        http: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        observer: RequestObserver | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        max_concurrency: int = 4,
        rate_limit: float | None = None,
        rate_burst: int | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self._owns_http = http is None
        self.http = http or httpx.AsyncClient(
            base_url=self.base_url, transport=transport, timeout=timeout, follow_redirects=False
        )
        self.observer: RequestObserver = observer or NullObserver()
        self.retry = retry or RetryPolicy()
        self._limiter = trio.CapacityLimiter(max_concurrency)
        self._rate = RateLimiter(rate_limit, rate_burst) if rate_limit else None

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- override points ---------------------------------------------------------------------------------

    async def prepare_request(self, request: httpx.Request) -> None:
        """Add authentication and per-request headers. Default: nothing."""

    def check_response(self, response: httpx.Response) -> None:
        """Raise the right :class:`ApiError` for an error response. Default: by HTTP status."""
        raise_for_status(self.system, response)

    # -- the retry loop ----------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        if path.startswith("http://") or path.startswith("https://"):
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        files: Any = None,
        headers: Mapping[str, str] | None = None,
        retry: bool = True,
    ) -> httpx.Response:
        """Send a request, retrying retriable failures; returns the (successful) response."""
        attempts = self.retry.attempts if retry else 1
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._send_once(
                    method, path, params=params, json=json, content=content, data=data, files=files,
                    headers=headers,
                )
            except RetriableApiError as exc:
                if attempt >= attempts:
                    raise
                delay = self.retry.delay(attempt, exc.retry_after)
                self.observer.api_retry(self.system, retry_reason(exc))
                if isinstance(exc, RateLimitedError):
                    self.observer.rate_limit_wait(self.system, delay)
                log.info(
                    "api_retry", system=self.system, method=method, path=_redact_path(path),
                    attempt=attempt, delay_s=round(delay, 3), error=exc.message, status=exc.status,
                )
                await trio.sleep(delay)

    @contextmanager
    def transport_errors(self, sent: float) -> Iterator[None]:
        """httpx's timeouts and connection failures, while sending or reading, as retriable errors (counted as
        errored requests, ``sent``: ``time.monotonic()`` when the request went)."""
        try:
            yield
        except httpx.TimeoutException as exc:
            self.observer.api_request(self.system, "error", time.monotonic() - sent)
            raise RetriableApiError(self.system, f"timeout: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            self.observer.api_request(self.system, "error", time.monotonic() - sent)
            raise RetriableApiError(self.system, f"connection failed: {type(exc).__name__}") from exc

    async def _send_once(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if self._rate is not None:
            waited = await self._rate.acquire()
            if waited:
                self.observer.rate_limit_wait(self.system, waited)
        async with self._limiter:
            request = self.http.build_request(method, self.url(path), **{k: v for k, v in kwargs.items()
                                                                         if v is not None})
            await self.prepare_request(request)
            sent = time.monotonic()  # real latency, even under a test's MockClock
            learn_headers(request.headers.items())  # what we send is what an echoing error page would show
            with self.transport_errors(sent):
                response = await self.http.send(request)
                await response.aread()
        self.observer.api_request(self.system, status_class(response.status_code), time.monotonic() - sent)
        self.check_response(response)
        return response


def raise_for_status(system: str, response: httpx.Response, message: str | None = None) -> None:
    """Map an HTTP status to the error split. 2xx returns; 429/5xx retriable; other 4xx fatal."""
    status = response.status_code
    if status < 300:
        return
    text = message or _short_body(response)
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if status == 429:
        raise RateLimitedError(system, text or "rate limited", status=status, retry_after=retry_after)
    if status >= 500 or status == 408:
        raise RetriableApiError(system, text or f"HTTP {status}", status=status, retry_after=retry_after)
    if status in (401, 403):
        raise AuthError(system, text or f"HTTP {status}", status=status)
    if status == 404:
        raise NotFoundError(system, text or "not found", status=status)
    raise FatalApiError(system, text or f"HTTP {status}", status=status)


def _short_body(response: httpx.Response, limit: int = 300) -> str:
    try:
        text = response.text
    except Exception:  # undecodable body: say so rather than fail while failing
        return f"HTTP {response.status_code}"
    text = " ".join(text.split())
    return f"HTTP {response.status_code}: {text[:limit]}" if text else f"HTTP {response.status_code}"


def _redact_path(path: str) -> str:
    # Query strings may carry keys on some APIs; logs keep only the path.
    return path.split("?", 1)[0]


# API answers nest far less than this; deeper is garbage (and json.loads would raise RecursionError, which no
# caller expects: crmsync.jsonlimits)
MAX_ANSWER_DEPTH = 64


def parse_json_answer(content: bytes) -> Any:
    """An API answer's JSON; ``ValueError`` (only) for anything malformed, too deep, NaN or not UTF-8."""
    return jsonlimits.loads(content, max_depth=MAX_ANSWER_DEPTH)


def json_body(system: str, response: httpx.Response) -> Any:
    """Parse a JSON body, treating garbage (too deep, NaN, not UTF-8 included) as a retriable malformed response."""
    try:
        return parse_json_answer(response.content)
    except ValueError as exc:
        raise MalformedResponseError(
            system, f"malformed JSON in HTTP {response.status_code} response", status=response.status_code
        ) from exc


__all__ = [
    "ApiClient",
    "ApiError",
    "NullObserver",
    "RateLimiter",
    "RequestObserver",
    "RetryPolicy",
    "json_body",
    "parse_retry_after",
    "raise_for_status",
]
