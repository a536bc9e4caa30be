"""The Efficy Enterprise API client: JSON-RPC over ``POST {base}/crm/json``.

What it takes care of, and why (research §1, §9):

* **Auth**: ``X-Efficy-ApiKey`` on every request, plus the customer alias (``X-Efficy-Customer`` header by
  default, or ``?customer=`` in the query) when several customers share one server.
* **Session**: Efficy answers with ``Set-Cookie: EfficySession=…``; the client sends it back so the server
  does not log on for every call. When Efficy says the session is gone (HTTP 401, or one of the SDK's known
  messages or detail codes, checked before the "timeout" retry markers), the client drops the cookie and
  tries **once** more with a fresh session; a second refusal is an
  :class:`AuthError` (the same messages also mean "wrong key" or "no rights", which no retry fixes).
* **Content-Length** is always sent: without it Efficy truncates the body and answers "not valid JSON".
* **Errors hide in HTTP 200 bodies** (``#error`` in several places): :meth:`EfficyClient.check_response`
  parses every body, so the base retry loop sees malformed bodies (retriable) and Efficy's own errors
  (typed, with Efficy's message). A 504 HTML page from a proxy in front of Efficy is retriable.

Names the research could not verify (profile entity/tables, the contacts SQL table) live in
:class:`EfficySchema` so a deployment can correct them without code changes.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from functools import partial
from http.cookies import CookieError, SimpleCookie
from typing import Any, ClassVar, TypeVar, cast

import httpx
import structlog
import trio

from crmsync.connectors.efficy import envelope
from crmsync.connectors.efficy.answer_stream import AnswerStream, ContactIds, first_ids
from crmsync.connectors.efficy.envelope import RpcError, find_error, normalise_key
from crmsync.connectors.efficy.paging import ContactPage, decode_position, encode_position
from crmsync.connectors.efficy.records import (
    DEFAULT_FIELD_TYPES,
    EfficyContact,
    EfficyProfile,
    FieldTypes,
    contact_from_row,
    contacts_from_rows,
    parse_datetime,
    parse_number,
    profile_from_row,
)
from crmsync.connectors.errors import (
    AuthError,
    FatalApiError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    RetriableApiError,
)
from crmsync.connectors.http import (
    MAX_ANSWER_DEPTH,
    ApiClient,
    json_body,
    raise_for_status,
    retry_reason,
    status_class,
)
from crmsync.redaction import learn_headers

log = structlog.get_logger("crmsync.connectors.efficy.client")

SESSION_COOKIE = "EfficySession"
_PARSED = "crmsync.efficy.parsed"  # where check_response leaves the parsed body on the response
_RPC_HEADERS = {"Content-Type": "application/json"}
T = TypeVar("T")

#: Messages the Efficy SDK treats as "session gone, log on again once" (research §1.1, verified).
SESSION_EXPIRED_MARKERS: tuple[str, ...] = (
    "Please Logon to Database",
    "This operation requires a Database Connection",
    "Invalid User",
    "You do not have the right to perform this operation",
    "You aren't authorized to execute this query",
    # further expiry answers Efficy's SDK knows (issue 7 item 10; wording from the SDK, envelope [U])
    "Session timeout",
    "The CRM Session is not active",
    "The session is not valid anymore",
    "FRMK-2612",
    "CORE-1243",
)
#: [U] Efficy's wording for a missing record is not documented; substrings that mean "not found".
NOT_FOUND_MARKERS: tuple[str, ...] = ("not found", "does not exist", "no record")
#: [U] transient database conditions worth retrying when they come back inside a 200 body.
RETRIABLE_MARKERS: tuple[str, ...] = ("deadlock", "timeout", "timed out", "try again")


class EfficySessionExpiredError(AuthError):
    """Efficy refused the session (or the credentials behind it); the client renews once on this."""


@dataclass(frozen=True)
class EfficySchema:
    """Entity, table and column names the connector relies on.

    Defaults follow the research: ``Cont``/``K_CONTACT`` are verified; the profile (consent base) names
    ``Prof``/``K_PROFILE``/``CONT_PROF``/``PROFILE`` and the SQL table ``CONTACTS`` are **unverified [U]**
    (no public source names them), so correct them here per deployment.
    """

    contact_entity: str = "Cont"
    contact_id_field: str = "K_CONTACT"
    contact_table: str = "CONTACTS"
    profile_detail: str = "Prof"
    profile_key_field: str = "K_PROFILE"
    profile_name_field: str = "NAME"
    profile_table: str = "PROFILE"
    profile_link_table: str = "CONT_PROF"
    #: [U] the relation's own change-time column (``D_CHANGE``); None: Efficy is not asked for it
    profile_link_changed_field: str | None = None

    def page_sql(self, bounded: bool = False) -> str:
        k = self.contact_id_field
        upto = f" and {k} <= :p2" if bounded else ""
        return f"select * from {self.contact_table} where {k} > :p1{upto} order by {k}"

    def keys_sql(self) -> str:
        k = self.contact_id_field
        return f"select {k} from {self.contact_table} where {k} > :p1 order by {k}"

    def count_sql(self) -> str:
        return f"select count(*) as TOTAL from {self.contact_table}"

    def links_sql(self) -> str:
        k, p = self.contact_id_field, self.profile_key_field
        changed = f", {self.profile_link_changed_field}" if self.profile_link_changed_field else ""
        return (f"select {k}, {p}{changed} from {self.profile_link_table} where {k} > :p1 and {k} <= :p2 "
                f"order by {k}, {p}")

    def members_sql(self) -> str:
        k, p = self.contact_id_field, self.profile_key_field
        return f"select {k} from {self.profile_link_table} where {p} = :p1 order by {k}"

    def profiles_sql(self) -> str:
        p, n = self.profile_key_field, self.profile_name_field
        return f"select {p}, {n} from {self.profile_table} order by {p}"


class EfficyClient(ApiClient):
    """Async client for one Efficy Enterprise database.

    ``base_url`` is the server root (``https://crm.example.com``) or already ends in ``/crm``; requests go
    to ``…/crm/json``. ``customer`` is the alias for multi-customer servers; ``customer_in_query`` switches
    from the ``X-Efficy-Customer`` header (efficy-sa n8n node) to ``?customer=`` (Pauwris SDK), both
    verified. ``timezone`` is the zone Efficy writes naive timestamps in ([U], UTC by default).
    Remaining keyword arguments go to :class:`ApiClient` (``http=``, ``retry=``, ``max_concurrency=`` …).
    """

    system: ClassVar[str] = "efficy"

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str,
        customer: str | None = None,
        customer_in_query: bool = False,
        language: str | None = None,
        page_size: int = 500,
        schema: EfficySchema | None = None,
        field_types: FieldTypes = DEFAULT_FIELD_TYPES,
        timezone: tzinfo = UTC,
        session_expired_markers: Sequence[str] = SESSION_EXPIRED_MARKERS,
        not_found_markers: Sequence[str] = NOT_FOUND_MARKERS,
        retriable_markers: Sequence[str] = RETRIABLE_MARKERS,
        **kwargs: Any,
    ):
        super().__init__(base_url, **kwargs)
        if page_size < 1:
            raise ValueError("page_size must be positive")
        self._api_key = api_key
        self.customer = customer
        self.customer_in_query = customer_in_query
        self.language = language
        self.page_size = page_size
        self.schema = schema or EfficySchema()
        self.field_types = field_types
        self.timezone = timezone
        self._session_markers = tuple(m.lower() for m in session_expired_markers)
        self._not_found_markers = tuple(m.lower() for m in not_found_markers)
        self._retriable_markers = tuple(m.lower() for m in retriable_markers)
        self._session: str | None = None
        self.rpc_path = "/json" if self.base_url.endswith("/crm") else "/crm/json"

    def __repr__(self) -> str:  # never show the key
        return f"EfficyClient(base_url={self.base_url!r}, customer={self.customer!r})"

    @property
    def session_id(self) -> str | None:
        """The ``EfficySession`` currently reused (``None`` before the first call or after expiry)."""
        return self._session

    def new_session(self) -> EfficyClient:
        """Another client for the same database with a session of its own (its own ``EfficySession``
        cookie and concurrency cap) on this client's HTTP connection pool, which this client keeps owning:
        for reading key ranges in parallel (research §8.4: parallel sessions help)."""
        other = copy.copy(self)
        other._session = None
        other._owns_http = False
        other._limiter = trio.CapacityLimiter(self._limiter.total_tokens)
        return other

    # -- ApiClient override points -----------------------------------------------------------------------

    async def prepare_request(self, request: httpx.Request) -> None:
        """Auth headers, customer alias, the session cookie, and an explicit Content-Length."""
        request.headers["X-Efficy-ApiKey"] = self._api_key
        request.headers["Accept"] = "application/json"
        if self.customer and not self.customer_in_query:
            request.headers["X-Efficy-Customer"] = self.customer
        if self.language:
            request.headers["X-Efficy-Lang"] = self.language
        # The session is ours to manage: drop whatever an httpx cookie jar added, keep other cookies.
        others = [c for c in _cookie_pairs(request.headers.get("cookie")) if c[0] != SESSION_COOKIE]
        if self._session:
            others.append((SESSION_COOKIE, self._session))
        if others:
            request.headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in others)
        elif "cookie" in request.headers:
            del request.headers["cookie"]
        # Efficy truncates chunked bodies; always send the length.
        if "content-length" not in request.headers:
            body = await request.aread()
            request.headers["Content-Length"] = str(len(body))
        if "transfer-encoding" in request.headers:
            del request.headers["transfer-encoding"]

    def check_response(self, response: httpx.Response) -> None:
        """HTTP status first, then the session cookie, then errors inside the (HTTP 200) JSON body."""
        if response.status_code == 401:  # as in Efficy's SDK: the session expired; log on again once
            self._forget_session_of(response)
            raise EfficySessionExpiredError(self.system, "HTTP 401 (session expired)", status=401)
        raise_for_status(self.system, response)
        self._remember_session(response)
        body = json_body(self.system, response)
        response.extensions[_PARSED] = body  # call() reads the results from it: a page is parsed once
        self._check_answer(body, response)

    def _check_answer(self, body: Any, response: httpx.Response) -> None:
        """Efficy's errors come in a 200 answer: raise the one it names, or refuse an answer of the wrong shape."""
        error = find_error(body)
        if error is not None:
            raise self._map_error(error, response)
        if not isinstance(body, list):
            raise MalformedResponseError(self.system, "Efficy response is not a JSON array",
                                         status=response.status_code)

    def _remember_session(self, response: httpx.Response) -> None:
        for header in response.headers.get_list("set-cookie"):
            for name, value in _set_cookie_pairs(header):
                if name == SESSION_COOKIE and value:
                    if value != self._session:
                        log.debug("efficy_session_started")
                    self._session = value

    def _forget_session_of(self, response: httpx.Response) -> None:
        sent = dict(_cookie_pairs(response.request.headers.get("cookie"))).get(SESSION_COOKIE)
        if sent is not None and sent == self._session:
            self._session = None  # only forget the session this request used (others may have renewed)

    def _map_error(self, error: RpcError, response: httpx.Response) -> Exception:
        text = error.message.lower()
        message = f"{error.message} [{error.where}]"
        code = (error.code or "").lower()
        if any(m in text or m == code for m in self._session_markers):
            self._forget_session_of(response)
            return EfficySessionExpiredError(self.system, message, status=response.status_code,
                                             code=error.code)
        if any(m in text for m in self._not_found_markers):
            return NotFoundError(self.system, message, status=response.status_code, code=error.code)
        if any(m in text for m in self._retriable_markers):
            return RetriableApiError(self.system, message, status=response.status_code, code=error.code)
        return FatalApiError(self.system, message, status=response.status_code, code=error.code)

    # -- the RPC call ------------------------------------------------------------------------------------

    async def call(self, contexts: Sequence[Mapping[str, Any]]) -> list[Any]:
        """POST contexts to ``/crm/json``; returns the response array. Renews an expired session once."""
        body = json.dumps(list(contexts), separators=(",", ":")).encode()
        response = await self._renewing(partial(self.request, "POST", self.rpc_path, content=body,
                                                params=self._rpc_params(), headers=_RPC_HEADERS))
        result = response.extensions.get(_PARSED)
        if result is None:
            result = json_body(self.system, response)
        assert isinstance(result, list)  # check_response guarantees it
        return result

    def _rpc_params(self) -> dict[str, str] | None:
        return {"customer": self.customer} if self.customer and self.customer_in_query else None

    async def _renewing(self, send: Callable[[], Awaitable[T]]) -> T:
        """``send()``, and once more with a fresh session if Efficy says the session is gone."""
        try:
            return await send()
        except EfficySessionExpiredError as first:
            log.info("efficy_session_renew", reason=first.message)
            self._session = None
            try:
                return await send()
            except EfficySessionExpiredError as second:
                raise AuthError(self.system, f"refused after renewing the session: {second.message}",
                                status=second.status, code=second.code) from second

    async def _call_for_ids(self, ctx: dict[str, Any]) -> ContactIds:
        """One context whose first function answers a dataset (a saved query), read as a stream: the ids of
        its rows, the rows themselves never held (:mod:`.answer_stream`). Same errors as :meth:`call`:
        Efficy's own (mapped as :meth:`check_response` does), malformed or cut-off answers (retried, then
        :class:`MalformedResponseError`), an expired session renewed once."""
        body = json.dumps([ctx], separators=(",", ":")).encode()
        return await self._renewing(partial(self._retrying_ids, body, ctx["#id"]))

    async def _retrying_ids(self, body: bytes, context_id: str) -> ContactIds:
        # ApiClient.request's retry loop, around a request whose answer is parsed while it is read
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._ids_once(body, context_id)
            except RetriableApiError as exc:
                if attempt >= self.retry.attempts:
                    raise
                delay = self.retry.delay(attempt, exc.retry_after)
                self.observer.api_retry(self.system, retry_reason(exc))
                if isinstance(exc, RateLimitedError):
                    self.observer.rate_limit_wait(self.system, delay)
                log.info("api_retry", system=self.system, method="POST", path=self.rpc_path, attempt=attempt,
                         delay_s=round(delay, 3), error=exc.message, status=exc.status)
                await trio.sleep(delay)

    async def _ids_once(self, body: bytes, context_id: str) -> ContactIds:
        if self._rate is not None:
            waited = await self._rate.acquire()
            if waited:
                self.observer.rate_limit_wait(self.system, waited)
        malformed: ValueError | None = None
        async with self._limiter:
            request = self.http.build_request("POST", self.url(self.rpc_path), content=body,
                                              params=self._rpc_params(), headers=_RPC_HEADERS)
            await self.prepare_request(request)
            sent = time.monotonic()
            learn_headers(request.headers.items())
            with self.transport_errors(sent):
                try:
                    response = await self.http.send(request, stream=True)
                    try:
                        if response.status_code >= 300:
                            await response.aread()  # an error page: check_response reads it as usual
                        else:
                            self._remember_session(response)
                            reader = AnswerStream(self.schema.contact_id_field, max_depth=MAX_ANSWER_DEPTH)
                            stream = cast(AsyncGenerator[bytes, None], response.aiter_bytes())
                            try:
                                async with aclosing(stream) as chunks:
                                    async for chunk in chunks:
                                        reader.feed(chunk)
                                frame = reader.close()
                            except ValueError as exc:
                                malformed = exc
                    finally:
                        with trio.CancelScope(shield=True):
                            await response.aclose()
                except httpx.DecodingError as exc:  # a Content-Encoding that does not inflate
                    malformed = ValueError(type(exc).__name__)
        self.observer.api_request(self.system, status_class(response.status_code), time.monotonic() - sent)
        if response.status_code >= 300:
            self.check_response(response)  # raises: 401 first, then by status, as for every call
        if malformed is not None:
            raise MalformedResponseError(self.system, f"malformed JSON in HTTP {response.status_code} response",
                                         status=response.status_code) from malformed
        self._check_answer(frame, response)
        results = envelope.function_results(frame, context_id)
        ids = first_ids(results[0]) if results else None
        log.debug("efficy_ids_read", rows=reader.rows, ids=len(ids) if ids is not None else 0)
        return ids if ids is not None else ContactIds()

    async def _call_one(self, ctx: dict[str, Any]) -> list[dict[str, Any]]:
        body = await self.call([ctx])
        return envelope.function_results(body, ctx["#id"])

    # -- operations --------------------------------------------------------------------------------------

    async def current_user(self) -> str:
        """The API user's full name: a cheap "are the key and alias right" check."""
        results = await self._call_one(envelope.context("api", [envelope.func("currentuserfullname")]))
        value = envelope.scalar_result(results[0]) if results else None
        return "" if value is None else str(value)

    async def list_contacts(
        self,
        position: str | None = None,
        *,
        page_size: int | None = None,
        include_profiles: bool = True,
        with_total: bool | None = None,
        until: str | None = None,
    ) -> ContactPage:
        """One page of all contacts in ``K_CONTACT`` order, continuing after ``position``.

        Pass the returned ``next_position`` back (it may be persisted) until it is ``None``. With
        ``include_profiles`` each record carries its CRM Profile ids (one more request per page). The total
        is fetched on the first page unless ``with_total`` says otherwise.

        With ``until`` (a position) the page stops at that key: a key range read on its own (see
        :mod:`.ranges`). Its ``next_position`` is then ``until`` once the range is read to its end, never
        ``None``: the contacts after ``until`` are another range's.
        """
        after = decode_position(position)
        upto = decode_position(until) if until is not None else None
        size = page_size or self.page_size
        want_total = (position is None) if with_total is None else with_total
        s = self.schema
        params = str(after) if upto is None else f"{after}\n{upto}"
        funcs = [envelope.func("executesqlquery", sql=s.page_sql(bounded=upto is not None), queryparams=params,
                               recordCount=size, loadBlobs=False)]
        if want_total:
            funcs.append(envelope.func("executesqlquery", sql=s.count_sql(), queryparams="",
                                       recordCount=1, loadBlobs=False))
        results = await self._call_one(envelope.context("api", funcs))
        if len(results) < len(funcs):
            raise MalformedResponseError(self.system, "Efficy response lacks query results")
        rows = envelope.dataset(results[0])
        total: int | None = None
        if want_total:
            count_rows = envelope.dataset(results[1])
            if count_rows:
                value = parse_number(next(iter(count_rows[0].values()), None))
                total = int(value) if value is not None else None
        try:
            contacts = contacts_from_rows(rows, types=self.field_types, tz=self.timezone)
        except ValueError as exc:
            raise MalformedResponseError(self.system, str(exc)) from exc
        contacts.sort(key=lambda c: int(c.contact_id))
        if contacts and include_profiles:
            links, times = await self._profile_links(after, int(contacts[-1].contact_id))
            contacts = [c.with_profiles(links.get(c.contact_id, ()), times.get(c.contact_id))
                        for c in contacts]
        if len(contacts) >= size:
            next_position: str | None = encode_position(int(contacts[-1].contact_id))
        else:
            next_position = None if upto is None else encode_position(upto)
        log.debug("efficy_contacts_page", count=len(contacts),
                  last=contacts[-1].contact_id if contacts else None)
        return ContactPage(tuple(contacts), next_position, total)

    async def contact_keys(self, position: str | None, count: int) -> list[int]:
        """The keys of the next ``count`` contacts after ``position``, in key order, without their columns
        (one cheap query: where a parallel read cuts its key ranges)."""
        s = self.schema
        results = await self._call_one(envelope.context("api", [envelope.func(
            "executesqlquery", sql=s.keys_sql(), queryparams=str(decode_position(position)), recordCount=count,
            loadBlobs=False)]))
        keys: list[int] = []
        id_field = s.contact_id_field.upper()
        for row in envelope.dataset(results[0]) if results else []:
            key = normalise_key({str(k).upper(): v for k, v in row.items()}.get(id_field))
            if key is None or not key.isdigit():
                raise MalformedResponseError(self.system, f"not a contact key: {key!r}")
            keys.append(int(key))
        keys.sort()
        return keys

    async def iter_contacts(self, position: str | None = None, **kwargs: Any) -> AsyncIterator[ContactPage]:
        """Every page from ``position`` to the end (a full sync); persist ``page.next_position`` as you go."""
        while True:
            page = await self.list_contacts(position, **kwargs)
            yield page
            if page.next_position is None:
                return
            position = page.next_position

    async def _profile_links(self, after: int, last: int
                             ) -> tuple[dict[str, list[str]], dict[str, dict[str, datetime | None]]]:
        """Links of the contacts in ``(after, last]``: contact -> profile ids, and contact -> profile -> the
        link's own change time (only when ``profile_link_changed_field`` is set)."""
        s = self.schema
        ctx = envelope.context("api", [envelope.func(
            "executesqlquery", sql=s.links_sql(), queryparams=f"{after}\n{last}", recordCount=0,
            loadBlobs=False)])
        results = await self._call_one(ctx)
        links: dict[str, list[str]] = {}
        times: dict[str, dict[str, datetime | None]] = {}
        for row in envelope.dataset(results[0]) if results else []:
            upper = {str(k).upper(): v for k, v in row.items()}
            cid = normalise_key(upper.get(s.contact_id_field.upper()))
            pid = normalise_key(upper.get(s.profile_key_field.upper()))
            if cid is not None and pid is not None:
                links.setdefault(cid, []).append(pid)
                times.setdefault(cid, {})[pid] = self._link_changed(upper)
        return links, times

    def _link_changed(self, upper_row: Mapping[str, Any]) -> datetime | None:
        field = self.schema.profile_link_changed_field
        if not field:
            return None
        return parse_datetime(upper_row.get(field.upper()), tz=self.timezone)

    async def get_contact(self, contact_id: str | int) -> EfficyContact:
        """One contact with its CRM Profiles (the consent base); :class:`NotFoundError` if there is none."""
        key = _key(contact_id)
        s = self.schema
        ctx = envelope.context(
            "consult",
            [envelope.func("master", tableview=0), envelope.func("detail", detail=s.profile_detail)],
            entity=s.contact_entity, key=key, closecontext=True,
        )
        results = await self._call_one(ctx)
        master = envelope.dataset(results[0]) if results else []
        if not master:
            raise NotFoundError(self.system, f"contact {key} not found")
        profiles = envelope.dataset(results[1]) if len(results) > 1 else []
        ids: list[str] = []
        times: dict[str, datetime | None] = {}
        for row in profiles:
            profile = self._profile(row)
            if profile is not None:
                ids.append(profile.profile_id)
                times[profile.profile_id] = self._link_changed({str(k).upper(): v for k, v in row.items()})
        return self._contact(master[0]).with_profiles(ids, times)

    async def list_profiles(self) -> list[EfficyProfile]:
        """All CRM Profiles (consent bases), for mapping them to APSIS subscriptions."""
        ctx = envelope.context("api", [envelope.func("executesqlquery", sql=self.schema.profiles_sql(),
                                                     queryparams="", recordCount=0, loadBlobs=False)])
        results = await self._call_one(ctx)
        rows = envelope.dataset(results[0]) if results else []
        return [p for p in (self._profile(r) for r in rows) if p is not None]

    async def profile_members(self, profile_id: str | int) -> list[str]:
        """The contact ids holding a CRM Profile (``K_PROFILE``), from the link table: for tags from CRM
        Profiles, reconciled periodically like query tags. Unpaged like a saved query (a newsletter profile
        may hold most contacts), so read as a stream the same way (:meth:`query_members`)."""
        s = self.schema
        ctx = envelope.context("api", [envelope.func("executesqlquery", sql=s.members_sql(),
                                                     queryparams=str(_key(profile_id)), recordCount=0,
                                                     loadBlobs=False)])
        return (await self._call_for_ids(ctx)).unique()

    async def run_query(self, query_id: str | int, *, params: Iterable[str] = ()) -> list[str]:
        """The contact ids a saved query (``K_QUERY``) returns, in query order, without duplicates (tags)."""
        return (await self.query_members(query_id, params=params)).unique()

    async def query_members(self, query_id: str | int, *, params: Iterable[str] = ()) -> ContactIds:
        """The contact ids a saved query (``K_QUERY``) returns, in query order, **repeats kept**, packed: the
        answer (every column of every member, in one body: Efficy's query has no paging) is parsed as it
        arrives and only the ids are kept. For a full sync's store write; :meth:`run_query` for a list."""
        key = _key(query_id)
        extra: dict[str, Any] = {}
        params = list(params)
        if params:
            extra["queryparams"] = "|".join(params)
        return await self._call_for_ids(envelope.context("api", [envelope.func(
            "query", key=key, recordCount=0, loadBlobs=False, **extra)]))

    async def unlink_profile(self, contact_id: str | int, profile_id: str | int) -> None:
        """Remove a CRM Profile from a contact: an opt-out flowing back from the messaging platform.

        Idempotent: unlinking a profile the contact does not have is not an error.
        """
        await self._edit_profile("deleteDetail", contact_id, profile_id)
        log.debug("efficy_profile_unlinked", contact_id=str(contact_id), profile_id=str(profile_id))

    async def link_profile(self, contact_id: str | int, profile_id: str | int) -> None:
        """Add a CRM Profile to a contact (an opt-in written back)."""
        await self._edit_profile("insertDetail", contact_id, profile_id)
        log.debug("efficy_profile_linked", contact_id=str(contact_id), profile_id=str(profile_id))

    async def _edit_profile(self, operation: str, contact_id: str | int, profile_id: str | int) -> None:
        s = self.schema
        ctx = envelope.context(
            "edit", [envelope.func(operation, detail=s.profile_detail, detailkey=str(_key(profile_id)))],
            entity=s.contact_entity, key=_key(contact_id), commit=True, closecontext=True,
        )
        await self._call_one(ctx)

    # -- helpers -----------------------------------------------------------------------------------------

    def _contact(self, row: Mapping[str, Any]) -> EfficyContact:
        try:
            return contact_from_row(row, types=self.field_types, tz=self.timezone)
        except ValueError as exc:
            raise MalformedResponseError(self.system, str(exc)) from exc

    def _profile(self, row: Mapping[str, Any]) -> EfficyProfile | None:
        return profile_from_row(row, key_field=self.schema.profile_key_field,
                                name_field=self.schema.profile_name_field)


def _key(value: str | int) -> int:
    key = normalise_key(value)
    if key is None or not key.isdigit():
        raise ValueError(f"not an Efficy key: {value!r}")
    return int(key)


def _cookie_pairs(header: str | None) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for part in (header or "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name:
            pairs.append((name, value))
    return pairs


def _set_cookie_pairs(header: str) -> list[tuple[str, str]]:
    cookie: SimpleCookie = SimpleCookie()
    try:
        cookie.load(header)
    except CookieError:
        return []
    return [(name, morsel.value) for name, morsel in cookie.items()]
