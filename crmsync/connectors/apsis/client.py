"""The APSIS One API client: typed operations over the shared retrying :class:`ApiClient`.

What it guarantees, and why (research ``efficy_apsis.md`` §4–§9):

* **Auth**: OAuth2 client credentials, one cached token renewed before expiry, refreshed once after a
  401/403 and the request retried once (expired tokens may surface as 403, §9.6). The token endpoint allows
  10 requests a minute, so the token is never fetched per request.
* **Limits**: 100 requests/s per *account* (all API keys together); the default client rate is 50/s with the
  shared token bucket (burst = rate), which keeps any one-second window at or under 100 even after an idle
  spell and leaves headroom for other integrations on the account. Bodies above 100 kB get 413, so merge
  patches are split before sending and anything that cannot be split is refused locally. Imports: 10
  creations a minute and 3 pending at once (:class:`~crmsync.connectors.apsis.limits.ImportLimiter`).
* **Idempotency**: 409 on profile create ("exists") and consent write ("already in that state") are
  successes (§9.7).
* **Consent report (E1)**: created once, polled while it answers 404, then its CSV is *streamed* and parsed
  record by record (§9.8: holding an 8 M-contact export in memory is what ran out of memory). Creations
  take a 1/s window and polls a 60/min window (exports and export downloads, §8.3); the poll URL gets the
  bearer token only when it is on the API host. A 410 means the report expired: request a new one.
* **Errors**: problem+json parsed into typed errors (:mod:`~crmsync.connectors.apsis.problems`); malformed
  2xx JSON is detected in :meth:`check_response`, so the base retry loop retries it.
"""

from __future__ import annotations

import codecs
import zlib
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, Literal, cast
from urllib.parse import quote

import httpx
import structlog
import trio

from crmsync.clock import WallClock
from crmsync.connectors.apsis.auth import TOKEN_PATH, ClientCredentials, TokenCache
from crmsync.connectors.apsis.limits import ImportLimiter, SlidingWindowLimiter
from crmsync.connectors.apsis.problems import (
    SYSTEM,
    ApsisAuthError,
    ApsisConflictError,
    ApsisGoneError,
    ApsisMergeConflictError,
    ApsisNotFoundError,
    ApsisPayloadTooLargeError,
    ConsentReportExpiredError,
    ConsentReportTimeoutError,
    ConsentReportUnreadableError,
    ImportFailedError,
    raise_for_problem,
)
from crmsync.connectors.apsis.records import (
    KEYSPACE_CRM_ID,
    MAX_BODY_BYTES,
    SECTION_DEFAULT,
    ApsisProfile,
    AttributeDefinition,
    Consent,
    ConsentKey,
    ConsentReportFormatError,
    ConsentReportParser,
    ConsentReportRow,
    ConsentReportSettings,
    ImportFile,
    ImportSettings,
    TagEncoding,
    attributes_patch,
    build_imports,
    consent_body,
    consent_report_body,
    dumps,
    parse_tags,
    split_patch,
    tags_patch,
)
from crmsync.connectors.errors import MalformedResponseError, RateLimitedError, RetriableApiError
from crmsync.connectors.http import ApiClient, RequestObserver, RetryPolicy, json_body, status_class

log = structlog.get_logger("crmsync.connectors.apsis.client")

MERGE_PATCH = "application/merge-patch+json"
ACCEPT = "application/json, application/problem+json"
#: Internal marker: the request must go out without the bearer token (S3 upload). Removed before sending.
_NO_AUTH = "x-crmsync-no-auth"
REPORT_PATH = "/audience/profiles/reports/consents"
MERGE_PATH = "/audience/profiles/merges"
_GZIP_MAGIC = b"\x1f\x8b"

ConsentOutcome = Literal["created", "changed", "unchanged"]
ImportStatus = Literal["queued", "in_progress", "waiting_for_file", "completed", "error"]
FINAL_IMPORT_STATUSES = ("completed", "error")


@dataclass(frozen=True)
class ImportResult:
    """How one bulk import ended: its id, final status, rows sent and the raw status body."""

    import_id: str
    status: str
    rows: int
    body: Mapping[str, Any]


