"""Webhook authentication, as pure functions over the raw body and headers (no I/O).

HMAC-SHA256 is computed over the raw bytes before any parsing and compared in constant time; during a secret
rotation the previous secret is accepted too. Token mode compares a shared token in a header.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping

from crmsync.daemon.config import WebhookAuthConfig
from crmsync.daemon.secrets import Secret


def sign(secret: str, body: bytes, encoding: str = "hex") -> str:
    digest = hmac.digest(secret.encode(), body, "sha256")  # OpenSSL's one-shot HMAC: no HMAC object
    return digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()


def verify(auth: WebhookAuthConfig, headers: Mapping[str, str], body: bytes) -> bool:
    """True when the request proves knowledge of the configured secret. ``headers`` keys are lower-case."""
    presented = headers.get(auth.header.lower())
    if not presented:
        return False
    presented = presented.strip()
    secrets = [s for s in (auth.secret, auth.previous_secret) if isinstance(s, Secret)]
    if auth.mode == "token":
        return any(hmac.compare_digest(presented.encode(), s.reveal().encode()) for s in secrets)
    if auth.prefix:
        if not presented.startswith(auth.prefix):
            return False
        presented = presented[len(auth.prefix):]
    for secret in secrets:
        expected = sign(secret.reveal(), body, auth.encoding)
        if auth.encoding == "hex":
            if hmac.compare_digest(presented.lower().encode(), expected.encode()):
                return True
        elif hmac.compare_digest(presented.encode(), expected.encode()):
            return True
    return False
