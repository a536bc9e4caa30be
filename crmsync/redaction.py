"""Secrets out of everything kept or printed: error messages, run errors, report rows, log lines.

Upstream error pages sometimes echo the request, headers included, so an API's answer can carry our own
credentials back. Two nets, applied centrally (``ApiError`` messages, run errors and report rows, and a log
processor), never per connector:

* **known values**: every configured secret (registered when its :class:`~crmsync.daemon.secrets.Secret` is
  made) and every credential a client actually sends (learnt from the authorization-like headers of each
  request: the EveryAction ``Basic`` token and the ``application:key|mode`` inside it, the Efficy API key and
  session cookie, bearer tokens), in each encoded form (raw, base64 standard/url-safe/unpadded,
  percent-encoded, JSON-escaped); an error message cut inside one (``text[:300]``) loses the cut piece too;
* **shapes**: the value after an authorization-like header or parameter name (``Authorization:``,
  ``X-Efficy-ApiKey:``, ``Cookie:``, ``access_token=``, ``"client_secret": ``...) and after ``Basic``/``Bearer``,
  even when the value is unknown.

Pure functions over a small process-wide registry (thread-safe: the store's worker thread logs too).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 6  # shorter values would blank ordinary words everywhere
MIN_TAIL = 6  # a message cut inside a secret: drop a trailing piece of at least this many characters
MAX_KNOWN = 2000  # learnt session tokens rotate; keep the newest

_SENSITIVE_NAME = (r"authorization|proxy-authorization|x-efficy-apikey|x-api-?key|api[_-]?key|apikey|"
                   r"access[_-]?token|refresh[_-]?token|id[_-]?token|client[_-]?secret|password|passwd|"
                   r"secret|token|x-auth-token|session[_-]?id")
_HEADER_NAMES = re.compile(rf"^(?:{_SENSITIVE_NAME}|cookie|set-cookie)$", re.IGNORECASE)
_SCHEME = r"(?:(?:basic|bearer|digest|token|apikey)\s+)?"
_VALUE = r"[^\s<>\"',;&]+"
_PATTERNS = [
    # Cookie: a=1; b=2 (to the end of the line or markup)
    (re.compile(r"(?i)\b((?:set-)?cookie\s*[:=]\s*)[^<\r\n]+"), rf"\g<1>{REDACTED}"),
    # Authorization: Basic xxx / "client_secret": "xxx" / access_token=xxx
    (re.compile(rf"(?i)(?<![\w-])((?:{_SENSITIVE_NAME})[\"']?\s*[:=]\s*[\"']?\s*{_SCHEME}){_VALUE}"),
     rf"\g<1>{REDACTED}"),
    # a bare credential after its scheme word
    (re.compile(r"(?i)\b(basic|bearer)\s+[A-Za-z0-9._~+/-]{8,}=*"), rf"\g<1> {REDACTED}"),
]

_known: dict[str, None] = {}  # an ordered set
_known_re: re.Pattern[str] | None = None  # all of them, longest first: one pass per string
_lock = threading.Lock()
_learnt: dict[tuple[str, str], None] = {}  # header values already learnt: each request re-sends the same ones


def encoded_forms(value: str) -> set[str]:
    """The forms ``value`` may travel in."""
    raw = value.encode()
    forms = {value, base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode(),
             urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value), json.dumps(value)[1:-1]}
    forms |= {f.rstrip("=") for f in forms}
    return {f for f in forms if len(f) >= MIN_SECRET_LENGTH}


def register(value: str | None) -> None:
    """Redact ``value`` (in each encoded form) from now on."""
    if not value or len(value.strip()) < MIN_SECRET_LENGTH:
        return
    forms = encoded_forms(value.strip()) | encoded_forms(value)
    with _lock:
        new = False
        for form in forms:  # newest last (the oldest go first past MAX_KNOWN)
            if form in _known:
                del _known[form]
            else:
                new = True
            _known[form] = None
        if not new:
            return  # every request re-sends the same credentials: nothing to recompile
        while len(_known) > MAX_KNOWN:
            _known.pop(next(iter(_known)))
        _compile()


def _compile() -> None:
    global _known_re
    forms = sorted(_known, key=len, reverse=True)
    _known_re = re.compile("|".join(map(re.escape, forms))) if forms else None


def learn_headers(headers: Iterable[tuple[str, str]] | Mapping[str, str]) -> None:
    """Register the credentials in a request's authorization-like headers (called for every request sent)."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        if not _HEADER_NAMES.match(name) or not value or (name, value) in _learnt:
            continue
        _learnt[(name, value)] = None
        if len(_learnt) > MAX_KNOWN:
            _learnt.pop(next(iter(_learnt)), None)
        if name.lower() in ("cookie", "set-cookie"):
            for part in value.split(";"):
                register(part.partition("=")[2].strip())
            continue
        scheme, _, credential = value.strip().partition(" ")
        if not credential:
            register(value)
            continue
        register(credential.strip())
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credential.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                continue
            register(decoded)
            register(decoded.partition(":")[2])  # the password (EveryAction: "key|mode")
            register(decoded.partition(":")[2].rpartition("|")[0])  # EveryAction's bare API key


def redact(text: str, *, cut: bool = False) -> str:
    """``text`` without any known secret or authorization-like value. ``cut``: ``text`` may have been truncated
    (upstream error excerpts), so a trailing start of a known secret goes too."""
    if not text:
        return text
    for shape, replacement in _PATTERNS:
        text = shape.sub(replacement, text)
    known_re = _known_re
    if known_re is not None:
        text = known_re.sub(REDACTED, text)
    if not cut:
        return text
    with _lock:
        known = list(_known)
    for form in known:  # a message truncated inside a secret
        for size in range(len(form) - 1, MIN_TAIL - 1, -1):
            if text.endswith(form[:size]):
                text = text[: len(text) - size] + REDACTED
                break
    return text


def redact_value(value: Any) -> Any:
    """:func:`redact` applied to every string inside dicts, lists and tuples (log events, replies)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    return value


def forget_all() -> None:
    """Tests only: start from an empty registry."""
    with _lock:
        _known.clear()
        _compile()
