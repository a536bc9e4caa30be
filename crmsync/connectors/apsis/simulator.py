"""An in-memory APSIS One: the stand-in for tests, benchmarks and ``crmsync sandbox``.

It reproduces what the research (``efficy_apsis.md`` §4–§10) says the real API does, because a test that
passes against a lenient simulator is a bug waiting in production:

* ``POST /oauth/token`` issues JWT-shaped tokens with ``exp`` and ``expires_in`` = 24 h of *clock* time, and
  allows 10 token requests a minute (429 beyond);
* every other call needs ``Authorization: Bearer``; unknown tokens get 401, expired ones 401 (or 403 with
  ``expired_token_status=403``: APSIS has been seen answering expired tokens with 403);
* 100 requests per second of clock time per account (429 beyond), bodies above 100 kB get 413;
* profile create 201/409; v2 attributes merge-patch 204 and 404 for unknown profiles (v2 never creates);
  Consent 2.0 writes 201 new / 204 changed / 409 same state, 403 on keyspaces without
  ``manage_subscriptions``; tags merge-patch; imports with their own limits (10 creations a minute, 3
  pending at once), a fake S3 pre-signed multipart upload, and a status that moves
  ``waiting_for_file → queued → in_progress → completed`` over polls;
* consent reports (E1): ``POST /audience/profiles/reports/consents`` snapshots the matching consents at
  creation and answers 202 with an absolute ``poll_url``; the URL answers 404 (problem+json) for the first
  ``report_polls_until_ready`` polls, then 200 with the CSV *streamed* in chunks (gzip-encoded when the
  request accepts gzip), and 410 once ``report_lifetime`` (1 day) of clock time has passed;
* profile merge (P9): ``PUT /audience/profiles/merges`` joins two profiles into one (both keys then reach
  the same data), creating missing ones; 409 when the result would hold two keys in one keyspace;
* errors are problem+json ``{"title", "status", "detail"}``.

Plain methods (``profile``, ``consents_of``, ``opt_out``, ``writes`` ...) let tests and the sandbox inspect
and poke the state without HTTP. Time comes from a :class:`~crmsync.clock.WallClock`, so tests under trio's
MockClock can move through a day.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import itertools
import json
import re
import zlib
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from typing import Any
from urllib.parse import unquote

import structlog
import trio

from crmsync.clock import WallClock
from crmsync.connectors.apsis.records import (
    ATTR_CRMID,
    ATTR_EMAIL,
    ATTR_FIRSTNAME,
    ATTR_LASTNAME,
    ATTR_MOBILE,
    CHANNEL_EMAIL,
    CHANNELS,
    KEYSPACE_CRM_ID,
    KEYSPACE_EMAIL,
    KEYSPACE_EXPORT,
    KEYSPACE_MOBILE,
    MAX_BODY_BYTES,
    MAX_IMPORT_FILE_BYTES,
    SECTION_DEFAULT,
    WRITABLE_CONSENT_TYPES,
    ApsisProfile,
    ConsentKey,
    ConsentReportColumns,
)
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

log = structlog.get_logger("crmsync.connectors.apsis.simulator")

S3_PATH = "/_s3/apsis-imports"
REPORT_PATH = "/audience/profiles/reports/consents"
TOKEN_LIFETIME = 86400
PROBLEM = "application/problem+json"

#: Default definitions (§4.2); tests and the sandbox may pass their own.
DEFAULT_KEYSPACES: tuple[dict[str, Any], ...] = (
    {"discriminator": KEYSPACE_CRM_ID, "name": "CRM ID", "manage_subscriptions": True,
     "key_attribute": ATTR_CRMID},
    {"discriminator": KEYSPACE_EMAIL, "name": "Email", "manage_subscriptions": True,
     "key_attribute": ATTR_EMAIL},
    {"discriminator": KEYSPACE_MOBILE, "name": "Mobile", "manage_subscriptions": True,
     "key_attribute": ATTR_MOBILE},
    {"discriminator": KEYSPACE_EXPORT, "name": "Export", "manage_subscriptions": False,
     "key_attribute": None, "read_only": True},
)
DEFAULT_ATTRIBUTES: tuple[tuple[str, str, str], ...] = (
    (ATTR_CRMID, "CRM ID", "string"),
    (ATTR_EMAIL, "Email", "string"),
    (ATTR_MOBILE, "Mobile", "string"),
    (ATTR_FIRSTNAME, "First name", "string"),
    (ATTR_LASTNAME, "Last name", "string"),
    ("com.apsis1.attributes.birthdate", "Birth date", "date"),
    ("usercreated.attributes.country-abc123", "Country", "string"),
    ("usercreated.attributes.notes-k3j4h5", "Notes", "string"),
)
DEFAULT_TOPICS: tuple[tuple[str, str, str], ...] = (
    ("usercreated.topics.newsletter-a1b2c3", "Newsletter", "usercreated.targets.marketing-x1y2z3"),
    ("usercreated.topics.offers-d4e5f6", "Offers", "usercreated.targets.marketing-x1y2z3"),
    ("usercreated.topics.newsletter-g7h8i9", "Newsletter", "usercreated.targets.service-q9w8e7"),
)
DEFAULT_TAGS: tuple[tuple[str, str], ...] = (
    ("usercreated.tags.vip-ab12cd", "VIP"),
    ("usercreated.tags.prospect-ef34gh", "Prospect"),
    ("usercreated.tags.event-2024-ij56kl", "Event 2024"),
)


def _version_id(discriminator: str) -> str:
    return hashlib.sha1(discriminator.encode()).hexdigest()[:8] + "-v1"


@dataclass
class _SectionData:
    attributes: dict[str, Any] = field(default_factory=dict)
    consents: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    tags: set[str] = field(default_factory=set)


@dataclass
class _Import:
    import_id: str
    section: str
    spec: dict[str, Any]
    upload_fields: dict[str, str]
    upload_expires: float
    status: str = "waiting_for_file"
    csv: bytes | None = None
    polls_in_status: int = 0
    rows_imported: int = 0
    error: str | None = None
    ready_at: float | None = None  # clock time the import completes (time-based processing)


@dataclass
class _Report:
    report_id: str
    created: float  # clock timestamp
    rows: list[tuple[str, str, str, str, str, str]]  # keyspace, key, topic, channel, type, modified_at
    polls: int = 0


@dataclass
class StreamedResponse(Response):
    """A response whose body is sent as the chunks come (ASGI ``more_body``), without Content-Length."""

    chunks: Iterable[bytes] = ()


class _Problem(Exception):
    """Raised inside handlers; rendered as problem+json."""

    def __init__(self, status: int, title: str, detail: str = "", headers: Iterable[tuple[str, str]] = ()):
        super().__init__(title)
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = list(headers)


def problem(status: int, title: str, detail: str = "", headers: Iterable[tuple[str, str]] = ()) -> Response:
    body: dict[str, Any] = {"title": title, "status": status}
    if detail:
        body["detail"] = detail
    return Response.json(body, status=status, headers=headers, content_type=PROBLEM)


def _s3_error(status: int, code: str, message: str) -> Response:
    xml = (f"<?xml version='1.0' encoding='UTF-8'?>"
           f"<Error><Code>{code}</Code><Message>{message}</Message></Error>")
    return Response.text(xml, status=status, content_type="application/xml")


Route = Callable[..., Awaitable[Response]]

_SEG = r"([^/]+)"


class ApsisSimulator(SimulatorApp):
    """The APSIS One simulator. See the module docstring for what it reproduces.

    ``public_url`` is the base URL clients reach the simulator at; the fake S3 upload URL handed out by
    imports lives there too (set it when serving on a real port, as the sandbox does).

    Settings resting on unverified facts ([U] in the research): ``expired_token_status`` (401, or 403 as
    seen by some clients), ``retry_after_on_429`` (Retry-After is undocumented: none by default),
    ``upload_url_lifetime`` (pre-signed URL validity), ``import_polls_per_step`` (how fast imports move),
    and the tag value encoding (``true`` adds, ``false``/``null`` remove). ``clear_existing_attributes`` in
    imports is read as "empty cells clear the attribute", also [U]. Consent reports: the creation answer
    (202 ``{"report_id", "poll_url", "expires_at"}`` + ``Location``), ``report_polls_until_ready``,
    ``report_lifetime`` and the CSV columns (``report_columns``, the client's defaults) are all [U]; the
    body is read as the research lists it (``section_discriminator``, ``topic_discriminators``,
    ``channel_discriminator`` or ``channels[{field_name, channel_discriminator}]``) plus an optional
    ``keyspace_discriminator`` limiting rows to one keyspace. Merge semantics beyond "2xx, 409 on conflict,
    creates missing profiles" are [U]: see :meth:`_merge_profiles`.
    """

    def __init__(
        self,
        clock: WallClock | None = None,
        *,
        client_id: str = "sim-client",
        client_secret: str = "sim-secret",
        public_url: str = "http://sim.test",
        keyspaces: Iterable[Mapping[str, Any]] = DEFAULT_KEYSPACES,
        sections: Iterable[str] = (SECTION_DEFAULT,),
        attributes: Iterable[tuple[str, str, str]] = DEFAULT_ATTRIBUTES,
        topics: Iterable[tuple[str, str, str]] = DEFAULT_TOPICS,
        tags: Iterable[tuple[str, str]] = DEFAULT_TAGS,
        token_lifetime: int = TOKEN_LIFETIME,
        expired_token_status: int = 401,
        max_body_bytes: int = MAX_BODY_BYTES,
        requests_per_second: int = 100,
        token_requests_per_minute: int = 10,
        imports_per_minute: int = 10,
        max_pending_imports: int = 3,
        import_polls_per_step: int = 1,
        upload_url_lifetime: float = 3600.0,
        max_import_file_bytes: int = MAX_IMPORT_FILE_BYTES,
        retry_after_on_429: float | None = None,
        report_polls_until_ready: int = 2,
        report_lifetime: float = 86400.0,
        report_columns: ConsentReportColumns = ConsentReportColumns(),
        report_chunk_rows: int = 200,
        import_tag_mapping_key: str = "tag_mappings",
        import_tag_field: str = "tag_discriminator",
        import_rows_per_second: float | None = None,
        latency: float = 0.0,
    ):
        super().__init__()
        self.clock = clock or WallClock()
        self.client_id = client_id
        self._client_secret = client_secret
        self.public_url = public_url.rstrip("/")
        self.keyspaces = {str(k["discriminator"]): dict(k) for k in keyspaces}
        self.sections = list(sections)
        self.attributes: dict[str, dict[str, Any]] = {d: {"discriminator": d, "name": n, "type": t,
                               "versions": [{"id": _version_id(d), "deprecated_at": None}]}
                           for d, n, t in attributes}
        self.topics = {d: {"discriminator": d, "name": n, "folder_discriminator": f} for d, n, f in topics}
        self.tag_definitions = {d: {"discriminator": d, "name": n} for d, n in tags}
        self.token_lifetime = token_lifetime
        self.expired_token_status = expired_token_status
        self.max_body_bytes = max_body_bytes
        self.requests_per_second = requests_per_second
        self.token_requests_per_minute = token_requests_per_minute
        self.imports_per_minute = imports_per_minute
        self.max_pending_imports = max_pending_imports
        self.import_polls_per_step = import_polls_per_step
        self.upload_url_lifetime = upload_url_lifetime
        self.max_import_file_bytes = max_import_file_bytes
        #: Retry-After is not documented for APSIS ([U]); None sends none, a number sends that many seconds.
        self.retry_after_on_429 = retry_after_on_429
        self.report_polls_until_ready = report_polls_until_ready
        self.report_lifetime = report_lifetime
        self.report_columns = report_columns
        self.report_chunk_rows = report_chunk_rows
        #: [U] how an import maps tag columns: ``{key: [{"field_selector", field: tag}]}``, cells ``1`` add,
        #: ``0`` remove, empty leave alone (no public source shows it; the client's settings match)
        self.import_tag_mapping_key = import_tag_mapping_key
        #: [U] APSIS's import speed is not published. None: an import moves one status per
        #: ``import_polls_per_step`` polls (tests); a number: it completes that many rows a second of clock
        #: time after its upload (benchmarks, the sandbox), however often it is polled.
        self.import_rows_per_second = import_rows_per_second
        self.latency = latency
        self.import_tag_field = import_tag_field

        self._profiles: dict[tuple[str, str], dict[str, _SectionData]] = {}
        self._tokens: dict[str, float] = {}  # token -> expiry timestamp (clock)
        self._token_seq = itertools.count(1)
        self._signing_key = hashlib.sha256(b"apsis-sim:" + client_secret.encode()).digest()
        self._api_window: deque[float] = deque()
        self._token_window: deque[float] = deque()
        self._import_window: deque[float] = deque()
        self._imports: dict[str, _Import] = {}
        self._import_seq = itertools.count(1)

        self.writes: Counter[str] = Counter()  # write calls received, by operation
        self.token_requests = 0  # every call to /oauth/token
        self.tokens_issued = 0
        self.rate_limited = 0  # 429s answered by the simulator's own limits (not injected faults)
        self.max_concurrent_imports_seen = 0
        self.in_flight = 0  # requests being answered now
        self.max_in_flight = 0
        self._reports: dict[str, _Report] = {}
        self._report_seq = itertools.count(1)
        self.report_requests = 0  # consent report creations (not profile writes, so not in ``writes``)
        self.report_chunks_sent = 0  # body chunks of report downloads sent so far
        self.report_downloads_completed = 0  # report bodies sent to the end

        p = r"/audience/keyspaces/" + _SEG + r"/profiles/" + _SEG + r"/sections/" + _SEG
        self._routes: list[tuple[str, re.Pattern[str], Route]] = [
            ("GET", re.compile(r"/audience/keyspaces"), self._list_keyspaces),
            ("GET", re.compile(r"/audience/sections"), self._list_sections),
            ("GET", re.compile(r"/audience/sections/" + _SEG + r"/attributes"), self._list_attributes),
            ("GET", re.compile(r"/v2/audience/sections/" + _SEG + r"/topics"), self._list_topics),
            ("GET", re.compile(r"/audience/sections/" + _SEG + r"/tags"), self._list_tags),
            ("POST", re.compile(r"/audience/keyspaces/" + _SEG + r"/sections/" + _SEG + r"/profiles"),
             self._create_profile),
            ("PATCH", re.compile(r"/v2" + p + r"/attributes"), self._patch_attributes),
            ("POST", re.compile(r"/v2" + p + r"/consents"), self._post_consent),
            ("GET", re.compile(r"/v2" + p + r"/consents"), self._get_consents),
            ("PATCH", re.compile(p + r"/tags"), self._patch_tags),
            ("GET", re.compile(p + r"/tags"), self._get_tags),
            ("DELETE", re.compile(r"/audience/keyspaces/" + _SEG + r"/profiles/" + _SEG),
             self._delete_profile),
            ("POST", re.compile(r"/v2/audience/sections/" + _SEG + r"/imports"), self._create_import),
            ("GET", re.compile(r"/audience/sections/" + _SEG + r"/imports/" + _SEG), self._get_import),
            ("POST", re.compile(REPORT_PATH), self._create_report),
            ("GET", re.compile(REPORT_PATH + "/" + _SEG), self._get_report),
            ("PUT", re.compile(r"/audience/profiles/merges"), self._merge_profiles),
        ]

    # -- test and sandbox helpers (no HTTP) ---------------------------------------------------------------

    @property
    def write_calls(self) -> int:
        """Total write calls (POST/PATCH/DELETE on profiles, consents, tags, imports) received."""
        return sum(self.writes.values())

    def expire_tokens(self) -> None:
        """Make every issued token expired now (as if 24 h had passed)."""
        now = self.clock.timestamp()
        for token in self._tokens:
            self._tokens[token] = now - 1

    def add_profile(self, key: str, attributes: Mapping[str, Any] | None = None, *,
                    consents: Mapping[ConsentKey, str] | None = None, tags: Iterable[str] = (),
                    keyspace: str = KEYSPACE_CRM_ID, section: str = SECTION_DEFAULT) -> None:
        """Seed a profile as if it had been created earlier (not counted as a write call)."""
        data = self._ensure(keyspace, key, section)
        data.attributes.update({k: v for k, v in (attributes or {}).items() if v is not None})
        for ck, kind in (consents or {}).items():
            self._set_consent(data, ck.topic, ck.channel, kind, source="Seed", reason=None)
        data.tags.update(tags)

    def profile(self, key: str, *, keyspace: str = KEYSPACE_CRM_ID,
                section: str = SECTION_DEFAULT) -> ApsisProfile | None:
        data = self._profiles.get((keyspace, str(key)), {}).get(section)
        if data is None:
            return None
        return ApsisProfile(
            key=str(key), attributes=dict(data.attributes),
            consents={ConsentKey(t, c): v["type"] for (t, c), v in data.consents.items()
                      if v["type"] in WRITABLE_CONSENT_TYPES},
            tags=frozenset(data.tags))

    def profiles(self, *, keyspace: str = KEYSPACE_CRM_ID,
                 section: str = SECTION_DEFAULT) -> list[ApsisProfile]:
        out = []
        for ks, key in sorted(self._profiles):
            if ks == keyspace:
                view = self.profile(key, keyspace=ks, section=section)
                if view is not None:
                    out.append(view)
        return out

    def consents_of(self, key: str, *, keyspace: str = KEYSPACE_CRM_ID,
                    section: str = SECTION_DEFAULT) -> dict[ConsentKey, str]:
        data = self._profiles.get((keyspace, str(key)), {}).get(section)
        return {} if data is None else {ConsentKey(t, c): v["type"] for (t, c), v in data.consents.items()}

    def tags_of(self, key: str, *, keyspace: str = KEYSPACE_CRM_ID,
                section: str = SECTION_DEFAULT) -> frozenset[str]:
        data = self._profiles.get((keyspace, str(key)), {}).get(section)
        return frozenset() if data is None else frozenset(data.tags)

    def opt_out(self, key: str, topic: str, channel: str = CHANNEL_EMAIL, *,
                keyspace: str = KEYSPACE_CRM_ID, section: str = SECTION_DEFAULT) -> None:
        """A person clicks the unsubscribe link in an email: opt-out on that topic/channel."""
        data = self._profiles.get((keyspace, str(key)), {}).get(section)
        if data is None:
            raise KeyError(f"no profile {key!r} in {keyspace}")
        self._set_consent(data, topic, channel, "opt-out", source="Unsubscribe link", reason="Unsubscribed")

    def import_status(self, import_id: str) -> str:
        return self._imports[import_id].status

    def same_profile(self, a: tuple[str, str], b: tuple[str, str]) -> bool:
        """Whether two ``(keyspace, key)`` pairs name one profile (after a merge)."""
        pa, pb = self._profiles.get(a), self._profiles.get(b)
        return pa is not None and pa is pb

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

    async def handle(self, request: Request) -> Response:
        try:
            return await self._dispatch(request)
        except _Problem as exc:
            return problem(exc.status, exc.title, exc.detail, exc.headers)

    async def _dispatch(self, request: Request) -> Response:
        now = self.clock.timestamp()
        if request.path == S3_PATH and request.method == "POST":
            return self._s3_upload(request, now)
        if len(request.body) > self.max_body_bytes:
            raise _Problem(413, "Payload too large",
                           f"Request body is {len(request.body)} bytes; the limit is 100 kB")
        if request.path == "/oauth/token" and request.method == "POST":
            return self._token(request, now)
        self._throttle(self._api_window, now, 1.0, self.requests_per_second, "API rate limit exceeded")
        self._authenticate(request, now)
        for method, pattern, route in self._routes:
            match = pattern.fullmatch(request.path)
            if match is not None and method == request.method:
                args = [unquote(g) for g in match.groups()]
                return await route(request, *args)
        if any(pattern.fullmatch(request.path) for _, pattern, _ in self._routes):
            raise _Problem(405, "Method not allowed")
        raise _Problem(404, "Not found", f"No resource at {request.path}")

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

    # -- routing helpers ---------------------------------------------------------------------------------

    def _section(self, section: str) -> None:
        if section not in self.sections:
            raise _Problem(404, "Not found", f"Section {section} does not exist")

    def _keyspace(self, keyspace: str, *, write: bool = False, consents: bool = False) -> dict[str, Any]:
        ks = self.keyspaces.get(keyspace)
        if ks is None:
            raise _Problem(404, "Not found", f"Keyspace {keyspace} does not exist")
        if write and ks.get("read_only"):
            raise _Problem(403, "Forbidden", f"Keyspace {keyspace} is read-only")
        if consents and not ks.get("manage_subscriptions"):
            raise _Problem(403, "Forbidden", f"Keyspace {keyspace} does not allow managing subscriptions")
        return ks

    def _existing(self, keyspace: str, key: str, section: str) -> _SectionData:
        sections = self._profiles.get((keyspace, key))
        if sections is None:
            raise _Problem(404, "Not found", "Profile does not exist")
        return sections.setdefault(section, _SectionData())

    def _ensure(self, keyspace: str, key: str, section: str) -> _SectionData:
        sections = self._profiles.setdefault((keyspace, str(key)), {})
        data = sections.get(section)
        if data is None:
            data = sections[section] = _SectionData()
            key_attr = self.keyspaces.get(keyspace, {}).get("key_attribute")
            if key_attr:
                data.attributes[key_attr] = str(key)
        return data

    @staticmethod
    def _json_object(request: Request) -> dict[str, Any]:
        try:
            body = request.json()
        except ValueError:
            raise _Problem(400, "Bad request", "Body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _Problem(400, "Bad request", "Body must be a JSON object")
        return body

    @staticmethod
    def _merge_patch(request: Request) -> dict[str, Any]:
        ctype = (request.header("content-type") or "").split(";")[0].strip()
        if ctype != "application/merge-patch+json":
            raise _Problem(415, "Unsupported media type", "Use application/merge-patch+json")
        return ApsisSimulator._json_object(request)

    def _stamp(self) -> str:
        return self.clock.now().isoformat().replace("+00:00", "Z")

    def _set_consent(self, data: _SectionData, topic: str, channel: str, kind: str, *, source: str | None,
                     reason: str | None) -> None:
        data.consents[(topic, channel)] = {
            "topic_discriminator": topic, "channel_discriminator": channel, "type": kind,
            "source": source or "One API", "reason": reason, "modified_at": self._stamp()}

    # -- definitions -------------------------------------------------------------------------------------

    async def _list_keyspaces(self, request: Request) -> Response:
        items = [{"discriminator": d, "name": k.get("name", d),
                  "manage_subscriptions": bool(k.get("manage_subscriptions"))}
                 for d, k in self.keyspaces.items()]
        return Response.json({"items": items})

    async def _list_sections(self, request: Request) -> Response:
        items = [{"discriminator": s, "name": s.rsplit(".", 1)[-1]} for s in self.sections]
        return Response.json({"items": items})

    async def _list_attributes(self, request: Request, section: str) -> Response:
        self._section(section)
        return Response.json({"items": list(self.attributes.values())})

    async def _list_topics(self, request: Request, section: str) -> Response:
        self._section(section)
        return Response.json({"items": list(self.topics.values())})

    async def _list_tags(self, request: Request, section: str) -> Response:
        self._section(section)
        return Response.json({"items": list(self.tag_definitions.values())})

    # -- profiles ----------------------------------------------------------------------------------------

    async def _create_profile(self, request: Request, keyspace: str, section: str) -> Response:
        self.writes["create_profile"] += 1
        self._keyspace(keyspace, write=True)
        self._section(section)
        key = self._json_object(request).get("profile_key")
        if not isinstance(key, str | int) or isinstance(key, bool) or str(key) == "":
            raise _Problem(400, "Bad request", "profile_key is required")
        if (keyspace, str(key)) in self._profiles:
            raise _Problem(409, "Conflict", "Profile already exists")
        self._ensure(keyspace, str(key), section)
        return Response.empty(201)

    async def _patch_attributes(self, request: Request, keyspace: str, key: str, section: str) -> Response:
        self.writes["patch_attributes"] += 1
        self._keyspace(keyspace, write=True)
        self._section(section)
        patch = self._merge_patch(request)
        unknown = [name for name in patch if name not in self.attributes]
        if unknown:
            raise _Problem(400, "Validation failed", f"Unknown attribute(s): {', '.join(sorted(unknown))}")
        data = self._existing(keyspace, key, section)
        for name, value in patch.items():
            if value is None:
                data.attributes.pop(name, None)
            else:
                data.attributes[name] = value
        return Response.empty(204)

    async def _delete_profile(self, request: Request, keyspace: str, key: str) -> Response:
        self.writes["delete_profile"] += 1
        self._keyspace(keyspace, write=True)
        data = self._profiles.get((keyspace, key))
        if data is None:
            raise _Problem(404, "Not found", "Profile does not exist")
        for ref in self._keys_of(data):  # a merged profile goes with all its keys
            del self._profiles[ref]
        return Response.empty(204)

    def _keys_of(self, data: dict[str, _SectionData]) -> set[tuple[str, str]]:
        return {ref for ref, d in self._profiles.items() if d is data}

    async def _merge_profiles(self, request: Request) -> Response:
        """P9. Reading of the research (details [U]): the two profiles become one that answers to both keys;
        missing profiles are created; 409 when the merged profile would carry two different keys in one
        keyspace (so two keys of the *same* keyspace never merge); merging a profile with itself is a
        no-op. Data: attributes of the first win, the second fills gaps; per consent slot the later
        ``modified_at`` wins (a tie goes to opt-out); tags are united. Locks (P11) are not simulated."""
        self.writes["merge_profiles"] += 1
        body = self._json_object(request)
        items = body.get("profiles")
        refs: list[tuple[str, str]] = []
        if isinstance(items, list):
            for item in items:
                if not isinstance(item, dict):
                    break
                ks, key = item.get("keyspace_discriminator"), item.get("profile_key")
                if not isinstance(ks, str) or not isinstance(key, str | int) or isinstance(key, bool) \
                        or str(key) == "":
                    break
                refs.append((ks, str(key)))
        if len(refs) != 2 or len(items or []) != 2:
            raise _Problem(400, "Validation failed",
                           "profiles must list two {keyspace_discriminator, profile_key} objects")
        for ks, _ in refs:
            self._keyspace(ks, write=True)
        if refs[0] == refs[1]:
            raise _Problem(400, "Validation failed", "Two different profiles are needed to merge")
        first, second = self._profiles.get(refs[0]), self._profiles.get(refs[1])
        if first is not None and first is second:
            return Response.empty(204)  # already one profile
        keys = (self._keys_of(first) if first is not None else {refs[0]}) | \
            (self._keys_of(second) if second is not None else {refs[1]})
        by_keyspace: dict[str, set[str]] = {}
        for ks, key in keys:
            by_keyspace.setdefault(ks, set()).add(key)
        clash = sorted(ks for ks, ks_keys in by_keyspace.items() if len(ks_keys) > 1)
        if clash:
            raise _Problem(409, "Conflict",
                           f"Profiles have different keys in keyspace {clash[0]} and cannot be merged")
        merged: dict[str, _SectionData]
        if first is not None:
            merged, other = first, second
        else:
            merged, other = (second if second is not None else {}), None
        for section, theirs in (other or {}).items():
            mine = merged.setdefault(section, _SectionData())
            for name, value in theirs.attributes.items():
                mine.attributes.setdefault(name, value)
            for slot, consent in theirs.consents.items():
                have = mine.consents.get(slot)
                if have is None or _later(consent, have):
                    mine.consents[slot] = dict(consent)
            mine.tags |= theirs.tags
        if not merged:
            merged[SECTION_DEFAULT] = _SectionData()
        for ks, key in keys:
            self._profiles[(ks, key)] = merged
            key_attr = self.keyspaces.get(ks, {}).get("key_attribute")
            if key_attr:
                for data in merged.values():
                    data.attributes.setdefault(key_attr, key)
        return Response.empty(204)

    # -- consents ----------------------------------------------------------------------------------------

    async def _post_consent(self, request: Request, keyspace: str, key: str, section: str) -> Response:
        self.writes["consent"] += 1
        self._keyspace(keyspace, consents=True)
        self._section(section)
        body = self._json_object(request)
        topic, channel, kind = (body.get("topic_discriminator"), body.get("channel_discriminator"),
                                body.get("type"))
        if topic not in self.topics:
            raise _Problem(400, "Validation failed", f"Unknown topic {topic}")
        if channel not in CHANNELS:
            raise _Problem(400, "Validation failed", f"Unknown channel {channel}")
        if kind not in WRITABLE_CONSENT_TYPES:
            raise _Problem(400, "Validation failed", f"Consent type {kind} cannot be set via the API")
        data = self._existing(keyspace, key, section)
        previous = data.consents.get((topic, channel))
        if previous is not None and previous["type"] == kind:
            raise _Problem(409, "Conflict", "Transition not supported")
        self._set_consent(data, topic, channel, kind, source=body.get("source"), reason=body.get("reason"))
        return Response.empty(201 if previous is None else 204)

    async def _get_consents(self, request: Request, keyspace: str, key: str, section: str) -> Response:
        self._keyspace(keyspace)
        self._section(section)
        wanted = {v for k, v in request.query_list if k == "consent_types"}
        data = self._existing(keyspace, key, section)
        items = [dict(c) for c in data.consents.values() if not wanted or c["type"] in wanted]
        return Response.json({"items": items})

    # -- tags --------------------------------------------------------------------------------------------

    async def _patch_tags(self, request: Request, keyspace: str, key: str, section: str) -> Response:
        self.writes["patch_tags"] += 1
        self._keyspace(keyspace, write=True)
        self._section(section)
        patch = self._merge_patch(request)
        unknown = [t for t in patch if t not in self.tag_definitions]
        if unknown:
            raise _Problem(400, "Validation failed", f"Unknown tag(s): {', '.join(sorted(unknown))}")
        bad = [t for t, v in patch.items() if v is not None and not isinstance(v, bool)]
        if bad:
            raise _Problem(400, "Validation failed", "Tag values must be true, false or null")
        data = self._existing(keyspace, key, section)
        for tag, value in patch.items():
            if value is True:
                data.tags.add(tag)
            else:
                data.tags.discard(tag)
        return Response.empty(204)

    async def _get_tags(self, request: Request, keyspace: str, key: str, section: str) -> Response:
        self._keyspace(keyspace)
        self._section(section)
        data = self._existing(keyspace, key, section)
        return Response.json({tag: True for tag in sorted(data.tags)})

    # -- consent reports (E1) ----------------------------------------------------------------------------

    async def _create_report(self, request: Request) -> Response:
        self.report_requests += 1
        body = self._json_object(request)
        section = body.get("section_discriminator")
        if not isinstance(section, str):
            raise _Problem(400, "Validation failed", "section_discriminator is required")
        self._section(section)
        topics = body.get("topic_discriminators")
        if not isinstance(topics, list) or not topics or not all(isinstance(t, str) for t in topics):
            raise _Problem(400, "Validation failed", "topic_discriminators must be a non-empty list")
        unknown = sorted(t for t in topics if t not in self.topics)
        if unknown:
            raise _Problem(400, "Validation failed", f"Unknown topic(s): {', '.join(unknown)}")
        channels: list[Any] = []
        if "channel_discriminator" in body:
            channels.append(body["channel_discriminator"])
        for entry in body.get("channels") or []:
            if not isinstance(entry, dict) or not entry.get("field_name"):
                raise _Problem(400, "Validation failed", "channels items need field_name and channel_discriminator")
            channels.append(entry.get("channel_discriminator"))
        if not channels or any(c not in CHANNELS for c in channels):
            raise _Problem(400, "Validation failed", "A known channel_discriminator is required")
        keyspace = body.get("keyspace_discriminator")
        if keyspace is not None:
            self._keyspace(str(keyspace))
        wanted_topics, wanted_channels = set(topics), set(channels)
        rows = []
        for (ks, key), sections in sorted(self._profiles.items()):
            data = sections.get(section)
            if data is None or (keyspace is not None and ks != keyspace):
                continue
            for (topic, channel), consent in sorted(data.consents.items()):
                if topic in wanted_topics and channel in wanted_channels:
                    rows.append((ks, key, topic, channel, str(consent["type"]), str(consent["modified_at"])))
        report_id = f"rep-{next(self._report_seq):06d}"
        now = self.clock.timestamp()
        self._reports[report_id] = _Report(report_id, now, rows)
        url = f"{self.public_url}{REPORT_PATH}/{report_id}"
        expires_at = (self.clock.now() + timedelta(seconds=self.report_lifetime)).isoformat()
        return Response.json({"report_id": report_id, "poll_url": url,
                              "expires_at": expires_at.replace("+00:00", "Z")},
                             status=202, headers=[("location", url)])

    async def _get_report(self, request: Request, report_id: str) -> Response:
        report = self._reports.get(report_id)
        if report is None:
            raise _Problem(404, "Not found", "Report does not exist")
        if self.clock.timestamp() - report.created >= self.report_lifetime:
            raise _Problem(410, "Gone", "The report has expired")
        report.polls += 1
        if report.polls <= self.report_polls_until_ready:
            raise _Problem(404, "Not found", "Report is not ready yet")
        gzip = "gzip" in (request.header("accept-encoding") or "").lower()
        headers = [("content-type", "text/csv; charset=utf-8")]
        if gzip:
            headers.append(("content-encoding", "gzip"))
        return StreamedResponse(200, b"", headers, chunks=self._report_chunks(report, gzip=gzip))

    def _report_chunks(self, report: _Report, *, gzip: bool) -> Iterator[bytes]:
        """The CSV, ``report_chunk_rows`` rows at a time; each gzip chunk is sync-flushed so it can be
        decoded on arrival."""
        compressor = zlib.compressobj(wbits=31) if gzip else None

        def encode(text: str) -> bytes:
            data = text.encode("utf-8")
            if compressor is None:
                return data
            return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)

        cols = self.report_columns
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\r\n")
        writer.writerow([cols.profile_key, cols.keyspace, cols.topic, cols.channel, cols.type, cols.modified_at])
        yield encode(buf.getvalue())
        step = max(1, self.report_chunk_rows)
        for start in range(0, len(report.rows), step):
            buf.seek(0)
            buf.truncate()
            writer.writerows((key, ks, topic, channel, kind, modified)
                             for ks, key, topic, channel, kind, modified in report.rows[start:start + step])
            yield encode(buf.getvalue())
        if compressor is not None:
            yield compressor.flush()

    # -- imports -----------------------------------------------------------------------------------------

    def _pending_imports(self) -> int:
        return sum(1 for imp in self._imports.values() if imp.status not in ("completed", "error"))

    async def _create_import(self, request: Request, section: str) -> Response:
        self.writes["create_import"] += 1
        self._section(section)
        now = self.clock.timestamp()
        if self._pending_imports() >= self.max_pending_imports:
            self.rate_limited += 1
            raise _Problem(429, "Too many requests", "At most 3 imports may be pending at once")
        self._throttle(self._import_window, now, 60.0, self.imports_per_minute,
                       "Import endpoint allows 10 requests per minute")
        spec = self._json_object(request)
        mapping = spec.get("keyspace_mapping")
        if not isinstance(mapping, dict) or not mapping.get("field_selector"):
            raise _Problem(400, "Validation failed", "keyspace_mapping with field_selector is required")
        self._keyspace(str(mapping.get("keyspace_discriminator")), write=True, consents=True)
        versions = {v["id"]: d for d, a in self.attributes.items() for v in a["versions"]}
        for am in spec.get("attribute_mappings") or []:
            if am.get("attribute_version_id") not in versions:
                raise _Problem(400, "Validation failed",
                               f"Unknown attribute version {am.get('attribute_version_id')}")
        for cm in spec.get("consent_mappings") or []:
            for c in cm.get("consents") or []:
                if (c.get("topic_discriminator") not in self.topics
                        or c.get("channel_discriminator") not in CHANNELS):
                    raise _Problem(400, "Validation failed", "Unknown topic or channel in consent_mappings")
                if c.get("type") not in WRITABLE_CONSENT_TYPES:
                    raise _Problem(400, "Validation failed", "Consent type must be opt-in or opt-out")
        for tm in spec.get(self.import_tag_mapping_key) or []:
            if not isinstance(tm, dict) or not tm.get("field_selector") \
                    or tm.get(self.import_tag_field) not in self.tag_definitions:
                raise _Problem(400, "Validation failed", f"Unknown tag in {self.import_tag_mapping_key}")
        import_id = f"imp-{next(self._import_seq):06d}"
        expires = now + self.upload_url_lifetime
        signature = hmac.new(self._signing_key, import_id.encode(), hashlib.sha256).hexdigest()
        fields = {"key": f"imports/{import_id}.csv", "policy": base64.b64encode(import_id.encode()).decode(),
                  "x-amz-algorithm": "AWS4-HMAC-SHA256", "x-amz-signature": signature}
        self._imports[import_id] = _Import(import_id, section, spec, fields, expires)
        self.max_concurrent_imports_seen = max(self.max_concurrent_imports_seen, self._pending_imports())
        expires_at = (self.clock.now() + timedelta(seconds=self.upload_url_lifetime)).isoformat()
        return Response.json({"import_id": import_id, "file_upload_url": self.public_url + S3_PATH,
                              "file_upload_body": fields,
                              "file_upload_url_expires_at": expires_at.replace("+00:00", "Z")}, status=201)

    def _s3_upload(self, request: Request, now: float) -> Response:
        """A pre-signed S3 POST: form fields replayed, the file last, and no other auth allowed."""
        self.writes["upload"] += 1
        if request.header("authorization"):
            return _s3_error(400, "InvalidArgument", "Only one auth mechanism allowed")
        parts = _multipart(request)
        if parts is None or not parts or parts[-1][0] != "file":
            return _s3_error(400, "InvalidArgument",
                             "POST requires exactly one file upload, as the last field")
        form = {name: value for name, value, _ in parts[:-1]}
        imp = next((i for i in self._imports.values() if i.upload_fields["key"] == form.get("key")), None)
        if imp is None or any(form.get(k) != v for k, v in imp.upload_fields.items()):
            return _s3_error(403, "AccessDenied", "Invalid according to Policy")
        if now > imp.upload_expires:
            return _s3_error(403, "AccessDenied", "Invalid according to Policy: Policy expired")
        content = parts[-1][1]
        if isinstance(content, str):
            content = content.encode("utf-8")
        if len(content) > self.max_import_file_bytes:
            return _s3_error(400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")
        if imp.status == "waiting_for_file":
            imp.csv = content
            imp.status = "queued"
            imp.polls_in_status = 0
            if self.import_rows_per_second:
                rows = max(0, content.count(b"\n") - 1)
                imp.ready_at = now + rows / self.import_rows_per_second
        return Response.empty(204)

    async def _get_import(self, request: Request, section: str, import_id: str) -> Response:
        self._section(section)
        imp = self._imports.get(import_id)
        if imp is None or imp.section != section:
            raise _Problem(404, "Not found", "Import does not exist")
        if imp.status in ("queued", "in_progress") and imp.ready_at is not None:
            if self.clock.timestamp() >= imp.ready_at:
                self._apply_import(imp)
            else:
                imp.status = "in_progress"
        elif imp.status in ("queued", "in_progress"):
            imp.polls_in_status += 1
            if imp.polls_in_status > self.import_polls_per_step:
                imp.polls_in_status = 0
                if imp.status == "queued":
                    imp.status = "in_progress"
                else:
                    self._apply_import(imp)
        result: dict[str, Any] = {"import_id": imp.import_id, "status": imp.status}
        if imp.status == "completed":
            result["imported_profiles"] = imp.rows_imported
        if imp.error:
            result["error"] = imp.error
        return Response.json({"result": result})

    def _apply_import(self, imp: _Import) -> None:
        """Apply the CSV: ``1`` cells apply that mapping's consent; empty attribute cells are left alone
        unless ``clear_existing_attributes`` ([U] meaning) is set."""
        spec = imp.spec
        mapping = spec["keyspace_mapping"]
        keyspace, key_col = str(mapping["keyspace_discriminator"]), str(mapping["field_selector"])
        options = spec.get("options") or {}
        update_existing = bool(options.get("update_existing_profiles", True))
        clear_empty = bool(options.get("clear_existing_attributes", False))
        versions = {v["id"]: d for d, a in self.attributes.items() for v in a["versions"]}
        reader = csv.DictReader(io.StringIO((imp.csv or b"").decode("utf-8")))
        if key_col not in (reader.fieldnames or []):
            imp.status, imp.error = "error", f"Column {key_col} not found in file"
            return
        count = 0
        for row in reader:
            key = (row.get(key_col) or "").strip()
            if not key:
                continue
            exists = (keyspace, key) in self._profiles
            if exists and not update_existing:
                continue
            data = self._ensure(keyspace, key, imp.section)
            for am in spec.get("attribute_mappings") or []:
                value = row.get(am["field_selector"])
                name = versions[am["attribute_version_id"]]
                if value:
                    data.attributes[name] = value
                elif clear_empty and value is not None:
                    data.attributes.pop(name, None)
            for cm in spec.get("consent_mappings") or []:
                if not (row.get(cm.get("address_field_selector", "")) or "").strip():
                    continue  # no address on this channel: nothing to consent with
                for c in cm.get("consents") or []:
                    if (row.get(c["field_selector"]) or "").strip() != "1":
                        continue
                    slot = (c["topic_discriminator"], c["channel_discriminator"])
                    current = data.consents.get(slot)
                    if (c["type"] == "opt-in" and current is not None and current["type"] == "opt-out"
                            and not c.get("resubscribe_if_opted_out")):
                        continue
                    if current is None or current["type"] != c["type"]:
                        self._set_consent(data, slot[0], slot[1], c["type"], source="Import", reason=None)
            for tm in spec.get(self.import_tag_mapping_key) or []:
                cell = (row.get(tm["field_selector"]) or "").strip()
                if cell == "1":
                    data.tags.add(tm[self.import_tag_field])
                elif cell == "0":
                    data.tags.discard(tm[self.import_tag_field])
            count += 1
        imp.rows_imported = count
        imp.status = "completed"


def _later(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether consent ``a`` should replace ``b`` in a merge: later ``modified_at``, a tie to opt-out."""
    ta, tb = str(a.get("modified_at") or ""), str(b.get("modified_at") or "")
    return ta > tb or (ta == tb and a.get("type") == "opt-out")


def _disposition_param(header: str, name: str) -> str | None:
    match = re.search(r'(?:^|;)\s*' + name + r'="([^"]*)"', header)
    return match.group(1) if match else None


def _multipart(request: Request) -> list[tuple[str, bytes | str, str | None]] | None:
    """Parse multipart/form-data into ``(name, value, filename)`` in order; None if it is not multipart."""
    ctype = request.header("content-type") or ""
    if not ctype.startswith("multipart/form-data"):
        return None
    message = BytesParser(policy=compat32).parsebytes(
        b"Content-Type: " + ctype.encode("latin-1") + b"\r\nMIME-Version: 1.0\r\n\r\n" + request.body)
    parts: list[tuple[str, bytes | str, str | None]] = []
    if not message.is_multipart():
        return None
    for part in message.get_payload():
        if not isinstance(part, Message):
            continue
        disposition = part.get("content-disposition", "")
        name = _disposition_param(disposition, "name")
        filename = _disposition_param(disposition, "filename")
        raw = part.get_payload(decode=True)
        payload = raw if isinstance(raw, bytes) else b""
        if name is None:
            continue
        parts.append((name, payload if filename else payload.decode("utf-8"), filename))
    return parts


__all__ = ["DEFAULT_ATTRIBUTES", "DEFAULT_TAGS", "DEFAULT_TOPICS", "ApsisSimulator", "StreamedResponse"]
