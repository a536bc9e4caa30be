"""The error split every connector uses: retriable (back off and try again) versus fatal (report and move on).

Modelled on the Meltano SDK's ``RetriableAPIError``/``FatalAPIError``. Messages must never carry secrets:
connectors build them from the API's own error text, never from request headers or URLs with credentials; and
since an API's error page may echo our request back, every message is passed through
:func:`crmsync.redaction.redact` here, the one place all upstream error messages are built.
"""

from __future__ import annotations

from crmsync.redaction import redact


class ApiError(Exception):
    """An external API refused or failed a request."""

    def __init__(self, system: str, message: str, *, status: int | None = None, code: str | None = None):
        message = redact(message, cut=True)  # API error excerpts are truncated
        super().__init__(f"{system}: {message}")
        self.system = system
        self.message = message
        self.status = status
        self.code = code


class RetriableApiError(ApiError):
    """Temporary: rate limit, server overload, dropped connection. Worth retrying after ``retry_after``."""

    def __init__(
        self,
        system: str,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(system, message, status=status, code=code)
        self.retry_after = retry_after


class RateLimitedError(RetriableApiError):
    """The API said "slow down" (HTTP 429, Mobile Commons error 27, ...)."""


class FatalApiError(ApiError):
    """Permanent for this request: validation failure, bad credentials, conflict. Do not retry."""


class NotFoundError(FatalApiError):
    """The record does not exist in the external system."""


class AuthError(FatalApiError):
    """Credentials were refused (after any allowed token refresh)."""


class MalformedResponseError(RetriableApiError):
    """The API answered with a body we cannot parse. Retried: proxies and overloaded servers do this."""