@dataclass(frozen=True)
class UpsertResult:
    """What :meth:`ApsisClient.upsert_profile` wrote; ``writes == 0`` means the profile was unchanged."""

    created: bool
    attribute_requests: int
    consents_written: int
    tag_requests: int
    create_requests: int
    #: consents whose state the writes changed (APSIS answered created/changed): slot -> (type written,
    #: when APSIS acknowledged it, by the client's clock)
    consents_changed: Mapping[ConsentKey, tuple[str, datetime]] = field(default_factory=dict)

    @property
    def writes(self) -> int:
        return self.create_requests + self.attribute_requests + self.consents_written + self.tag_requests


def _is_json(response: httpx.Response) -> bool:
    return "json" in response.headers.get("content-type", "")


def _check_json_body(response: httpx.Response) -> None:
    """A 2xx with a JSON content type must parse; garbage is retriable (the base loop retries it)."""
    if response.content and _is_json(response):
        json_body(SYSTEM, response)


class _TokenEndpoint(ApiClient):
    """``POST /oauth/token`` on its own lane: its own concurrency slot and its own 10/minute window.

    Separate from :class:`ApsisClient` because the token is fetched from inside ``prepare_request``, which
    runs while a request holds one of the client's concurrency slots; sharing the slots could deadlock
    when every slot waits for the token.
    """

    system = SYSTEM

    def __init__(self, base_url: str, credentials: ClientCredentials, *, http: httpx.AsyncClient,
                 observer: RequestObserver | None, retry: RetryPolicy | None, per_minute: int):
        super().__init__(base_url, http=http, observer=observer, retry=retry, max_concurrency=1)
        self._credentials = credentials
        self._window = SlidingWindowLimiter(per_minute, 60.0, name="apsis_token")

    def check_response(self, response: httpx.Response) -> None:
        raise_for_problem(response)
        body = json_body(SYSTEM, response)
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise MalformedResponseError(SYSTEM, "token response without access_token",
                                         status=response.status_code)

    async def fetch(self) -> Mapping[str, Any]:
        await self._window.acquire()
        response = await self.request("POST", TOKEN_PATH, json=self._credentials.token_request(),
                                      headers={"accept": ACCEPT})
        body: Mapping[str, Any] = json_body(SYSTEM, response)
        return body


