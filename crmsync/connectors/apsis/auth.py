"""OAuth2 client-credentials tokens for APSIS One, cached and shared by concurrent requests.

Why this shape (research §4.1, §9.6): a token lives 24 h, the token endpoint allows only 10 requests a
minute per account, and clients that fetched per request or never refreshed both failed in production. So:

* one cached token, renewed ``margin`` seconds before it expires (expiry read from the response);
* one ``trio.Lock`` so that N concurrent callers needing a token cause one token request, not N;
* refresh-after-rejection is generation-checked: if ten requests fail with 401 on the same token, the first
  refreshes and the other nine reuse its result.

The secret never leaves :class:`ClientCredentials` except in the token request body; it is excluded from
``repr`` and never logged. Token values are excluded from ``repr`` too.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from crmsync.clock import WallClock
from crmsync.connectors.errors import MalformedResponseError

log = structlog.get_logger("crmsync.connectors.apsis.auth")

TOKEN_PATH = "/oauth/token"


@dataclass(frozen=True)
class ClientCredentials:
    """An APSIS One API key (client id + secret); the secret is hidden from ``repr``."""

    client_id: str
    client_secret: str = field(repr=False)

    def token_request(self) -> dict[str, str]:
        """The JSON body of ``POST /oauth/token`` (§4.1)."""
        return {"grant_type": "client_credentials", "client_id": self.client_id,
                "client_secret": self.client_secret}


@dataclass(frozen=True)
class AccessToken:
    """A bearer token and when (on trio's clock) it stops being usable."""

    value: str = field(repr=False)
    issued_at: float
    expires_at: float
    generation: int


def jwt_exp(token: str) -> float | None:
    """The ``exp`` claim of a JWT (unverified: we only need to know when to renew), or None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, TypeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def token_lifetime(body: Mapping[str, Any], wall_now: float, default: float) -> float:
    """Seconds the token in ``body`` stays valid.

    APSIS returns ``expires_in`` (deprecated but still sent) and a JWT with ``exp`` (current docs say read
    ``exp``). Both are honoured and the shorter wins; ``default`` applies only if neither is present.
    """
    candidates: list[float] = []
    expires_in = body.get("expires_in")
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        candidates.append(float(expires_in))
    exp = jwt_exp(str(body.get("access_token", "")))
    if exp is not None:
        candidates.append(exp - wall_now)
    return max(0.0, min(candidates)) if candidates else default


TokenFetcher = Callable[[], Awaitable[Mapping[str, Any]]]


class TokenCache:
    """Holds the current token; :meth:`get` renews it ahead of expiry, :meth:`refresh` after a rejection.

    ``margin`` (seconds before expiry to renew) is configurable; APSIS' Magento module renews about 75 min
    early, the default here is 10 min, capped at half the lifetime so a short-lived token is not refetched
    on every call. ``fetch`` performs the token request and returns the parsed body.
    """

    def __init__(self, fetch: TokenFetcher, *, margin: float = 600.0, clock: WallClock | None = None,
                 default_lifetime: float = 3600.0):
        self._fetch = fetch
        self.margin = margin
        self.clock = clock or WallClock()
        self.default_lifetime = default_lifetime
        self._token: AccessToken | None = None
        self._lock = trio.Lock()
        self._generation = 0
        self.fetches = 0  # token requests made: a metric and a test hook

    @property
    def current(self) -> AccessToken | None:
        return self._token

    def _fresh(self, token: AccessToken | None) -> bool:
        if token is None:
            return False
        lifetime = token.expires_at - token.issued_at
        return trio.current_time() < token.expires_at - min(self.margin, lifetime / 2)

    async def get(self) -> AccessToken:
        """A usable token: the cached one, or a new one if it is missing or about to expire."""
        token = self._token
        if self._fresh(token):
            assert token is not None
            return token
        async with self._lock:
            if not self._fresh(self._token):
                await self._renew("expiring" if self._token is not None else "first use")
            assert self._token is not None
            return self._token

    async def refresh(self, stale_generation: int | None) -> AccessToken:
        """Renew after the API refused token ``stale_generation``, unless someone already did."""
        async with self._lock:
            if self._token is None or self._token.generation == stale_generation:
                await self._renew("rejected")
            assert self._token is not None
            return self._token

    def generation_of(self, value: str) -> int | None:
        """Which generation a token value is (None if it is not the current one)."""
        token = self._token
        return token.generation if token is not None and token.value == value else None

    def invalidate(self) -> None:
        self._token = None

    async def _renew(self, why: str) -> None:
        self.fetches += 1
        started = trio.current_time()
        body = await self._fetch()
        value = body.get("access_token")
        if not isinstance(value, str) or not value:
            raise MalformedResponseError("apsis", "token response without access_token")
        lifetime = token_lifetime(body, self.clock.timestamp(), self.default_lifetime)
        self._generation += 1
        self._token = AccessToken(value=value, issued_at=started, expires_at=started + lifetime,
                                  generation=self._generation)
        log.info("apsis_token_renewed", reason=why, lifetime_s=round(lifetime), generation=self._generation)
