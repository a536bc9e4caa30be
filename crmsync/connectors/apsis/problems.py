"""APSIS One error responses → typed errors.

APSIS answers errors as problem details (RFC 7807-ish): ``{"title", "status", "detail"}``; older responses
carry only ``status`` + ``detail``, newer ``status`` + ``title`` (research §8.2), so both are read. The client
policy follows APSIS' own modules: 408/429/5xx retriable, 401/403 refresh the token once, 409 is a
domain-level success for the caller to decide, 413 means the body was too big, other 4xx are permanent.

Messages are built from the API's title/detail only, never from request headers or bodies, so secrets
cannot leak into logs or exceptions.
"""

from __future__ import annotations

from typing import Any

import httpx

from crmsync.connectors.errors import (
    AuthError,
    FatalApiError,
    NotFoundError,
    RateLimitedError,
    RetriableApiError,
)
from crmsync.connectors.http import parse_json_answer, parse_retry_after

SYSTEM = "apsis"


class ApsisAuthError(AuthError):
    """401/403. ``stale_generation`` is the token generation that was refused (None: not a Bearer call)."""

    def __init__(self, message: str, *, status: int, stale_generation: int | None = None,
                 title: str | None = None, detail: str | None = None):
        super().__init__(SYSTEM, message, status=status)
        self.stale_generation = stale_generation
        self.title = title
        self.detail = detail


class ApsisConflictError(FatalApiError):
    """409: profile exists, consent already in that state, merge conflict. Often a success to the caller."""

    def __init__(self, message: str, *, title: str | None = None, detail: str | None = None):
        super().__init__(SYSTEM, message, status=409)
        self.title = title
        self.detail = detail


class ApsisMergeConflictError(ApsisConflictError):
    """409 on a profile merge (§5 P9): the two profiles cannot become one (e.g. both carry a different key
    in the same keyspace). Not a success: nothing was merged."""


class ApsisGoneError(FatalApiError):
    """410: the resource is gone for good (a locked profile, an expired report URL)."""


class ConsentReportExpiredError(RetriableApiError):
    """A consent report's poll URL answered 410: the report expired. Retriable by requesting a new one."""

    def __init__(self, message: str = "consent report expired (HTTP 410); request a new report", *,
                 status: int | None = 410):
        super().__init__(SYSTEM, message, status=status)


class ConsentReportTimeoutError(RetriableApiError):
    """A consent report stayed pending (404 on its poll URL) longer than the configured timeout."""

    def __init__(self, message: str):
        super().__init__(SYSTEM, message)


class ConsentReportUnreadableError(FatalApiError):
    """A consent report's CSV lacks the configured columns (or is cut inside a quoted field)."""


class ApsisPayloadTooLargeError(FatalApiError):
    """413 (or refused locally before sending): the body was above the 100 kB limit."""


class ApsisValidationError(FatalApiError):
    """400/422 and other permanent 4xx: the request itself is wrong."""


class ApsisNotFoundError(NotFoundError):
    """404: unknown profile, section, keyspace, topic or import."""


class ImportFailedError(FatalApiError):
    """A bulk import finished in ``error`` or never finished within the allowed time."""


def problem_fields(response: httpx.Response) -> tuple[str | None, str | None]:
    """``(title, detail)`` from a problem+json body; ``(None, None)`` when the body is not one."""
    try:
        body: Any = parse_json_answer(response.content)
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    title = body.get("title")
    detail = body.get("detail")
    if detail is None and isinstance(body.get("message"), str):
        detail = body["message"]
    return (str(title) if title is not None else None, str(detail) if detail is not None else None)


def problem_message(status: int, title: str | None, detail: str | None, fallback: str) -> str:
    parts = [p for p in (title, detail) if p]
    return f"HTTP {status}: {' — '.join(parts)}" if parts else fallback


def raise_for_problem(response: httpx.Response, *, stale_generation: int | None = None) -> None:
    """Raise the typed error for a non-2xx APSIS (or S3 upload) response; return on 2xx."""
    status = response.status_code
    if status < 300:
        return
    title, detail = problem_fields(response)
    if title is None and detail is None:
        text = " ".join(response.text.split())[:300] if response.content else ""
        fallback = f"HTTP {status}: {text}" if text else f"HTTP {status}"
    else:
        fallback = f"HTTP {status}"
    message = problem_message(status, title, detail, fallback)
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    if status == 429:
        raise RateLimitedError(SYSTEM, message, status=status, retry_after=retry_after)
    if status == 408 or status >= 500:
        raise RetriableApiError(SYSTEM, message, status=status, retry_after=retry_after)
    if status in (401, 403):
        raise ApsisAuthError(message, status=status, stale_generation=stale_generation, title=title,
                             detail=detail)
    if status == 404:
        raise ApsisNotFoundError(SYSTEM, message, status=status)
    if status == 409:
        raise ApsisConflictError(message, title=title, detail=detail)
    if status == 410:
        raise ApsisGoneError(SYSTEM, message, status=status)
    if status == 413:
        raise ApsisPayloadTooLargeError(SYSTEM, message, status=status)
    raise ApsisValidationError(SYSTEM, message, status=status)