class ApsisClient(ApiClient):
    """APSIS One client bound to one section and one keyspace (the CRM-id keyspace by default).

    Settings that rest on unverified facts ([U] in the research) are constructor arguments:
    ``max_body_bytes`` (100 kB read as 100 000 bytes), ``tag_encoding`` (tag merge-patch values),
    ``import_poll_interval``/``import_timeout`` (how imports are awaited), ``token_margin``,
    ``min_token_age_for_403_refresh`` (a 403 on a token younger than this is a permission error, not
    expiry, so it does not burn one of the 10 token requests a minute), ``consent_report`` (the consent
    report's body shape, poll URL, CSV columns: see :class:`ConsentReportSettings`).
    """

    system = SYSTEM

    def __init__(
        self,
        base_url: str,
        *,
        client_id: str,
        client_secret: str,
        section: str = SECTION_DEFAULT,
        keyspace: str = KEYSPACE_CRM_ID,
        clock: WallClock | None = None,
        http: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        observer: RequestObserver | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        max_concurrency: int = 4,
        rate_limit: float | None = 50.0,
        rate_burst: int | None = None,
        token_margin: float = 600.0,
        token_requests_per_minute: int = 10,
        min_token_age_for_403_refresh: float = 60.0,
        max_body_bytes: int = MAX_BODY_BYTES,
        imports_per_minute: int = 10,
        concurrent_imports: int = 3,
        import_poll_interval: float = 5.0,
        import_poll_first: float = 0.5,
        import_timeout: float = 24 * 3600.0,
        tag_encoding: TagEncoding = TagEncoding(),
        consent_source: str | None = None,
        consent_report: ConsentReportSettings = ConsentReportSettings(),
        report_creations_per_second: int = 1,
        report_polls_per_minute: int = 60,
    ):
        super().__init__(base_url, http=http, transport=transport, observer=observer, retry=retry,
                         timeout=timeout, max_concurrency=max_concurrency, rate_limit=rate_limit,
                         rate_burst=rate_burst)
        self.section = section
        self.keyspace = keyspace
        self.clock = clock
        self.max_body_bytes = max_body_bytes
        self.tag_encoding = tag_encoding
        self.consent_source = consent_source
        self.import_poll_interval = import_poll_interval
        self.import_poll_first = import_poll_first
        self.import_timeout = import_timeout
        self.min_token_age_for_403_refresh = min_token_age_for_403_refresh
        self.imports = ImportLimiter(imports_per_minute, concurrent_imports)
        self.consent_report_settings = consent_report
        self._report_creations = SlidingWindowLimiter(report_creations_per_second, 1.0, name="apsis_reports",
                                                      margin=0.05)  # transit-time slack, see SlidingWindowLimiter
        self._report_polls = SlidingWindowLimiter(report_polls_per_minute, 60.0, name="apsis_report_polls",
                                                 margin=1.0)
        self._max_concurrency = max_concurrency
        self._token_endpoint = _TokenEndpoint(
            self.base_url, ClientCredentials(client_id, client_secret), http=self.http, observer=observer,
            retry=retry, per_minute=token_requests_per_minute)
        self.tokens = TokenCache(self._token_endpoint.fetch, margin=token_margin, clock=clock)

    # -- ApiClient override points -----------------------------------------------------------------------

    async def prepare_request(self, request: httpx.Request) -> None:
        if _NO_AUTH in request.headers:
            del request.headers[_NO_AUTH]
            return
        token = await self.tokens.get()
        request.headers["authorization"] = f"Bearer {token.value}"
        request.headers.setdefault("accept", ACCEPT)

    def check_response(self, response: httpx.Response) -> None:
        if response.status_code >= 300:
            raise_for_problem(response, stale_generation=self._generation_used(response))
        _check_json_body(response)

    def _generation_used(self, response: httpx.Response) -> int | None:
        auth = response.request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return None
        return self.tokens.generation_of(auth[len("Bearer "):])

    async def request(
        self,
        method: str,
        path: str,
        *,
        auth: bool = True,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """:meth:`ApiClient.request` plus: one token refresh and one retry after 401/403.

        ``auth=False`` sends without the bearer token (the S3 upload of an import file).
        """
        hdrs = dict(headers or {})
        if not auth:
            hdrs[_NO_AUTH] = "1"
        try:
            return await super().request(method, path, headers=hdrs, **kwargs)
        except ApsisAuthError as exc:
            if not auth or not self._should_refresh(exc):
                raise
            log.info("apsis_auth_refused", status=exc.status, method=method, path=path.split("?", 1)[0])
            await self.tokens.refresh(exc.stale_generation)
            return await super().request(method, path, headers=hdrs, **kwargs)

    def _should_refresh(self, exc: ApsisAuthError) -> bool:
        if exc.status != 403:
            return True
        token = self.tokens.current
        if token is None or exc.stale_generation is None:
            return True  # the token used is already gone or replaced: retry with the current one
        return trio.current_time() - token.issued_at >= self.min_token_age_for_403_refresh

    # -- helpers ------------------------------------------------------------------------------------------

    def _profile_path(self, key: str, tail: str, *, keyspace: str | None = None, v2: bool = False) -> str:
        ks = quote(keyspace or self.keyspace, safe="")
        pk = quote(str(key), safe="")
        prefix = "/v2" if v2 else ""
        sec = quote(self.section, safe="")
        return f"{prefix}/audience/keyspaces/{ks}/profiles/{pk}/sections/{sec}/{tail}"

    async def _send_json(self, method: str, path: str, body: Any, *,
                         content_type: str = "application/json") -> httpx.Response:
        """Send a JSON body, refusing locally any body the API would answer with 413."""
        data = dumps(body)
        if len(data) > self.max_body_bytes:
            raise ApsisPayloadTooLargeError(
                SYSTEM, f"request body of {len(data)} bytes exceeds {self.max_body_bytes}; not sent")
        return await self.request(method, path, content=data, headers={"content-type": content_type})

    async def _items(self, path: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        response = await self.request("GET", path, params=params)
        body = json_body(SYSTEM, response)
        items = body.get("items", []) if isinstance(body, dict) else body
        return [i for i in items if isinstance(i, dict)]

    # -- definitions (§5 D1–D5) -------------------------------------------------------------------------

    async def list_keyspaces(self) -> list[dict[str, Any]]:
        return await self._items("/audience/keyspaces")

    async def list_attributes(self) -> list[AttributeDefinition]:
        """Attribute definitions of the section (discriminators for v2, version ids for imports)."""
        items = await self._items(f"/audience/sections/{quote(self.section, safe='')}/attributes")
        return [AttributeDefinition.from_api(i) for i in items]

    async def attribute_versions(self) -> dict[str, str]:
        """Discriminator → current (non-deprecated) version id, as import mappings need."""
        return {a.discriminator: a.version_id for a in await self.list_attributes() if a.version_id}

    async def list_topics(self) -> list[dict[str, Any]]:
        """Consent 2.0 topics; names repeat across folders, so key on ``discriminator`` (§9.12)."""
        return await self._items(f"/v2/audience/sections/{quote(self.section, safe='')}/topics")

    async def list_tags(self) -> list[dict[str, Any]]:
        return await self._items(f"/audience/sections/{quote(self.section, safe='')}/tags")

    # -- profiles (§5 P1, P2, P10) ----------------------------------------------------------------------

    async def create_profile(self, key: str, *, keyspace: str | None = None) -> bool:
        """Create the profile in the keyspace; True if created, False if it already existed (409)."""
        ks = quote(keyspace or self.keyspace, safe="")
        path = f"/audience/keyspaces/{ks}/sections/{quote(self.section, safe='')}/profiles"
        try:
            await self._send_json("POST", path, {"profile_key": str(key)})
        except ApsisConflictError:
            return False
        return True

    async def patch_attributes(self, key: str, patch: Mapping[str, Any], *,
                               keyspace: str | None = None) -> int:
        """Apply a v2 merge-patch keyed by attribute discriminator (``None`` clears).

        The profile must exist (v2 never creates, §0). Patches above the body limit are split into several
        requests. Returns the number of requests sent (0 for an empty patch: no write).
        """
        path = self._profile_path(key, "attributes", keyspace=keyspace, v2=True)
        parts = split_patch(patch, self.max_body_bytes - 16)
        for part in parts:
            await self._send_json("PATCH", path, part, content_type=MERGE_PATCH)
        return len(parts)

    async def delete_profile(self, key: str, *, keyspace: str | None = None) -> None:
        ks = quote(keyspace or self.keyspace, safe="")
        await self.request("DELETE", f"/audience/keyspaces/{ks}/profiles/{quote(str(key), safe='')}")

    # -- consents (§5 C1, C2) ---------------------------------------------------------------------------

    async def set_consent(self, key: str, topic: str, channel: str, type: str, *,
                          reason: str | None = None, source: str | None = None,
                          keyspace: str | None = None) -> ConsentOutcome:
        """Write an ``opt-in``/``opt-out`` for a topic on a channel.

        201 → created, 204 → changed, 200 → no change needed, 409 ("transition not supported": already in
        that state) → unchanged. All are successes.
        """
        body = consent_body(topic, channel, type, reason=reason, source=source or self.consent_source)
        path = self._profile_path(key, "consents", keyspace=keyspace, v2=True)
        try:
            response = await self._send_json("POST", path, body)
        except ApsisConflictError:
            return "unchanged"
        return {201: "created", 204: "changed"}.get(response.status_code, "unchanged")  # type: ignore[return-value]

    async def opt_in(self, key: str, topic: str, channel: str, **kwargs: Any) -> ConsentOutcome:
        return await self.set_consent(key, topic, channel, "opt-in", **kwargs)

    async def opt_out(self, key: str, topic: str, channel: str, **kwargs: Any) -> ConsentOutcome:
        return await self.set_consent(key, topic, channel, "opt-out", **kwargs)

    async def get_consents(self, key: str, *, types: Sequence[str] | None = None,
                           keyspace: str | None = None) -> list[Consent]:
        """A profile's consents, optionally only some types (``consent_types`` is repeatable)."""
        params = [("consent_types", t) for t in types] if types else None
        path = self._profile_path(key, "consents", keyspace=keyspace, v2=True)
        response = await self.request("GET", path, params=params)
        body = json_body(SYSTEM, response)
        items = body.get("items", []) if isinstance(body, dict) else body
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise MalformedResponseError(SYSTEM, "consents answer is not a list of objects",
                                         status=response.status_code)
        try:
            return [Consent.from_api(i) for i in items]
        except ValueError as exc:
            raise MalformedResponseError(SYSTEM, f"consents answer: {exc}", status=response.status_code) from None

    async def opted_out_profiles(self, keys: Iterable[str], topic: str, channel: str) -> list[str]:
        """Which of ``keys`` are opted out of ``topic`` on ``channel`` (the consent backflow).

        Polls C2 per known profile, ``max_concurrency`` at a time (one request per profile: for many
        profiles prefer :meth:`consent_report`). Unknown profiles are skipped.
        """
        found: set[str] = set()
        keys = list(keys)
        gate = trio.Semaphore(self._max_concurrency)

        async def one(key: str) -> None:
            try:
                consents = await self.get_consents(key, types=("opt-out",))
            except ApsisNotFoundError:
                return
            finally:
                gate.release()
            if any(c.topic == topic and c.channel == channel and c.type == "opt-out" for c in consents):
                found.add(key)

        async with trio.open_nursery() as nursery:
            for key in keys:
                await gate.acquire()
                nursery.start_soon(one, key)
        return [k for k in keys if k in found]

    # -- consent report (§5 E1) ------------------------------------------------------------------------

    async def consent_report(self, topics: Sequence[str], channel: str
                             ) -> AsyncGenerator[ConsentReportRow, None]:
        """Every consent on ``topics`` x ``channel`` in the section, streamed row by row (§5 E1).

        Creates the report, polls its URL every ``poll_interval`` while it answers 404 (not ready), then
        reads the 200 CSV as a stream (gzip undone whether it comes as ``Content-Encoding`` or as a gzip
        file) and yields rows as records complete: the body is never held whole. Rows of other keyspaces
        are skipped when the report says which keyspace a key belongs to.

        Raises :class:`ConsentReportExpiredError` on 410 (start again with a new report),
        :class:`ConsentReportTimeoutError` when the report stays pending past ``timeout``,
        :class:`ConsentReportUnreadableError` when the CSV lacks the configured columns, and
        :class:`RetriableApiError` when the download breaks off. Use it under ``contextlib.aclosing``.
        """
        settings = self.consent_report_settings
        body = consent_report_body(self.section, topics, channel, self.keyspace, settings)
        await self._report_creations.acquire()
        created = await self._send_json("POST", REPORT_PATH, body)
        poll_url = self._poll_url(created)
        log.info("apsis_consent_report_requested", topics=len(topics), channel=channel)
        deadline = trio.current_time() + settings.timeout
        polls = 0
        while True:
            polls += 1
            try:
                download = await self._report_get(poll_url)
                break
            except ApsisNotFoundError:
                if trio.current_time() + settings.poll_interval > deadline:
                    raise ConsentReportTimeoutError(
                        f"consent report still pending after {polls} polls "
                        f"({settings.timeout:.0f}s)") from None
                await trio.sleep(settings.poll_interval)
            except ApsisGoneError as exc:
                raise ConsentReportExpiredError() from exc
        parser = ConsentReportParser(channel, self.keyspace, settings.columns)
        try:
            async with aclosing(_report_text(download)) as texts:
                async for text in texts:
                    for row in parser.feed(text):
                        yield row
            for row in parser.close():
                yield row
        except ConsentReportFormatError as exc:
            raise ConsentReportUnreadableError(SYSTEM, str(exc), status=download.status_code) from exc
        except (httpx.TransportError, httpx.StreamError, zlib.error) as exc:
            raise RetriableApiError(SYSTEM, f"consent report download broke off: {type(exc).__name__}",
                                    status=download.status_code) from exc
        finally:
            with trio.CancelScope(shield=True):
                await download.aclose()
        log.info("apsis_consent_report_read", channel=channel, rows=parser.rows_read, polls=polls)

    def _poll_url(self, response: httpx.Response) -> str:
        body: Any = None
        if response.content and _is_json(response):
            body = json_body(SYSTEM, response)
        if isinstance(body, dict):
            for name in self.consent_report_settings.poll_url_fields:
                value = body.get(name)
                if isinstance(value, str) and value:
                    return value
        location = response.headers.get("location")
        if location:
            return location
        raise MalformedResponseError(SYSTEM, "consent report answer without a poll URL",
                                     status=response.status_code)

    def _poll_auth(self, url: str) -> bool:
        mode = self.consent_report_settings.poll_auth
        if mode != "same-host":
            return mode == "always"
        if not url.startswith(("http://", "https://")):
            return True
        target, base = httpx.URL(url), httpx.URL(self.base_url)
        return (target.scheme, target.host, target.port) == (base.scheme, base.host, base.port)

    async def _report_get(self, url: str) -> httpx.Response:
        """GET a report's poll URL with retries and one token refresh; returns a 2xx response whose body
        is still unread (the caller streams it and closes it), raises the typed error otherwise."""
        auth = self._poll_auth(url)
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            await self._report_polls.acquire()
            try:
                return await self._open_stream(url, auth=auth)
            except ApsisAuthError as exc:
                if refreshed or not auth or not self._should_refresh(exc):
                    raise
                refreshed = True
                log.info("apsis_auth_refused", status=exc.status, method="GET", path="<report poll url>")
                await self.tokens.refresh(exc.stale_generation)
            except RetriableApiError as exc:
                if attempt >= self.retry.attempts:
                    raise
                delay = self.retry.delay(attempt, exc.retry_after)
                log.info("api_retry", system=SYSTEM, method="GET", path="<report poll url>", attempt=attempt,
                         delay_s=round(delay, 3), error=exc.message, status=exc.status)
                await trio.sleep(delay)

    async def _open_stream(self, url: str, *, auth: bool) -> httpx.Response:
        # The rate limit and a concurrency slot cover sending the request and receiving the headers; the
        # body is then read at the consumer's pace without holding a slot (the consumer may call APSIS).
        if self._rate is not None:
            waited = await self._rate.acquire()
            if waited:
                self.observer.rate_limit_wait(SYSTEM, waited)
        headers = {"accept": "text/csv, application/problem+json", "accept-encoding": "gzip"}
        if not auth:
            headers[_NO_AUTH] = "1"
        async with self._limiter:
            request = self.http.build_request("GET", self.url(url), headers=headers)
            await self.prepare_request(request)
            try:
                response = await self.http.send(request, stream=True)
            except httpx.TimeoutException as exc:
                self.observer.api_request(SYSTEM, "error")
                raise RetriableApiError(SYSTEM, f"timeout: {type(exc).__name__}") from exc
            except httpx.TransportError as exc:
                self.observer.api_request(SYSTEM, "error")
                raise RetriableApiError(SYSTEM, f"connection failed: {type(exc).__name__}") from exc
        self.observer.api_request(SYSTEM, status_class(response.status_code))
        if response.status_code >= 300:
            try:
                await response.aread()
            finally:
                await response.aclose()
            raise_for_problem(response, stale_generation=self._generation_used(response))
        return response

    # -- profile merge (§5 P9) ------------------------------------------------------------------------

    async def merge_profiles(self, a: tuple[str, str], b: tuple[str, str]) -> None:
        """Merge two profiles given as ``(keyspace, key)`` into one (§5 P9); missing ones are created.

        Raises :class:`ApsisMergeConflictError` on 409 (the profiles cannot be merged).
        """
        body = {"profiles": [{"keyspace_discriminator": ks, "profile_key": str(key)} for ks, key in (a, b)]}
        try:
            await self._send_json("PUT", MERGE_PATH, body)
        except ApsisConflictError as exc:
            raise ApsisMergeConflictError(exc.message, title=exc.title, detail=exc.detail) from exc

    # -- tags (§5 P5, P6) -------------------------------------------------------------------------------

    async def patch_tags(self, key: str, add: Iterable[str] = (), remove: Iterable[str] = (), *,
                         keyspace: str | None = None) -> int:
        """Add/remove tags with a merge-patch (value encoding from ``tag_encoding``, [U]).

        Returns the number of requests sent (0 when there is nothing to change).
        """
        patch = tags_patch(add, remove, self.tag_encoding)
        path = self._profile_path(key, "tags", keyspace=keyspace)
        parts = split_patch(patch, self.max_body_bytes - 16)
        for part in parts:
            await self._send_json("PATCH", path, part, content_type=MERGE_PATCH)
        return len(parts)

    async def get_tags(self, key: str, *, keyspace: str | None = None) -> frozenset[str]:
        response = await self.request("GET", self._profile_path(key, "tags", keyspace=keyspace))
        return parse_tags(json_body(SYSTEM, response), self.tag_encoding)

    # -- one profile, end to end (§6.1) -----------------------------------------------------------------

    async def upsert_profile(self, desired: ApsisProfile, current: ApsisProfile | None = None, *,
                             managed_tags: Iterable[str] = ()) -> UpsertResult:
        """Create (if not known to exist), patch changed attributes, write changed consents, fix tags.

        ``current`` is what crmsync last wrote or read; when given, unchanged parts cause no write call.
        Tags in ``managed_tags`` (e.g. from CRM queries) that ``desired`` lacks are removed.
        """
        create_requests = 0
        created = False
        if current is None:
            created = await self.create_profile(desired.key)
            create_requests = 1
        patch = attributes_patch(desired.attributes, current.attributes if current else None)
        attribute_requests = await self.patch_attributes(desired.key, patch) if patch else 0
        consents_written = 0
        changed: dict[ConsentKey, tuple[str, datetime]] = {}
        for ck, kind in sorted(desired.consents.items(), key=lambda kv: (kv[0].topic, kv[0].channel)):
            if current is not None and current.consents.get(ck) == kind:
                continue
            if await self.set_consent(desired.key, ck.topic, ck.channel, kind) != "unchanged":
                changed[ck] = (kind, self.clock.now() if self.clock is not None else datetime.now(UTC))
            consents_written += 1
        have = current.tags if current is not None else frozenset()
        add = desired.tags - have
        if created:
            remove: set[str] | frozenset[str] = frozenset()  # a profile made just now carries no tag
        elif current is None:
            remove = set(managed_tags) - desired.tags
        else:
            remove = (have & set(managed_tags)) - desired.tags
        tag_requests = await self.patch_tags(desired.key, add, remove) if add or remove else 0
        return UpsertResult(created=created, attribute_requests=attribute_requests,
                            consents_written=consents_written, tag_requests=tag_requests,
                            create_requests=create_requests, consents_changed=changed)

    # -- bulk imports (§7) ------------------------------------------------------------------------------

    async def run_import(self, file: ImportFile) -> ImportResult:
        """Create an import, upload its CSV to the pre-signed URL, poll until it is final.

        Holds one of the 3 import slots for its whole life and takes one of the 10 creations a minute.
        Raises :class:`ImportFailedError` on ``error`` or when ``import_timeout`` passes.
        """
        return await self.run_import_stream(file.request, file.csv, rows=file.rows)

    async def run_import_stream(self, request: Mapping[str, Any], csv: bytes | IO[bytes], *,
                                rows: int) -> ImportResult:
        """:meth:`run_import` for a CSV given as bytes or as a file object (streamed from its start on each
        upload attempt, so a full-sync file is never held in memory).

        Status polls start after ``import_poll_first`` seconds and back off (x2) to ``import_poll_interval``:
        small imports finish after a few cheap polls, long ones cost one poll per interval.
        """
        section = quote(self.section, safe="")
        async with self.imports.slot():
            deadline = trio.current_time() + self.import_timeout
            while True:
                await self.imports.creations.acquire()
                try:
                    response = await self._send_json("POST", f"/v2/audience/sections/{section}/imports", request)
                    break
                except RateLimitedError as exc:
                    # imports this client does not know of (another key on the account, or a process that
                    # died with imports unfinished) hold APSIS's 3 slots: wait for them, within the timeout
                    if trio.current_time() >= deadline:
                        raise
                    log.info("apsis_import_slots_busy", error=exc.message, wait_s=self.import_poll_interval)
                    await trio.sleep(self.import_poll_interval)
            created = json_body(SYSTEM, response)
            try:
                import_id = str(created["import_id"])
                upload_url = str(created["file_upload_url"])
                fields = {str(k): str(v) for k, v in (created.get("file_upload_body") or {}).items()}
            except (KeyError, TypeError, AttributeError) as exc:
                raise MalformedResponseError(SYSTEM, "import response without import_id/file_upload_url") \
                    from exc
            size = len(csv) if isinstance(csv, bytes) else None
            log.info("apsis_import_created", import_id=import_id, rows=rows, bytes=size)
            await self.request("POST", upload_url, auth=False, data=fields,
                               files={"file": ("import.csv", csv, "text/csv")})
            deadline = trio.current_time() + self.import_timeout
            delay = min(self.import_poll_first, self.import_poll_interval)
            while True:
                await trio.sleep(delay)
                delay = min(delay * 2, self.import_poll_interval)
                poll = await self.request("GET", f"/audience/sections/{section}/imports/{quote(import_id)}")
                body = json_body(SYSTEM, poll)
                result = body.get("result", body) if isinstance(body, dict) else {}
                status = str(result.get("status", ""))
                if status == "completed":
                    log.info("apsis_import_completed", import_id=import_id, rows=rows)
                    return ImportResult(import_id=import_id, status=status, rows=rows, body=body)
                if status == "error":
                    raise ImportFailedError(SYSTEM, f"import {import_id} ended in error",
                                            status=poll.status_code)
                if trio.current_time() >= deadline:
                    raise ImportFailedError(SYSTEM, f"import {import_id} still {status!r} after "
                                                    f"{self.import_timeout:.0f}s")

    async def import_profiles(self, profiles: Sequence[ApsisProfile],
                              settings: ImportSettings | None = None,
                              attribute_versions: Mapping[str, str] | None = None) -> list[ImportResult]:
        """Full sync: build the import files (opt-in file before opt-out file) and run them in order.

        Files run one after another so an opt-out file always lands after the opt-in file it corrects.
        """
        settings = settings or ImportSettings(keyspace=self.keyspace)
        versions = attribute_versions if attribute_versions is not None else await self.attribute_versions()
        results = []
        for file in build_imports(profiles, versions, settings):
            results.append(await self.run_import(file))
        return results


async def _report_text(response: httpx.Response) -> AsyncGenerator[str, None]:
    """The body as text, chunk by chunk. httpx undoes ``Content-Encoding``; a body that is itself a gzip
    file (``application/gzip`` download) is inflated here, incrementally too."""
    try:
        decoder = codecs.getincrementaldecoder(response.charset_encoding or "utf-8")(errors="replace")
    except LookupError:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    gunzip: Any = None
    head = b""
    sniffed = False
    async with aclosing(cast(AsyncGenerator[bytes, None], response.aiter_bytes())) as chunks:
        async for chunk in chunks:
            if not sniffed:
                head += chunk
                if len(head) < len(_GZIP_MAGIC):
                    continue
                sniffed = True
                chunk, head = head, b""
                if chunk.startswith(_GZIP_MAGIC):
                    gunzip = zlib.decompressobj(wbits=31)
            if gunzip is not None:
                chunk = gunzip.decompress(chunk)
            text = decoder.decode(chunk)
            if text:
                yield text
    rest = head + (gunzip.flush() if gunzip is not None else b"")
    text = decoder.decode(rest, final=True)
    if text:
        yield text


__all__ = ["ApsisClient", "ConsentOutcome", "ImportResult", "UpsertResult"]
