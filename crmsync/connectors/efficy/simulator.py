"""An in-memory Efficy Enterprise that behaves like the real one where it matters (research §10).

Product code: it serves the connector tests, benchmarks and ``crmsync sandbox``. Quirks reproduced:

* JSON-RPC on ``POST …/crm/json``: an array of contexts (``api``/``consult``/``edit``) echoed back with
  results filled in and ``#id`` preserved; datasets as ``{"#class":"dataset","#data":[…]}`` under ``#result``;
* auth by ``X-Efficy-ApiKey`` (header names case-insensitive) and the customer alias (``?customer=`` or
  ``X-Efficy-Customer``) when the simulator is given one;
* ``Set-Cookie: EfficySession=…`` with an expiry (:attr:`EfficySimulator.session_ttl`); an expired or
  unknown session is refused with the SDK's "requires a Database Connection" message, or any other expiry
  answer the SDK knows (HTTP 401, "Session timeout", FRMK-2612 …: :attr:`expired_session_answer`);
  ``X-Efficy-Logoff``;
* **every business error is HTTP 200** with ``#error`` in the body: ``{"@name":"exception","#error":
  {errorcode, errorstring}}`` by default, and every other form of §1.4 on demand (:meth:`inject_error`);
* a request **without Content-Length** is read as truncated: HTTP 200 "not valid JSON";
* empty dates come out as ``1899-12-30T00:00:00``; flags and integers as strings (``"1"``/``"0"``), keys as
  numbers in consult results and numeric strings in SQL results (both occur in the wild);
* no offset paging: ``executesqlquery`` with a tiny SQL subset (``select … from T where K > :p1 [and K <=
  :p2] order by …``, ``count(*)``) and ``recordCount`` truncation, which is what keyset paging needs;
* CRM Profiles linked per contact (``consult`` ``detail:"Prof"``, ``edit`` ``insertDetail``/``deleteDetail``,
  ``api`` ``addlink``/``deletelink``); saved queries (``api`` ``query`` by ``K_QUERY``);
* an outbox of changes (:class:`ChangeRecord`) that :class:`EfficyWebhookSender` delivers the way Efficy's
  WebHooks service does: batched, minutes later, natively or in the signed generic-connector form;
* transport faults from :class:`~crmsync.connectors.simkit.FaultPlan` render as a proxy's HTML error page
  (research §8.4: 504 with an HTML body).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import json
import re
import secrets as _secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import httpx
import structlog
import trio

from crmsync.clock import WallClock
from crmsync.connectors.efficy.sim_demo import ContactRows, DemoContacts, LinkSets
from crmsync.connectors.efficy.webhooks import (
    CONTACT_TABLE_ID,
    MAX_CONTRACT_ITEMS,
    SIGNATURE_HEADER,
    sign_contract_body,
)
from crmsync.connectors.simkit import Fault, Request, Response, SimulatorApp

log = structlog.get_logger("crmsync.connectors.efficy.simulator")

ZERO_DATE = "1899-12-30T00:00:00"
SESSION_COOKIE = "EfficySession"

ErrorStyle = Literal[
    "exception",        # [{"@name":"exception","#error":{"errorcode","errorstring"}}]  (Enterprise)
    "efficy_u",         # [{"#error":{"code","message","detail"}}]
    "top_object",       # {"#error":{"errorcode","errorstring"}}
    "top_flag",         # {"error":true,"code","message"}
    "context_string",   # context carries "#error": "message"
    "context_object",   # context carries "#error": {"errorcode","errorstring","detail"}
    "function_string",  # @func entry carries "#error": "message"
    "function_flag",    # @func entry carries "#error": true, "#message": "message"
]
ERROR_STYLES: tuple[ErrorStyle, ...] = (
    "exception", "efficy_u", "top_object", "top_flag", "context_string", "context_object",
    "function_string", "function_flag",
)

MSG_NO_CONNECTION = "This operation requires a Database Connection"
MSG_INVALID_USER = "Invalid User"
MSG_NO_RIGHTS = "You do not have the right to perform this operation"
MSG_SQL_DENIED = "You aren't authorized to execute this query"

ExpiredSessionAnswer = Literal[
    "database_connection",     # HTTP 200, "This operation requires a Database Connection" (Enterprise, [V])
    "http_401",                # HTTP 401: Efficy's SDK treats it as an expired session (issue 7 item 10)
    "session_timeout",         # HTTP 200, "Session timeout"
    "crm_session_not_active",  # HTTP 200, "The CRM Session is not active"
    "session_not_valid",       # HTTP 200, "The session is not valid anymore"
    "frmk_2612",               # HTTP 200, Efficy-U error whose detail is the code FRMK-2612
    "core_1243",               # HTTP 200, Efficy-U error whose code is CORE-1243
]
#: Every way the simulator can say "this session is gone" (the switch :attr:`EfficySimulator.expired_session_answer`).
#: The wordings and codes come from Efficy's SDK as quoted in issue 7; their exact error envelope, and where a
#: detail code sits (``code`` or ``detail``), are unverified [U], hence both placements here.
EXPIRED_SESSION_ANSWERS: tuple[ExpiredSessionAnswer, ...] = (
    "database_connection", "http_401", "session_timeout", "crm_session_not_active", "session_not_valid",
    "frmk_2612", "core_1243",
)

_DEFAULT_COLUMNS: dict[str, Any] = {
    "NAME": "", "FIRSTNAME": "", "EMAIL1": "", "EMAIL2": "", "MOBILE": "", "PHONE1": "", "TITLE": "",
    "LANGUAGE": "", "POSTCODE": "", "CITY": "", "COUNTRY": "", "OPENED": True, "BIRTHDATE": None,
}
_DATE_COLUMNS = frozenset({"D_CREATE", "D_CHANGE", "BIRTHDATE"})


_SESSION_GONE = "session gone"  # _authenticate's refusal for an expired or unknown session cookie


class _RpcFailure(Exception):
    def __init__(self, message: str, code: int = 1000):
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass
class ChangeRecord:
    """One change Efficy would announce by webhook (native record shape, plus consent details)."""

    table: int
    key: int
    operation: Literal["Create", "Update", "Delete"]
    date: datetime
    user: str
    subject: str
    fields: dict[str, Any] = field(default_factory=dict)
    consent_base_id: str | None = None  # set when a CRM Profile was linked/unlinked
    has_consented: bool | None = None


@dataclass
class SavedQuery:
    """A saved Efficy query (``K_QUERY``): fixed members or a predicate over contact columns."""

    query_id: int
    name: str
    members: list[int] | None = None
    predicate: Callable[[Mapping[str, Any]], bool] | None = None
    #: a predicate over the key alone, evaluated without building any contact (the demo's, over a million)
    key_predicate: Callable[[int], bool] | None = None


class EfficySimulator(SimulatorApp):
    """In-memory Efficy Enterprise. See the module docstring for the quirks it reproduces.

    Knobs tests flip: ``session_ttl``, :meth:`expire_sessions`, ``expired_session_answer``, ``deny_rights``
    (every call refused with the "no right" message, which also means "session gone" to the SDK), ``allow_sql``,
    ``require_content_length``, :meth:`inject_error`.
    """

    def __init__(
        self,
        clock: WallClock,
        *,
        api_key: str = "sim-efficy-key",
        customer: str | None = None,
        database: str = "EFFICY_SIM",
        version: str = "12.1.0",
        user: str = "APIUSER",
        user_full_name: str = "API User",
        session_ttl: timedelta = timedelta(minutes=20),
        require_content_length: bool = True,
        first_contact_id: int = 10001,
        latency: float = 0.0,
    ):
        super().__init__()
        self.latency = latency
        self.clock = clock
        self.api_key = api_key
        self.customer = customer
        self.database = database
        self.version = version
        self.user = user
        self.user_full_name = user_full_name
        self.session_ttl = session_ttl
        self.require_content_length = require_content_length
        self.deny_rights = False
        # how an expired or unknown session is refused (see EXPIRED_SESSION_ANSWERS)
        self.expired_session_answer: ExpiredSessionAnswer = "database_connection"
        self.allow_sql = True
        #: [U] whether (and under which column) a Cont-Prof link carries its own change time; the research
        #: verifies no relation field, so by default the simulator exposes none
        self.link_changed_field: str | None = None
        self.sessions: dict[str, datetime] = {}
        self.sessions_created = 0
        self.outbox: list[ChangeRecord] = []
        self.rpc_log: list[list[dict[str, Any]]] = []  # request bodies as parsed, for tests
        self._contacts = ContactRows()  # demo contacts computed from their key (sim_demo)
        self._sorted_ids: Sequence[int] | None = None  # key index, rebuilt after a contact is added or deleted
        self._links = LinkSets(self._contacts)
        self._link_changed: dict[tuple[int, int], datetime] = {}
        self._profiles: dict[int, str] = {}
        self._queries: dict[int, SavedQuery] = {}
        self._next_contact = first_contact_id
        self._next_profile = 1
        self._next_query = 99990001
        self._next_handle = 1
        self._errors: list[tuple[ErrorStyle, str, int]] = []

    # -- plain methods for tests and the sandbox ---------------------------------------------------------

    def add_contact(self, *, name: str = "", first_name: str = "", email: str = "", opened: bool = True,
                    profiles: Iterable[int] = (), contact_id: int | None = None, **columns: Any) -> int:
        """Create a contact; extra columns as UPPER-CASE names (``MOBILE="+32…"``). Returns K_CONTACT."""
        if contact_id is None:
            contact_id = self._next_contact
        if contact_id in self._contacts:
            raise ValueError(f"contact {contact_id} exists")
        self._next_contact = max(self._next_contact, contact_id + 1)
        now = self.clock.now()
        row = dict(_DEFAULT_COLUMNS)
        row.update({"NAME": name, "FIRSTNAME": first_name, "EMAIL1": email, "OPENED": opened})
        row.update({k.upper(): v for k, v in columns.items()})
        row["D_CREATE"] = now
        row["D_CHANGE"] = now
        self._contacts[contact_id] = row
        self._sorted_ids = None
        self._links[contact_id] = set()
        self._record(contact_id, "Create", self._render_fields(row))
        for profile_id in profiles:
            self.add_profile_to_contact(contact_id, profile_id)
        return contact_id

    def update_contact(self, contact_id: int, **columns: Any) -> None:
        """Change columns (UPPER-CASE names or ``name``/``first_name``/``email``); stamps D_CHANGE."""
        self._row(contact_id)
        row = self._contacts.for_update(int(contact_id))
        aliases = {"name": "NAME", "first_name": "FIRSTNAME", "email": "EMAIL1", "opened": "OPENED"}
        changes = {aliases.get(k, k.upper()): v for k, v in columns.items()}
        self._apply_update(contact_id, row, changes)

    def delete_contact(self, contact_id: int) -> None:
        self._row(contact_id)
        del self._contacts[contact_id]
        self._sorted_ids = None
        self._links.pop(contact_id, None)
        self._record(contact_id, "Delete", {})

    def add_profile(self, name: str, profile_id: int | None = None) -> int:
        """Define a CRM Profile (consent base). Returns K_PROFILE."""
        if profile_id is None:
            profile_id = self._next_profile
        self._next_profile = max(self._next_profile, profile_id + 1)
        self._profiles[profile_id] = name
        return profile_id

    def add_profile_to_contact(self, contact_id: int, profile_id: int) -> None:
        """Link a CRM Profile to a contact (the contact consents); unknown profiles are created."""
        self._row(contact_id)
        if profile_id not in self._profiles:
            self.add_profile(f"Profile {profile_id}", profile_id)
        if profile_id not in self._links[contact_id]:
            self._links.for_update(contact_id).add(profile_id)
            self._link_changed[(contact_id, profile_id)] = self.clock.now()
            self._touch(contact_id)
            self._record(contact_id, "Update", {}, consent=(profile_id, True))

    def remove_profile_from_contact(self, contact_id: int, profile_id: int) -> None:
        """Unlink a CRM Profile (the contact no longer consents). No-op if not linked."""
        self._row(contact_id)
        if profile_id in self._links[contact_id]:
            self._links.for_update(contact_id).discard(profile_id)
            self._link_changed.pop((contact_id, profile_id), None)
            self._touch(contact_id)
            self._record(contact_id, "Update", {}, consent=(profile_id, False))

    def add_query(self, name: str, contact_ids: Iterable[int] | None = None, *,
                  predicate: Callable[[Mapping[str, Any]], bool] | None = None,
                  key_predicate: Callable[[int], bool] | None = None,
                  query_id: int | None = None) -> int:
        """A saved query of fixed ``contact_ids``, of contacts matching ``predicate``, or of keys matching
        ``key_predicate``. Returns K_QUERY."""
        if sum(x is not None for x in (contact_ids, predicate, key_predicate)) != 1:
            raise ValueError("give exactly one of contact_ids, predicate or key_predicate")
        if query_id is None:
            query_id = self._next_query
        self._next_query = max(self._next_query, query_id + 1)
        members = None if contact_ids is None else list(contact_ids)
        self._queries[query_id] = SavedQuery(query_id, name, members, predicate, key_predicate)
        return query_id

    def seed_demo(self, contacts: int, *, seed: int = 0) -> dict[str, int]:
        """Demo data for ``crmsync sandbox`` and benchmarks: two CRM Profiles, ``contacts`` contacts, one
        saved query. Deterministic for a given ``seed``; the contacts are computed from their key when read,
        not stored (:mod:`.sim_demo`), so a million cost megabytes, not gigabytes. Returns the ids of the
        profiles and the query."""
        if self._contacts.demo is not None:
            raise ValueError("the simulator holds demo contacts already")
        news = self.add_profile("Newsletter")
        sms = self.add_profile("SMS offers")
        first = self._next_contact
        if any(first <= cid < first + contacts for cid in self._contacts.stored):
            raise ValueError("demo keys would collide with existing contacts")
        self._contacts.demo = DemoContacts(first, contacts, seed, self.clock.now(), news, sms,
                                           tuple(_DEFAULT_COLUMNS.items()))
        self._next_contact = first + contacts
        self._sorted_ids = None
        vip = self.add_query("VIP", key_predicate=lambda key: key % 10 == 0)
        return {"newsletter_profile": news, "sms_profile": sms, "vip_query": vip}

    def contact(self, contact_id: int) -> dict[str, Any]:
        """A typed copy of one contact's columns plus ``K_CONTACT`` and ``profile_ids`` (sorted)."""
        row = self._row(contact_id)
        return {"K_CONTACT": contact_id, **row, "profile_ids": sorted(self._links[contact_id])}

    def contacts(self) -> list[dict[str, Any]]:
        return [self.contact(cid) for cid in self._contacts]  # key order

    def profiles(self) -> dict[int, str]:
        return dict(self._profiles)

    def expire_sessions(self) -> None:
        """Make every open session expire now (the next call with its cookie is refused)."""
        now = self.clock.now()
        self.sessions = {sid: min(exp, now - timedelta(seconds=1)) for sid, exp in self.sessions.items()}

    def inject_error(self, style: ErrorStyle = "exception", message: str = "Simulated Efficy error",
                     code: int = 1000, times: int = 1) -> None:
        """Answer the next authenticated call(s) with an HTTP 200 error body in ``style``."""
        self._errors.extend([(style, message, code)] * times)

    def drain_outbox(self) -> list[ChangeRecord]:
        changes, self.outbox = self.outbox, []
        return changes

    def record_foreign_change(self, table: int, key: int, operation: Literal["Create", "Update", "Delete"]
                              = "Update") -> None:
        """Record a change of another table (companies, leads …), which contact webhooks must ignore."""
        self.outbox.append(ChangeRecord(table, key, operation, self.clock.now(), self.user, f"record {key}"))

    # -- internals: state changes ------------------------------------------------------------------------

    def _row(self, contact_id: int) -> dict[str, Any]:
        try:
            return self._contacts[int(contact_id)]
        except (KeyError, ValueError):
            raise KeyError(f"no contact {contact_id}") from None

    def _touch(self, contact_id: int) -> None:
        self._contacts.for_update(contact_id)["D_CHANGE"] = self.clock.now()

    def _apply_update(self, contact_id: int, row: dict[str, Any], changes: Mapping[str, Any]) -> None:
        changes = {k: v for k, v in changes.items() if k not in ("K_CONTACT", "D_CHANGE", "D_CREATE")}
        row.update(changes)
        self._touch(contact_id)
        self._record(contact_id, "Update", self._render_fields(changes))

    def _record(self, key: int, operation: Literal["Create", "Update", "Delete"], fields: dict[str, Any],
                consent: tuple[int, bool] | None = None) -> None:
        row = self._contacts.get(key, {})
        subject = " ".join(str(x) for x in (row.get("NAME"), row.get("FIRSTNAME")) if x) or f"contact {key}"
        change = ChangeRecord(CONTACT_TABLE_ID, key, operation, self.clock.now(), self.user, subject, fields)
        if consent is not None:
            change.consent_base_id, change.has_consented = str(consent[0]), consent[1]
        self.outbox.append(change)

    # -- internals: rendering ----------------------------------------------------------------------------

    def _link_row(self, contact_id: int, profile_id: int, row: dict[str, Any]) -> dict[str, Any]:
        if self.link_changed_field:
            when = self._link_changed.get((contact_id, profile_id))
            if when is None and contact_id not in self._links.stored and self._contacts.demo is not None \
                    and contact_id in self._contacts.demo:
                when = self._contacts.demo.created  # a demo contact's links date from the demo
            row[self.link_changed_field.upper()] = self._render_value("D_CHANGE", when)
        return row

    @staticmethod
    def _render_value(column: str, value: Any) -> Any:
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, datetime):
            return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds")
        if isinstance(value, date):
            return datetime(value.year, value.month, value.day).isoformat(timespec="seconds")
        if value is None:
            return ZERO_DATE if (column in _DATE_COLUMNS or column.startswith("D_")) else ""
        if isinstance(value, int | float):
            return str(value)
        return value

    def _render_fields(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self._render_value(k, v) for k, v in row.items()}

    def _render_contact(self, contact_id: int, *, key_as_string: bool,
                        columns: Sequence[str] | None = None) -> dict[str, Any]:
        row = self._contacts[contact_id]
        out: dict[str, Any] = {"K_CONTACT": str(contact_id) if key_as_string else contact_id}
        out.update(self._render_fields(row))
        if columns is not None:
            out = {c: out.get(c, "") for c in columns}
        return out

    # -- HTTP --------------------------------------------------------------------------------------------

    def render_fault(self, fault: Fault, request: Request) -> Response:
        """Transport-level faults come from the proxy in front of Efficy: an HTML page, not JSON."""
        headers = [("retry-after", str(int(fault.retry_after)))] if fault.retry_after is not None else []
        html = (f"<html><head><title>{fault.status} Gateway Time-out</title></head><body><center><h1>"
                f"{fault.status}</h1></center><hr><center>nginx</center></body></html>")
        return Response.text(html, status=fault.status, content_type="text/html", headers=headers)

    def render_malformed(self, request: Request) -> Response:
        return Response(200, b'[{"@name":"api","@func":[{"@name":"query","#result":{"#class":"data',
                        [("content-type", "application/json")])

    def _error_response(self, message: str, code: int = 1000, style: ErrorStyle = "exception",
                        contexts: list[dict[str, Any]] | None = None,
                        headers: Iterable[tuple[str, str]] = ()) -> Response:
        contexts = [dict(c) for c in contexts or []]
        body: Any
        if style == "exception":
            body = [{"@name": "exception", "#error": {"errorcode": code, "errorstring": message}}]
        elif style == "efficy_u":
            body = [{"#error": {"code": code, "message": message, "detail": ""}}]
        elif style == "top_object":
            body = {"#error": {"errorcode": code, "errorstring": message}}
        elif style == "top_flag":
            body = {"error": True, "code": code, "message": message}
        else:
            if not contexts:
                contexts = [{"@name": "api", "@func": [{"@name": "unknown"}]}]
            target = contexts[0]
            if style == "context_string":
                target["#error"] = message
            elif style == "context_object":
                target["#error"] = {"errorcode": code, "errorstring": message, "detail": ""}
            else:
                funcs = [dict(f) for f in target.get("@func") or [{"@name": "unknown"}]]
                if style == "function_string":
                    funcs[0]["#error"] = message
                else:
                    funcs[0]["#error"] = True
                    funcs[0]["#message"] = message
                target["@func"] = funcs
            body = contexts
        return Response.json(body, headers=headers)

    async def handle(self, request: Request) -> Response:
        if request.method != "POST" or not request.path.rstrip("/").endswith("/crm/json"):
            return Response.text("<html><body>404 Not Found</body></html>", 404, content_type="text/html")
        alias = request.query.get("customer") or request.header("x-efficy-customer")
        if self.customer is not None and alias != self.customer:
            return self._error_response(f"Customer '{alias or ''}' is not configured on this server", 1001)
        if self.require_content_length and request.header("content-length") is None:
            # What Efficy does with a chunked body: reads nothing useful and says so, in a 200.
            return self._error_response("Request body is not valid JSON", 1002)

        session_id, new_cookie, refusal = self._authenticate(request)
        headers: list[tuple[str, str]] = []
        if new_cookie:
            headers.append(("set-cookie", f"{SESSION_COOKIE}={session_id}; Path=/crm; HttpOnly"))
        if refusal == _SESSION_GONE:
            return self._expired_session_response()
        if refusal is not None:
            return self._error_response(refusal, 1003, headers=headers)
        if (request.header("x-efficy-logoff") or "").lower() == "true" and session_id:
            self.sessions.pop(session_id, None)

        try:
            contexts = request.json()
        except (ValueError, UnicodeDecodeError):
            return self._error_response("Request body is not valid JSON", 1002, headers=headers)
        if not isinstance(contexts, list) or not all(isinstance(c, dict) for c in contexts):
            return self._error_response("Request must be a JSON array of contexts", 1002, headers=headers)
        self.rpc_log.append(contexts)
        if self.deny_rights:
            return self._error_response(MSG_NO_RIGHTS, 1004, headers=headers)
        if self._errors:
            style, message, code = self._errors.pop(0)
            return self._error_response(message, code, style, contexts, headers=headers)
        try:
            out = [self._run_context(ctx) for ctx in contexts]
        except _RpcFailure as failure:
            return self._error_response(failure.message, failure.code, headers=headers)
        return Response.json(out, headers=headers)

    def _expired_session_response(self) -> Response:
        answer = self.expired_session_answer
        if answer == "http_401":
            return Response.text("<html><body>401 Unauthorized</body></html>", 401, content_type="text/html")
        if answer == "frmk_2612":
            return Response.json([{"#error": {"code": 2612, "message": "Request refused", "detail": "FRMK-2612"}}])
        if answer == "core_1243":
            return Response.json([{"#error": {"code": "CORE-1243", "message": "Request refused", "detail": ""}}])
        message = {"session_timeout": "Session timeout", "crm_session_not_active": "The CRM Session is not active",
                   "session_not_valid": "The session is not valid anymore"}.get(answer, MSG_NO_CONNECTION)
        return self._error_response(message, 1003)

    def _authenticate(self, request: Request) -> tuple[str | None, bool, str | None]:
        """(session id, whether it is new, refusal message or None)."""
        now = self.clock.now()
        cookie = _cookie(request.header("cookie"), SESSION_COOKIE)
        key = request.header("x-efficy-apikey")
        if key is not None and not _secrets.compare_digest(key.encode(), self.api_key.encode()):
            return None, False, MSG_INVALID_USER
        if cookie is not None:
            expires = self.sessions.get(cookie)
            if expires is None or expires <= now:
                self.sessions.pop(cookie, None)
                return None, False, _SESSION_GONE
            self.sessions[cookie] = now + self.session_ttl  # sliding expiry
            return cookie, False, None
        if key is None:
            return None, False, MSG_INVALID_USER
        session_id = f"{_secrets.token_hex(4).upper()}-{_secrets.token_hex(4).upper()}"
        self.sessions[session_id] = now + self.session_ttl
        self.sessions_created += 1
        return session_id, True, None

    # -- RPC contexts ------------------------------------------------------------------------------------

    def _run_context(self, ctx: dict[str, Any]) -> dict[str, Any]:
        out = dict(ctx)
        funcs = ctx.get("@func") or []
        if not isinstance(funcs, list):
            raise _RpcFailure("@func must be an array", 1010)
        name = ctx.get("@name")
        if name == "api":
            out["@func"] = [self._run_api(dict(f)) for f in funcs]
        elif name == "consult":
            self._check_entity(ctx)
            key = self._context_key(ctx)
            if key not in self._contacts:
                raise _RpcFailure(f"Record {key} not found in Cont", 1020)
            out["consulthandle"] = self._handle()
            out["@func"] = [self._run_consult(key, dict(f)) for f in funcs]
        elif name == "edit":
            self._check_entity(ctx)
            out.update(self._run_edit(ctx, funcs))
        else:
            raise _RpcFailure(f"Unknown context '{name}'", 1011)
        return out

    def _handle(self) -> int:
        self._next_handle += 1
        return self._next_handle

    @staticmethod
    def _check_entity(ctx: Mapping[str, Any]) -> None:
        if ctx.get("entity") != "Cont":
            raise _RpcFailure(f"Entity '{ctx.get('entity')}' is not available", 1012)

    @staticmethod
    def _context_key(ctx: Mapping[str, Any]) -> int:
        try:
            return int(float(str(ctx.get("key"))))
        except ValueError:
            raise _RpcFailure(f"Invalid key '{ctx.get('key')}'", 1013) from None

    def _dataset(self, f: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
        f["#result"] = {"#class": "dataset", "#data": rows}
        return f

    def _run_consult(self, key: int, f: dict[str, Any]) -> dict[str, Any]:
        name = f.get("@name")
        if name == "master":
            return self._dataset(f, [self._render_contact(key, key_as_string=False)])
        if name == "detail":
            if f.get("detail") == "Prof":
                rows = [self._link_row(key, p, {"K_PROFILE": str(p), "NAME": self._profiles.get(p, ""),
                                                "K_CONTACT": str(key)})
                        for p in sorted(self._links[key])]
                return self._dataset(f, rows)
            return self._dataset(f, [])
        if name == "category":
            return self._dataset(f, [])
        raise _RpcFailure(f"Unknown function '{name}'", 1014)

    def _run_edit(self, ctx: Mapping[str, Any], funcs: list[Any]) -> dict[str, Any]:
        key = self._context_key(ctx)
        creating = key == 0
        if not creating and key not in self._contacts:
            raise _RpcFailure(f"Record {key} not found in Cont", 1020)
        data: dict[str, Any] = {}
        link_ops: list[tuple[bool, int]] = []
        for f in funcs:
            name = f.get("@name")
            if name == "update":
                payload = f.get("@data") or {}
                if not isinstance(payload, dict):
                    raise _RpcFailure("@data must be an object", 1015)
                data.update({str(k).upper(): v for k, v in payload.items()})
            elif name in ("insertDetail", "deleteDetail"):
                if f.get("detail") != "Prof":
                    raise _RpcFailure(f"Detail '{f.get('detail')}' is not available on Cont", 1016)
                link_ops.append((name == "insertDetail", self._profile_key(f.get("detailkey"))))
            else:
                raise _RpcFailure(f"Unknown function '{name}'", 1014)
        result: dict[str, Any] = {"edithandle": self._handle()}
        if not ctx.get("commit"):
            return result  # uncommitted edits are discarded when the context closes
        if creating:
            key = self.add_contact(**{k: _parse_in(k, v) for k, v in data.items()})
            result.update(key=key, inserted=True)
        elif data:
            self._apply_update(key, self._contacts.for_update(key), {k: _parse_in(k, v) for k, v in data.items()})
        for insert, profile_id in link_ops:
            if insert:
                self.add_profile_to_contact(key, profile_id)
            else:
                self.remove_profile_from_contact(key, profile_id)
        result["commit"] = True
        return result

    def _profile_key(self, value: Any) -> int:
        try:
            profile_id = int(float(str(value).split("_", 1)[0]))
        except ValueError:
            raise _RpcFailure(f"Invalid detail key '{value}'", 1017) from None
        if profile_id not in self._profiles:
            raise _RpcFailure(f"Record {profile_id} not found in Prof", 1020)
        return profile_id

    def _run_api(self, f: dict[str, Any]) -> dict[str, Any]:
        name = f.get("@name")
        if name == "currentuserfullname":
            f["#result"] = self.user_full_name
        elif name == "currentusername":
            f["#result"] = self.user
        elif name == "currentdatabasealias":
            f["#result"] = self.database
        elif name == "executesqlquery":
            if not self.allow_sql:
                raise _RpcFailure(MSG_SQL_DENIED, 1030)
            params = str(f.get("queryparams") or "").split("\n")
            rows = self._sql(str(f.get("sql") or ""), params, _record_count(f))
            return self._dataset(f, _limit(rows, f))
        elif name == "query":
            return self._dataset(f, _limit(self._run_query(f), f))
        elif name == "consultmanyex":
            return self._dataset(f, self._consult_many(f))
        elif name == "contactidsfromemailaddresses":
            wanted = {e.strip().lower() for e in str(f.get("recipients") or "").split(";") if e.strip()}
            rows = [{"K_CONTACT": str(cid), "EMAIL1": row["EMAIL1"]}
                    for cid, row in sorted(self._contacts.items())
                    if str(row.get("EMAIL1") or "").lower() in wanted]
            return self._dataset(f, rows)
        elif name in ("addlink", "deletelink"):
            if f.get("entity") != "Cont" or f.get("detail") != "Prof":
                raise _RpcFailure("Only Cont-Prof links are simulated", 1016)
            key = self._context_key(f)
            if key not in self._contacts:
                raise _RpcFailure(f"Record {key} not found in Cont", 1020)
            profile_id = self._profile_key(f.get("detailkey"))
            if name == "addlink":
                self.add_profile_to_contact(key, profile_id)
            else:
                self.remove_profile_from_contact(key, profile_id)
            f["#result"] = True
        else:
            raise _RpcFailure(f"Unknown function '{name}'", 1014)
        return f

    def _run_query(self, f: Mapping[str, Any]) -> list[dict[str, Any]]:
        try:
            query_id = int(float(str(f.get("key"))))
        except ValueError:
            raise _RpcFailure(f"Invalid query key '{f.get('key')}'", 1013) from None
        query = self._queries.get(query_id)
        if query is None:
            raise _RpcFailure(f"Query {query_id} not found", 1020)
        if query.members is not None:
            ids = [cid for cid in query.members if cid in self._contacts]
        elif query.key_predicate is not None:
            ids = [cid for cid in self._ids_in_range([]) if query.key_predicate(cid)]
        else:
            assert query.predicate is not None
            ids = [cid for cid in self._contacts if query.predicate(self.contact(cid))]  # key order
        columns = ["K_CONTACT", "NAME", "FIRSTNAME", "EMAIL1"]
        return [self._render_contact(cid, key_as_string=True, columns=columns) for cid in ids]

    def _consult_many(self, f: Mapping[str, Any]) -> list[dict[str, Any]]:
        if f.get("entity") != "Cont":
            raise _RpcFailure(f"Entity '{f.get('entity')}' is not available", 1012)
        sep = str(f.get("separator") or ";")
        find = [c.strip().upper() for c in str(f.get("findfield") or "").split(sep) if c.strip()]
        keys = str(f.get("keys") or "").split(sep)
        if len(find) != len(keys):
            raise _RpcFailure("findfield and keys do not match", 1018)
        rows = [self._render_contact(cid, key_as_string=True) for cid in self._contacts]
        rows = [r for r in rows if all(str(r.get(c, "")) == k for c, k in zip(find, keys, strict=True))]
        order = str(f.get("orderbyfield") or "K_CONTACT").upper()
        return sorted(rows, key=lambda r: _sort_key(r.get(order)))

    # -- a tiny SQL subset (what keyset paging and the profile tables need) --------------------------------

    _SELECT = re.compile(
        r"^select\s+(?P<cols>.+?)\s+from\s+(?P<table>\w+)(?:\s+where\s+(?P<where>.+?))?"
        r"(?:\s+order\s+by\s+(?P<order>.+?))?\s*;?$", re.IGNORECASE | re.DOTALL)
    _COND = re.compile(r"^(\w+)\s*(>=|<=|<>|=|>|<)\s*:p(\d+)$")

    def _sql(self, sql: str, params: list[str], limit: int = 0) -> list[dict[str, Any]]:
        """A tiny SQL subset. Rows are produced lazily and, for keyset paging on contacts (``K_CONTACT > :p1
        order by K_CONTACT``), only the requested page is ever rendered: a real database does not build the
        whole table per page, and neither may the simulator, or benchmarks would measure it, not us."""
        match = self._SELECT.match(" ".join(sql.split()))
        if match is None:
            raise _RpcFailure("Incorrect syntax in SQL query", 1031)
        table = match["table"].upper()
        conditions: list[tuple[str, str, str]] = []
        if match["where"]:
            for cond in re.split(r"\s+and\s+", match["where"], flags=re.IGNORECASE):
                c = self._COND.match(cond.strip())
                if c is None:
                    raise _RpcFailure(f"Unsupported condition in SQL query: {cond}", 1031)
                column, op, index = c[1].upper(), c[2], int(c[3]) - 1
                if index >= len(params):
                    raise _RpcFailure(f"Missing value for parameter :p{index + 1}", 1032)
                conditions.append((column, op, params[index]))
        order = [c.strip().upper() for c in match["order"].split(",")] if match["order"] else []
        if (table == "CONTACTS" and match["cols"].strip().upper() == "K_CONTACT" and order in ([], ["K_CONTACT"])
                and all(column == "K_CONTACT" for column, _, _ in conditions)):
            # keys only: answered from the key index, as a database answers from its primary key
            ids = self._ids_in_range(conditions)
            return [{"K_CONTACT": str(cid)} for cid in (itertools.islice(ids, limit) if limit > 0 else ids)]
        rows: Iterable[dict[str, Any]] = (
            r for r in self._table_rows(table, conditions, by_key=order == ["K_CONTACT"])
            if all(_compare(r.get(column), op, value) for column, op, value in conditions))
        cols = match["cols"].strip()
        count = re.fullmatch(r"count\(\*\)(?:\s+as\s+(\w+))?", cols, re.IGNORECASE)
        if count and table == "CONTACTS" and all(column == "K_CONTACT" for column, _, _ in conditions):
            # counted off the key index, as a database counts a primary key: no row is rendered
            return [{(count[1] or "COUNT").upper(): str(sum(1 for _ in self._ids_in_range(conditions)))}]
        if count:
            return [{(count[1] or "COUNT").upper(): str(sum(1 for _ in rows))}]
        if order and not (table == "CONTACTS" and order == ["K_CONTACT"]):
            def key(row: Mapping[str, Any]) -> tuple[tuple[int, float, str], ...]:
                return tuple(_sort_key(row.get(column)) for column in order)
            rows = heapq.nsmallest(limit, rows, key=key) if limit > 0 else sorted(rows, key=key)
        rows = list(itertools.islice(rows, limit) if limit > 0 else rows)
        if cols != "*":
            wanted = [c.strip().upper() for c in cols.split(",")]
            unknown = [c for c in wanted if rows and c not in rows[0]]
            if unknown:
                raise _RpcFailure(f"Invalid column name '{unknown[0]}'", 1033)
            rows = [{c: r.get(c) for c in wanted} for r in rows]
        return rows

    def _table_rows(self, table: str, conditions: list[tuple[str, str, str]], *,
                    by_key: bool = False) -> Iterator[dict[str, Any]]:
        if table == "CONTACTS":
            # conditions on the key narrow a sorted key index first (as a database's primary key does), so
            # a keyset page costs its own rows, not the whole table
            ids = self._ids_in_range(conditions)
            return (self._render_contact(cid, key_as_string=True) for cid in ids)
        if table == "CONT_PROF":
            return (self._link_row(cid, pid, {"K_CONTACT": str(cid), "K_PROFILE": str(pid)})
                    for cid in self._ids_in_range(conditions) for pid in sorted(self._links.get(cid, ())))
        if table == "PROFILE":
            return ({"K_PROFILE": str(pid), "NAME": name} for pid, name in list(self._profiles.items()))
        raise _RpcFailure(f"Invalid object name '{table}'", 1034)


    def _ids_in_range(self, conditions: list[tuple[str, str, str]]) -> Iterator[int]:
        """Contact ids in key order that satisfy the numeric conditions on K_CONTACT, produced lazily: a
        page reads its own rows off the index, not a copy of the rest of the table."""
        if self._sorted_ids is None:
            self._sorted_ids = self._contacts.sorted_keys()
        ids = self._sorted_ids
        lo, hi = 0, len(ids)
        for column, op, value in conditions:
            if column != "K_CONTACT":
                continue
            try:
                bound = float(value)
            except ValueError:
                continue
            if op == ">":
                lo = max(lo, bisect.bisect_right(ids, bound))
            elif op == ">=":
                lo = max(lo, bisect.bisect_left(ids, bound))
            elif op == "<":
                hi = min(hi, bisect.bisect_left(ids, bound))
            elif op == "<=":
                hi = min(hi, bisect.bisect_right(ids, bound))
        key_conditions = [(op, value) for column, op, value in conditions if column == "K_CONTACT"]
        return (ids[i] for i in range(lo, hi)
                if all(_compare(str(ids[i]), op, value) for op, value in key_conditions))


# -- helpers ----------------------------------------------------------------------------------------------

def _cookie(header: str | None, name: str) -> str | None:
    for part in (header or "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value
    return None


def _record_count(f: Mapping[str, Any]) -> int:
    """``recordCount`` (Enterprise) or ``recordcount`` (Efficy U): 0 or absent means all rows."""
    raw = f.get("recordCount", f.get("recordcount", 0))
    try:
        return int(raw or 0)
    except (TypeError, ValueError):
        raise _RpcFailure(f"Invalid recordCount '{raw}'", 1019) from None


def _limit(rows: list[dict[str, Any]], f: Mapping[str, Any]) -> list[dict[str, Any]]:
    count = _record_count(f)
    return rows[:count] if count > 0 else rows


def _sort_key(value: Any) -> tuple[int, float, str]:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def _column_sort_key(column: str) -> Callable[[Mapping[str, Any]], tuple[int, float, str]]:
    def key(row: Mapping[str, Any]) -> tuple[int, float, str]:
        return _sort_key(row.get(column))
    return key


def _compare(left: Any, op: str, right: str) -> bool:
    try:
        a: Any = float(left)
        b: Any = float(right)
    except (TypeError, ValueError):
        a, b = str(left), right
    return {"=": a == b, "<>": a != b, ">": a > b, "<": a < b, ">=": a >= b, "<=": a <= b}[op]


def _parse_in(column: str, value: Any) -> Any:
    """Values written through the API arrive in Efficy's string forms; store them typed like the UI would."""
    if column in _DATE_COLUMNS or column.startswith("D_"):
        if value in (None, "", ZERO_DATE, "1899-12-30"):
            return None
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise _RpcFailure(f"Invalid date '{value}' for {column}", 1040) from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if column == "OPENED":
        return str(value).strip().lower() in ("1", "t", "true")
    return value


# -- the webhook sender -----------------------------------------------------------------------------------

WebhookForm = Literal["native", "contract"]


class EfficyWebhookSender:
    """Delivers the simulator's outbox to the daemon the way Efficy does (research §1.9, §3).

    ``form="native"``: Efficy WebHooks' ``{database, version, records:[…]}``, all tables (the receiver must
    ignore non-contact tables), optional extra ``headers`` (no signature is documented for native hooks
    [U]). ``form="contract"``: the generic-connector array of ``{record_id, operation}`` (contacts only)
    signed ``X-Justin-Signature: sha256=…`` with ``secret``; CRM Profile link changes become consent items
    ``{record_id, consent_base_id, has_consented}`` sent to ``consent_url`` (default: the same URL).

    Non-realtime WebHooks deliver "minutes later" in batches, hence ``interval`` (default 120 s [U]) and
    ``batch_size`` (contract maximum 200; native default 100 [U]). A batch answered 2xx is delivered; a 4xx
    other than 408/429 is dropped (the receiver said it will never take it); anything else, including a
    transport error, is kept and retried at the next flush.
    """

    def __init__(
        self,
        sim: EfficySimulator,
        target_url: str,
        *,
        http: httpx.AsyncClient,
        form: WebhookForm = "native",
        secret: str | None = None,
        headers: Mapping[str, str] | None = None,
        interval: float = 120.0,
        batch_size: int | None = None,
        consent_url: str | None = None,
    ):
        if form not in ("native", "contract"):
            raise ValueError("form must be 'native' or 'contract'")
        if form == "contract" and secret is None:
            raise ValueError("the contract form needs a secret to sign with")
        self.sim = sim
        self.target_url = target_url
        self.consent_url = consent_url or target_url
        self.http = http
        self.form = form
        self._secret = secret
        self.headers = dict(headers or {})
        self.interval = interval
        limit = MAX_CONTRACT_ITEMS if form == "contract" else 100
        self.batch_size = min(batch_size or limit, limit) if form == "contract" else (batch_size or limit)
        self._pending: list[tuple[str, list[Any]]] = []  # (url, items) batches not yet delivered
        self.delivered = 0
        self.dropped = 0
        self.posts = 0

    def __repr__(self) -> str:
        return f"EfficyWebhookSender(target_url={self.target_url!r}, form={self.form!r})"

    async def run(self) -> None:
        """Deliver every ``interval`` seconds, forever (cancel the surrounding scope to stop)."""
        while True:
            await trio.sleep(self.interval)
            try:
                await self.flush()
            except Exception:  # never let one bad delivery end the loop
                log.exception("efficy_webhook_flush_failed")

    async def flush(self) -> int:
        """Post everything recorded so far (and earlier failures); returns the number of items delivered."""
        self._pending.extend(self._batches(self.sim.drain_outbox()))
        delivered = 0
        while self._pending:
            url, items = self._pending[0]
            outcome = await self._post(url, items)
            if outcome == "retry":
                break
            self._pending.pop(0)
            if outcome == "ok":
                delivered += len(items)
            else:
                self.dropped += len(items)
        self.delivered += delivered
        return delivered

    @property
    def pending(self) -> int:
        return sum(len(items) for _, items in self._pending)

    def _batches(self, changes: list[ChangeRecord]) -> list[tuple[str, list[Any]]]:
        items: list[tuple[str, Any]] = []
        for change in changes:
            if self.form == "native":
                items.append((self.target_url, {
                    "table": change.table, "key": change.key, "operation": change.operation,
                    "user": change.user, "subject": change.subject, "fields": change.fields,
                    "date": change.date.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                }))
            elif change.table != CONTACT_TABLE_ID:
                continue  # contract subscriptions are per entity: contacts only
            elif change.consent_base_id is not None:
                items.append((self.consent_url, {"record_id": str(change.key),
                                                 "consent_base_id": change.consent_base_id,
                                                 "has_consented": bool(change.has_consented)}))
            else:
                operation = {"Create": "created", "Update": "updated", "Delete": "deleted"}[change.operation]
                items.append((self.target_url, {"record_id": str(change.key), "operation": operation}))
        batches: list[tuple[str, list[Any]]] = []
        for url, item in items:
            if batches and batches[-1][0] == url and len(batches[-1][1]) < self.batch_size:
                batches[-1][1].append(item)
            else:
                batches.append((url, [item]))
        return batches

    async def _post(self, url: str, items: list[Any]) -> Literal["ok", "drop", "retry"]:
        if self.form == "native":
            payload: Any = {"database": self.sim.database, "version": self.sim.version, "records": items}
        else:
            payload = items
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", **self.headers}
        if self.form == "contract":
            assert self._secret is not None
            headers[SIGNATURE_HEADER] = sign_contract_body(body, self._secret)
        self.posts += 1
        try:
            response = await self.http.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("efficy_webhook_transport_error", error=type(exc).__name__, items=len(items))
            return "retry"
        status = response.status_code
        if 200 <= status < 300:
            log.debug("efficy_webhook_delivered", items=len(items), status=status)
            return "ok"
        if 400 <= status < 500 and status not in (408, 429):
            log.warning("efficy_webhook_rejected", items=len(items), status=status)
            return "drop"
        log.info("efficy_webhook_retry_later", items=len(items), status=status)
        return "retry"
