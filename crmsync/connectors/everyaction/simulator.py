"""An in-memory EveryAction / NGP VAN API v4 that behaves like the real one where it matters to a sync.

Used by tests, benchmarks and ``crmsync sandbox``; it reproduces the research's checklist A9:

1. Basic auth: any non-empty application name, password ``<GUID>|<0|1>``; the mode picks the dataset.
   401 in VAN's error envelope otherwise.
2. VAN's ``{"errors": [{code, text, properties?, hint?, referenceCode?}]}`` envelope for every API error,
   including injected faults (429 with ``Retry-After``, 5xx).
3. 404 ``NOT_FOUND`` for an unknown vanId or export job (jobs are visible only in the dataset that made them).
4. ``people/find``: a match answers 200 (a match response, a full person, or a 302 to the person:
   configurable, research A3.5); no match answers 404 with an *empty* body. ``people/findOrCreate``: 201
   ``{vanId, status: "UnmatchedStored"}`` on create, 200 on match (which also applies the payload). Matching
   needs a minimum field combination and ignores case and accents; without one, find never matches and
   findOrCreate always creates (duplicates, as the real API does).
5. ``null`` collections unless ``$expand``ed (``[]`` when expanded and empty). Permissioned expansions
   (``scores``, ``recordedAddresses``) answer 403 unless granted.
6. One-letter codes on input (phone type ``H/W/C/M/F``, opt-in ``I/U/O``, email ``P/W``), words on output.
   Anything else, including words on input, is a 400 ``INVALID_PARAMETER``, as is a phone failing VAN's
   North-American pattern (with the documented text and ``hint``).
7. ``GET people`` search with ``$top``/``$skip``, ``count`` and an absolute ``nextPageLink``.
8. Changed-entity export jobs: Pending on create (201), InProcess while polled, Complete after N polls;
   rows are the *current* version of each person changed in ``[dateChangedFrom, dateChangedTo)``; output is
   split into several files (by ``rows_per_file`` and/or ``fileSizeKbLimit``); numeric opt-in codes; download
   URLs are pre-signed, served without VAN auth, and expire; ``dateChangedFrom`` older than 90 days, a
   ``dateChangedTo`` in the future, or a bad ``fileSizeKbLimit`` answer 400; dates are echoed in the server's
   local offset; the answers do not echo ``requestedFields`` (the real one does not), and requested fields
   the server does not know are simply absent from the files' header.
9. Faults via :class:`~crmsync.connectors.simkit.FaultPlan`.

Opt-in status is stored per phone number, not per person (research A4): setting it through one person changes
what every person sharing the number shows, and stamps a change on each of them. Inferred behaviour
(research [INF]) is marked where it is implemented; each such choice is a constructor setting.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import structlog

from crmsync.clock import WallClock
from crmsync.connectors.everyaction.exports import MAX_FILE_SIZE_KB, MIN_FILE_SIZE_KB, parse_van_datetime
from crmsync.connectors.everyaction.records import (
    ADDRESS_TYPE_CODES,
    EMAIL_TYPE_CODES,
    OPT_IN_WORDS,
    PHONE_TYPE_CODES,
    VAN_PHONE_PATTERN,
    MatchCombination,
    OptInStatus,
    VanPerson,
    candidate_combinations,
    contacts_csv,
    fold,
    opt_in_export_id,
    opt_in_from_code,
    parse_person,
    split_street,
    zip5,
)
from crmsync.connectors.simkit import Fault, Request, Response, SimulatorApp

log = structlog.get_logger("crmsync.connectors.everyaction.simulator")

#: The key the simulator accepts unless told otherwise (any GUID-shaped string works as a key).
SIM_API_KEY = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

API_PREFIX = "/v4"
BLOB_PREFIX = "/blob/changedentities/"

#: ``$expand`` values (research A3.4), lower-cased, mapped to the person key they fill.
EXPANSIONS: Mapping[str, str] = {
    "addresses": "addresses", "phones": "phones", "emails": "emails", "codes": "codes",
    "customfields": "customFields", "externalids": "identifiers", "preferences": "preferences",
    "recordedaddresses": "recordedAddresses", "reporteddemographics": "reportedDemographics",
    "suppressions": "suppressions", "cases": "caseworkCases", "customproperties": "customProperties",
    "districts": "districts", "electionrecords": "electionRecords", "membershipstatuses": "membershipStatus",
    "notes": "notes", "organizationroles": "organizationRoles", "scores": "scores",
    "disclosurefieldvalues": "disclosureFieldValues", "contributionhistory": "contributionSummary",
}
RESTRICTED_EXPANSIONS = frozenset({"scores", "recordedaddresses"})

#: ``changedEntityExportJobs/resources`` (subset); only Contacts produces rows here.
RESOURCES = ("ActivistCodes", "ContactHistory", "Contacts", "ContactsActivistCodes", "ContactsOnlineForms")

#: Contacts fields the simulator can export. ``VanID`` is the core field, always included. Only VanID,
#: FirstName, LastName, Phone, PhoneOptInStatus and DateCreated are confirmed names (research A5).
CONTACT_EXPORT_FIELDS = (
    "VanID", "FirstName", "MiddleName", "LastName", "DateOfBirth", "Email", "Phone", "PhoneOptInStatus",
    "AddressLine1", "AddressLine2", "City", "State", "Zip5", "CountryCode", "DateCreated",
)
CORE_CONTACT_FIELDS = ("VanID",)

LOOKBACK = timedelta(days=90)


@dataclass(frozen=True)
class _Change:
    at: datetime
    by: str | None  # API key that made it, None for a user working in EveryAction


@dataclass
class _Phone:
    phone_id: int
    number: str  # 10 digits
    phone_type: str | None  # word
    is_preferred: bool
    ext: str | None
    date_created: datetime


@dataclass
class _Email:
    email: str
    email_type: str | None
    is_preferred: bool
    is_subscribed: bool | None
    subscription_status: str | None
    date_created: datetime


@dataclass
class _Address:
    address_id: int
    line1: str | None
    line2: str | None
    line3: str | None
    city: str | None
    state: str | None
    zip: str | None
    country_code: str | None
    address_type: str | None
    is_preferred: bool


@dataclass
class _Person:
    van_id: int
    first_name: str | None
    last_name: str | None
    middle_name: str | None
    date_of_birth: str | None  # YYYY-MM-DD
    date_created: datetime
    emails: list[_Email] = field(default_factory=list)
    phones: list[_Phone] = field(default_factory=list)
    addresses: list[_Address] = field(default_factory=list)
    identifiers: dict[str, tuple[str, str]] = field(default_factory=dict)  # folded type -> (type, id)
    changes: list[_Change] = field(default_factory=list)


@dataclass
class _File:
    name: str
    signature: str
    content: str
    expires: datetime


@dataclass
class _Job:
    job_id: int
    key: str
    date_from: datetime
    date_to: datetime
    resource_type: str
    fields: list[str]
    file_size_kb: int
    exclude_self: bool
    requested_ids: list[int]
    echo: dict[str, Any]
    polls: int = 0
    status: str = "Pending"
    message: str = "Created export job"
    code: str | None = None
    record_count: int = 0
    files: list[_File] = field(default_factory=list)
    fail_with: str | None = None
    files_base: str = ""


@dataclass
class _Database:
    people: dict[int, _Person] = field(default_factory=dict)
    opt_ins: dict[str, OptInStatus] = field(default_factory=dict)  # 10-digit number -> status
    jobs: dict[int, _Job] = field(default_factory=dict)


@dataclass(frozen=True)
class _Caller:
    application_name: str
    key: str
    mode: int


class _HttpError(Exception):
    """Internal: abort handling with a rendered error response."""

    def __init__(self, response: Response):
        super().__init__(response.status)
        self.response = response


def _van_error(status: int, code: str, text: str, *, properties: Iterable[str] = (), hint: str | None = None,
               reference_code: str | None = None, headers: Iterable[tuple[str, str]] = ()) -> Response:
    err: dict[str, Any] = {"code": code, "text": text}
    if properties:
        err["properties"] = list(properties)
    if hint:
        err["hint"] = hint
    if reference_code:
        err["referenceCode"] = reference_code
    return Response.json({"errors": [err]}, status=status, headers=headers)


def _invalid(text: str, *properties: str, hint: str | None = None) -> _HttpError:
    return _HttpError(_van_error(400, "INVALID_PARAMETER", text, properties=properties, hint=hint))


_NOT_FOUND_TEXT = "The specified resource cannot be found."
_STATUS_CODES = {400: "INVALID_PARAMETER", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND",
                 408: "REQUEST_TIMEOUT", 429: "TOO_MANY_REQUESTS", 500: "INTERNAL_SERVER_ERROR",
                 502: "BAD_GATEWAY", 503: "SERVICE_UNAVAILABLE", 504: "GATEWAY_TIMEOUT"}


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat().replace("+00:00", "Z")


class EveryActionSimulator(SimulatorApp):
    """The simulated API (an ASGI app) plus plain methods for tests and the sandbox.

    Settings for behaviour the research could not pin down ([INF]):

    * ``find_response``: what a matched ``people/find`` returns: ``"match"`` (``{vanId, status}``),
      ``"person"`` (full person, collections ``null``) or ``"redirect"`` (302 to ``/v4/people/{vanId}``);
    * ``upsert_response``: the same choice (``"match"`` or ``"person"``) for a matched findOrCreate;
    * ``match_status``: the ``status`` word for a match (only ``"UnmatchedStored"`` is documented);
    * ``opt_in_words``: output words for opt-in status (only ``"Unknown"`` is confirmed);
    * ``polls_to_complete``: status polls before a job completes (>= 1; the create answer is always Pending);
    * ``rows_per_file``: split export files after this many rows (as well as by ``fileSizeKbLimit``);
    * ``csv_delimiter`` / ``opt_in_as_float``: export rendering (tab or comma; ``1`` or ``1.0``);
    * ``link_lifetime``: how long download links work (docs say 24 hours and 20 days; default the shorter);
    * ``identifier_types``: if given, the external-id types that exist in this instance (others: 400);
    * ``server_timezone``: offset used to echo dates (VAN answers in US Eastern);
    * ``latency``: seconds each call takes (default 0), for benchmarks and the sandbox;
    * ``export_columns``: the Contacts columns this instance exports. Only ``VanID, FirstName, LastName, Phone,
      PhoneOptInStatus, DateCreated`` are confirmed names; the others (``Email``, address columns, ...) are
      guesses. A requested column outside this list is silently left out of the files, and the job's
      answer never says so (it does not echo ``requestedFields``).

    A no-op write (nothing actually changes) does not stamp a change time [INF].
    """

    def __init__(
        self,
        clock: WallClock | None = None,
        *,
        api_key: str | None = SIM_API_KEY,
        find_response: Literal["match", "person", "redirect"] = "match",
        upsert_response: Literal["match", "person"] = "match",
        match_status: str = "Matched",
        opt_in_words: Mapping[OptInStatus, str] = OPT_IN_WORDS,
        polls_to_complete: int = 2,
        rows_per_file: int | None = None,
        csv_delimiter: str = ",",
        opt_in_as_float: bool = False,
        link_lifetime: timedelta = timedelta(hours=24),
        identifier_types: Iterable[str] | None = None,
        granted_expansions: Iterable[str] = (),
        server_timezone: str = "America/New_York",
        public_url: str | None = None,
        export_columns: Iterable[str] = CONTACT_EXPORT_FIELDS,
        latency: float = 0.0,
    ):
        super().__init__()
        if polls_to_complete < 1:
            raise ValueError("polls_to_complete must be >= 1 (a new job is always Pending)")
        if rows_per_file is not None and rows_per_file < 1:
            raise ValueError("rows_per_file must be >= 1")
        self.clock = clock or WallClock()
        self.api_key = api_key
        self.find_response = find_response
        self.upsert_response = upsert_response
        self.match_status = match_status
        self.opt_in_words = dict(opt_in_words)
        self.polls_to_complete = polls_to_complete
        self.rows_per_file = rows_per_file
        self.csv_delimiter = csv_delimiter
        self.opt_in_as_float = opt_in_as_float
        self.link_lifetime = link_lifetime
        self.identifier_types = None if identifier_types is None else {fold(t) for t in identifier_types}
        self.granted_expansions = {e.lower() for e in granted_expansions}
        self.server_tz = ZoneInfo(server_timezone)
        self.public_url = public_url.rstrip("/") if public_url else None
        unknown = set(export_columns) - set(CONTACT_EXPORT_FIELDS)
        if unknown:
            raise ValueError(f"the simulator cannot export {sorted(unknown)}")
        self.export_columns = tuple(export_columns)
        if latency < 0:
            raise ValueError("latency must be >= 0")
        self.latency = latency  # seconds per call (benchmarks, sandbox); VAN publishes no rate limit
        self._dbs: dict[int, _Database] = {0: _Database(), 1: _Database()}
        self._van_ids = itertools.count(100_001)
        self._phone_ids = itertools.count(5_000_001)
        self._address_ids = itertools.count(7_000_001)
        self._job_ids = itertools.count(2_170_181_229)
        self._files: dict[str, tuple[int, _File]] = {}
        self._fail_next_job: str | None = None
        #: Inspection for tests: downloads served, and downloads that (wrongly) carried an Authorization
        #: header.
        self.downloads: list[str] = []
        self.downloads_with_auth = 0

    # =====================================================================================================
    # Plain methods (tests, sandbox): changes made "in EveryAction" by a user, and inspection.

    def add_person(
        self,
        first_name: str | None = None,
        last_name: str | None = None,
        *,
        email: str | None = None,
        phone: str | None = None,
        phone_type: str = "C",
        phone_opt_in: OptInStatus | None = None,
        address_line1: str | None = None,
        city: str | None = None,
        state: str | None = None,
        zip: str | None = None,
        date_of_birth: date | str | None = None,
        identifiers: Mapping[str, str] | None = None,
        db_mode: int = 1,
        country_code: str = "US",
    ) -> int:
        """Create a person as a user would in the UI; returns the vanId. Stamps a change at clock.now()."""
        body: dict[str, Any] = {"firstName": first_name, "lastName": last_name}
        if date_of_birth is not None:
            body["dateOfBirth"] = (date_of_birth.isoformat() if isinstance(date_of_birth, date)
                                   else date_of_birth)
        if email:
            body["emails"] = [{"email": email, "isPreferred": True}]
        if phone:
            # VAN takes any North-American number (a Canadian cell too), not only US ones (research A3.2)
            digits = re.sub(r"\D", "", phone)
            if not VAN_PHONE_PATTERN.match(digits):
                raise ValueError("not a valid North-American phone number")
            ph: dict[str, Any] = {"phoneNumber": digits[-10:], "phoneType": phone_type, "isPreferred": True}
            if phone_opt_in is not None:
                ph["phoneOptInStatus"] = {OptInStatus.OPT_IN: "I", OptInStatus.UNKNOWN: "U",
                                          OptInStatus.OPT_OUT: "O"}[phone_opt_in]
            body["phones"] = [ph]
        if address_line1 or zip or city:
            body["addresses"] = [{"addressLine1": address_line1, "city": city, "stateOrProvince": state,
                                  "zipOrPostalCode": zip, "countryCode": country_code, "type": "H",
                                  "isPreferred": True}]
        if identifiers:
            body["identifiers"] = [{"type": k, "externalId": v} for k, v in identifiers.items()]
        self._validate_payload(body)
        return self._create(self._db(db_mode), body, by=None).van_id

    def person(self, van_id: int, *, db_mode: int = 1) -> VanPerson:
        """The person fully expanded, through the same parser the client uses."""
        return parse_person(self.person_json(van_id, expand=("phones", "emails", "addresses", "externalIds"),
                                             db_mode=db_mode))

    def person_json(self, van_id: int, *, expand: Iterable[str] = (), db_mode: int = 1) -> dict[str, Any]:
        db = self._db(db_mode)
        return self._render(db, db.people[van_id], {e.lower() for e in expand})

    def people(self, *, db_mode: int = 1) -> list[VanPerson]:
        return [self.person(v, db_mode=db_mode) for v in sorted(self._db(db_mode).people)]

    def set_phone_opt_in(self, van_id: int, phone: str, status: OptInStatus, *, db_mode: int = 1) -> None:
        """A user changes a phone's opt-in in EveryAction (adds the phone to the person if missing)."""
        db = self._db(db_mode)
        number = _van_number(phone)
        code = {OptInStatus.OPT_IN: "I", OptInStatus.UNKNOWN: "U", OptInStatus.OPT_OUT: "O"}[status]
        self._apply(db, db.people[van_id], {"phones": [{"phoneNumber": number, "phoneOptInStatus": code}]},
                    by=None)

    def edit_person(self, van_id: int, *, first_name: str | None = None, last_name: str | None = None,
                    email: str | None = None, db_mode: int = 1) -> None:
        """A user edits a person's name or adds an email."""
        body: dict[str, Any] = {"firstName": first_name, "lastName": last_name}
        if email:
            body["emails"] = [{"email": email}]
        db = self._db(db_mode)
        self._apply(db, db.people[van_id], body, by=None)

    def phone_opt_in(self, phone: str, *, db_mode: int = 1) -> OptInStatus:
        """The opt-in status stored for a number (per phone, shared by everyone with that number)."""
        return self._db(db_mode).opt_ins.get(_van_number(phone), OptInStatus.UNKNOWN)

    def van_ids_with_phone(self, phone: str, *, db_mode: int = 1) -> list[int]:
        number = _van_number(phone)
        return sorted(p.van_id for p in self._db(db_mode).people.values()
                      if any(ph.number == number for ph in p.phones))

    def change_times(self, van_id: int, *, db_mode: int = 1) -> list[datetime]:
        return [c.at for c in self._db(db_mode).people[van_id].changes]

    def fail_next_export(self, message: str = "An unknown error occurred") -> None:
        """The next export job created ends in ``Error`` with this message and a reference code."""
        self._fail_next_job = message

    def export_job_polls(self, job_id: int, *, db_mode: int = 1) -> int:
        return self._db(db_mode).jobs[job_id].polls

    def _db(self, mode: int) -> _Database:
        if mode not in self._dbs:
            raise ValueError("db_mode must be 0 or 1")
        return self._dbs[mode]

    # =====================================================================================================
    # ASGI plumbing

    def render_fault(self, fault: Fault, request: Request) -> Response:
        headers = [("Retry-After", str(int(fault.retry_after)))] if fault.retry_after is not None else []
        code = _STATUS_CODES.get(fault.status, "INTERNAL_SERVER_ERROR")
        text = "API rate limit exceeded." if fault.status == 429 else "An unknown error occurred"
        return _van_error(fault.status, code, text, headers=headers,
                          reference_code=secrets.token_hex(3).upper() if fault.status >= 500 else None)

    async def handle(self, request: Request) -> Response:
        try:
            if request.path.startswith(BLOB_PREFIX):
                return self._download(request)
            if not (request.path == API_PREFIX or request.path.startswith(API_PREFIX + "/")):
                raise _HttpError(_van_error(404, "NOT_FOUND", _NOT_FOUND_TEXT))
            caller = self._authenticate(request)
            return self._route(request, caller, request.path[len(API_PREFIX):].strip("/"))
        except _HttpError as exc:
            return exc.response

    def _authenticate(self, request: Request) -> _Caller:
        denied = _HttpError(_van_error(401, "UNAUTHORIZED",
                                       "Authorization has been denied for this request."))
        header = request.header("authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic" or not token:
            raise denied
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise denied from None
        user, sep, password = decoded.partition(":")
        key, bar, mode = password.rpartition("|")
        if not sep or not user or not bar or mode not in ("0", "1") or not _GUID.match(key):
            raise denied
        if self.api_key is not None and key.lower() != self.api_key.lower():
            raise denied
        return _Caller(application_name=user, key=key.lower(), mode=int(mode))

    def _route(self, request: Request, caller: _Caller, route: str) -> Response:
        db = self._db(caller.mode)
        parts = route.split("/") if route else []
        method = request.method
        if parts == ["apiKeyProfiles"] and method == "GET":
            database = ("My Voters", "My Campaign")[caller.mode]
            return Response.json([{"apiKeyTypeName": "Custom Integration",
                                   "username": caller.application_name, "keyReference": caller.key[-4:],
                                   "databaseName": database}])
        if parts and parts[0] == "people":
            if len(parts) == 1 and method == "GET":
                return self._search(request, db)
            if parts == ["people", "find"] and method == "POST":
                return self._find(request, db)
            if parts == ["people", "findOrCreate"] and method == "POST":
                return self._find_or_create(request, db, caller)
            if len(parts) == 2 and method == "GET":
                person = self._resolve(db, parts[1])
                return Response.json(self._render(db, person, self._expansions(request)))
            if len(parts) == 2 and method == "POST":
                person = self._resolve(db, parts[1])
                body = self._json_body(request)
                self._validate_payload(body)
                self._apply(db, person, body, by=caller.key)
                return Response.json({"vanId": person.van_id, "status": self.match_status})
        if parts and parts[0] == "changedEntityExportJobs":
            if parts == ["changedEntityExportJobs"] and method == "POST":
                return self._create_job(request, db, caller)
            if parts == ["changedEntityExportJobs", "resources"] and method == "GET":
                return Response.json(list(RESOURCES))
            if len(parts) == 2 and method == "GET" and parts[1].isdigit():
                return self._poll_job(request, db, int(parts[1]))
        if parts and parts[0] in ("people", "changedEntityExportJobs", "apiKeyProfiles"):
            raise _HttpError(_van_error(405, "METHOD_NOT_ALLOWED",
                                        f"The requested resource does not support http method '{method}'."))
        raise _HttpError(_van_error(404, "NOT_FOUND", _NOT_FOUND_TEXT))

    def _json_body(self, request: Request) -> dict[str, Any]:
        content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise _HttpError(_van_error(415, "UNSUPPORTED_MEDIA_TYPE",
                                        "Request body must be sent with Content-Type: application/json."))
        try:
            body = request.json()
        except ValueError:
            raise _invalid("The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise _invalid("The request body must be a JSON object.")
        return body

    # =====================================================================================================
    # People

    def _resolve(self, db: _Database, ref: str) -> _Person:
        if ref.isdigit() and int(ref) in db.people:
            return db.people[int(ref)]
        if ":" in ref:  # {personIdType}:{personId}
            id_type, _, ext = ref.partition(":")
            for person in db.people.values():
                hit = person.identifiers.get(fold(id_type))
                if hit and hit[1] == ext:
                    return person
        raise _HttpError(_van_error(404, "NOT_FOUND", _NOT_FOUND_TEXT))

    def _expansions(self, request: Request) -> set[str]:
        raw = request.query.get("$expand", "")
        wanted = {e.strip().lower() for e in raw.split(",") if e.strip()}
        restricted = (wanted & RESTRICTED_EXPANSIONS) - self.granted_expansions
        if restricted:
            raise _HttpError(_van_error(403, "FORBIDDEN", "Access to this resource is restricted."))
        return wanted

    def _render(self, db: _Database, p: _Person, expand: set[str]) -> dict[str, Any]:
        word = self.opt_in_words
        out: dict[str, Any] = {
            "vanId": p.van_id, "firstName": p.first_name, "lastName": p.last_name,
            "middleName": p.middle_name, "suffix": None, "title": None, "contactMode": None,
            "nickname": None, "party": None, "employer": None, "occupation": None, "sex": None,
            "salutation": p.first_name,
            "formalSalutation": " ".join(filter(None, [p.first_name, p.last_name])),
            "dateOfBirth": f"{p.date_of_birth}T00:00:00Z" if p.date_of_birth else None,
            "dateCreated": _iso(p.date_created),
        }
        for key in EXPANSIONS.values():
            out[key] = None
        if "emails" in expand:
            out["emails"] = [{"type": e.email_type, "email": e.email, "dateCreated": _iso(e.date_created),
                              "isPreferred": e.is_preferred, "isSubscribed": e.is_subscribed,
                              "subscriptionStatus": e.subscription_status} for e in p.emails]
        if "phones" in expand:
            phones = []
            for ph in p.phones:
                status = word[db.opt_ins.get(ph.number, OptInStatus.UNKNOWN)]
                is_cell = ph.phone_type == "Cell"
                phones.append({
                    "phoneId": ph.phone_id, "phoneNumber": ph.number, "ext": ph.ext,
                    "dateCreated": _iso(ph.date_created), "phoneType": ph.phone_type,
                    "isPreferred": ph.is_preferred, "countryCode": "US", "dialingPrefix": "1",
                    # Both fields carry the same per-phone status here [INF].
                    "smsOptInStatus": status, "phoneOptInStatus": status,
                    "isCellStatus": {"statusId": 1, "statusName": "Verified Cell"} if is_cell else None,
                })
            out["phones"] = phones
        if "addresses" in expand:
            out["addresses"] = [{
                "addressId": a.address_id, "addressLine1": a.line1, "addressLine2": a.line2,
                "addressLine3": a.line3, "city": a.city, "stateOrProvince": a.state,
                "zipOrPostalCode": a.zip, "geoLocation": None, "countryCode": a.country_code,
                "preview": " ".join(filter(None, [a.line1, a.line2])) + " ", "type": a.address_type,
                "isPreferred": a.is_preferred, "streetAddress": a.line1, "displayMode": "Standardized",
            } for a in p.addresses]
        if "externalids" in expand:
            out["identifiers"] = [{"type": t, "externalId": x} for t, x in p.identifiers.values()]
        for name in expand - {"emails", "phones", "addresses", "externalids"}:
            if name in EXPANSIONS:
                out[EXPANSIONS[name]] = []  # expanded but the simulator keeps no such data
        return out

    def _validate_payload(self, body: Mapping[str, Any]) -> None:
        """All-or-nothing validation, as VAN answers 400 before writing anything."""
        for key in ("firstName", "lastName", "middleName", "dateOfBirth"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise _invalid(f"'{key}' must be a string.", key)
        if body.get("dateOfBirth"):
            try:
                date.fromisoformat(str(body["dateOfBirth"])[:10])
            except ValueError:
                raise _invalid("'dateOfBirth' is not a valid date.", "dateOfBirth") from None
        for name in ("emails", "phones", "addresses", "identifiers"):
            if body.get(name) is not None and not isinstance(body[name], list):
                raise _invalid(f"'{name}' must be an array.", name)
        for i, ph in enumerate(body.get("phones") or []):
            digits = re.sub(r"\D", "", str(ph.get("phoneNumber") or ""))
            if not VAN_PHONE_PATTERN.match(digits):
                raise _invalid(f"'phoneNumber' ({digits}) is not a valid phone number for NorthAmerica.",
                               f"phones[{i}].phoneNumber", hint=VAN_PHONE_PATTERN.pattern)
            if ph.get("phoneType") is not None and ph["phoneType"] not in PHONE_TYPE_CODES:
                raise _invalid(f"'phoneType' must be one of {', '.join(PHONE_TYPE_CODES)}.",
                               f"phones[{i}].phoneType")
            for key in ("phoneOptInStatus", "smsOptInStatus"):
                if ph.get(key) is not None:
                    try:
                        if ph[key] != ph[key].upper() or len(ph[key]) != 1:
                            raise ValueError
                        opt_in_from_code(ph[key])
                    except (ValueError, AttributeError):
                        raise _invalid(f"'{key}' must be one of I, U, O.", f"phones[{i}].{key}") from None
        for i, em in enumerate(body.get("emails") or []):
            if "@" not in str(em.get("email") or ""):
                raise _invalid("'email' is not a valid email address.", f"emails[{i}].email")
            if em.get("type") is not None and em["type"] not in EMAIL_TYPE_CODES:
                raise _invalid("'type' must be one of P, W.", f"emails[{i}].type")
        for i, ad in enumerate(body.get("addresses") or []):
            if ad.get("type") is not None and ad["type"] not in ADDRESS_TYPE_CODES:
                raise _invalid(f"'type' must be one of {', '.join(ADDRESS_TYPE_CODES)}.",
                               f"addresses[{i}].type")
        for i, ident in enumerate(body.get("identifiers") or []):
            id_type = str(ident.get("type") or "").strip()
            if not id_type or ident.get("externalId") in (None, ""):
                raise _invalid("'type' and 'externalId' are required.", f"identifiers[{i}]")
            if self.identifier_types is not None and fold(id_type) not in self.identifier_types:
                raise _invalid(f"'{id_type}' is not a valid external ID type.", f"identifiers[{i}].type")

    def _match(self, db: _Database, body: Mapping[str, Any]) -> _Person | None:
        combos = candidate_combinations(body)
        if not combos:
            return None  # "without a minimum combination, find never matches"
        first, last = fold(body.get("firstName")), fold(body.get("lastName"))
        emails = {fold(e.get("email")) for e in body.get("emails") or []}
        phones = {re.sub(r"\D", "", str(p.get("phoneNumber") or ""))[-10:] for p in body.get("phones") or []}
        addresses = body.get("addresses") or []
        zips = {zip5(a.get("zipOrPostalCode")) for a in addresses} - {None}
        streets = {(s[0], fold(s[1])) for s in (split_street(a.get("addressLine1")) for a in addresses) if s}
        dob = str(body.get("dateOfBirth") or "")[:10]
        for person in sorted(db.people.values(), key=lambda p: p.van_id):
            names = fold(person.first_name) == first and fold(person.last_name) == last
            p_emails = {fold(e.email) for e in person.emails}
            if MatchCombination.EMAIL in combos and emails & p_emails:
                return person
            p_phones = {ph.number for ph in person.phones}
            if MatchCombination.NAME_PHONE in combos and names and phones & p_phones:
                return person
            p_zips = {zip5(a.zip) for a in person.addresses} - {None}
            if MatchCombination.NAME_ZIP_DOB in combos and names and zips & p_zips and \
                    person.date_of_birth == dob:
                return person
            p_streets = {(s[0], fold(s[1])) for s in (split_street(a.line1) for a in person.addresses) if s}
            if MatchCombination.NAME_STREET_ZIP in combos and names and zips & p_zips and streets & p_streets:
                return person
        return None

    def _find(self, request: Request, db: _Database) -> Response:
        body = self._json_body(request)
        self._validate_payload(body)
        person = self._match(db, body)
        if person is None:
            return Response.empty(404)  # "no error object" in the no-match 404 (research A2)
        return self._matched_response(request, db, person, self.find_response, status=200)

    def _find_or_create(self, request: Request, db: _Database, caller: _Caller) -> Response:
        body = self._json_body(request)
        self._validate_payload(body)
        person: _Person | None
        if body.get("vanId") is not None:
            person = self._resolve(db, str(body["vanId"]))
        else:
            person = self._match(db, body)
        if person is None:
            created = self._create(db, body, by=caller.key)
            return Response.json({"vanId": created.van_id, "status": "UnmatchedStored"}, status=201)
        self._apply(db, person, body, by=caller.key)
        return self._matched_response(request, db, person, self.upsert_response, status=200)

    def _matched_response(self, request: Request, db: _Database, person: _Person, style: str,
                          status: int) -> Response:
        if style == "redirect":
            return Response.empty(302, headers=[("Location",
                                                 f"{self._base(request)}{API_PREFIX}/people/{person.van_id}")])
        if style == "person":
            return Response.json(self._render(db, person, set()), status=status)
        return Response.json({"vanId": person.van_id, "status": self.match_status}, status=status)

    def _create(self, db: _Database, body: Mapping[str, Any], *, by: str | None) -> _Person:
        now = self.clock.now()
        person = _Person(van_id=next(self._van_ids), first_name=None, last_name=None, middle_name=None,
                         date_of_birth=None, date_created=now)
        db.people[person.van_id] = person
        self._apply(db, person, body, by=by, force_change=True)
        log.debug("everyaction_sim_person_created", van_id=person.van_id)
        return person

    def _apply(self, db: _Database, person: _Person, body: Mapping[str, Any], *, by: str | None,
               force_change: bool = False) -> None:
        """Apply an update payload: scalars replace, collections add or update by value (research A8)."""
        now = self.clock.now()
        changed = force_change
        touched: set[int] = {person.van_id}
        for name_key, name_attr in (("firstName", "first_name"), ("lastName", "last_name"),
                                    ("middleName", "middle_name")):
            value = (body.get(name_key) or "").strip()
            if value and getattr(person, name_attr) != value:
                setattr(person, name_attr, value)
                changed = True
        if body.get("dateOfBirth"):
            dob = str(body["dateOfBirth"])[:10]
            if person.date_of_birth != dob:
                person.date_of_birth, changed = dob, True
        for em in body.get("emails") or []:
            address = str(em["email"]).strip()
            existing = next((e for e in person.emails if fold(e.email) == fold(address)), None)
            if existing is None:
                existing = _Email(address, None, not person.emails, None, None, now)
                person.emails.append(existing)
                changed = True
            updates = (("type", "email_type", EMAIL_TYPE_CODES.get(em.get("type") or "")),
                       ("isSubscribed", "is_subscribed", em.get("isSubscribed")),
                       ("subscriptionStatus", "subscription_status", em.get("subscriptionStatus")))
            for key, attr, new in updates:
                if em.get(key) is not None and getattr(existing, attr) != new:
                    setattr(existing, attr, new)
                    changed = True
            if em.get("isPreferred") and not existing.is_preferred:
                for other_email in person.emails:
                    other_email.is_preferred = other_email is existing
                changed = True
        for ph in body.get("phones") or []:
            number = re.sub(r"\D", "", str(ph["phoneNumber"]))[-10:]
            phone = next((x for x in person.phones if x.number == number), None)
            if phone is None:
                phone = _Phone(next(self._phone_ids), number, None, not person.phones, None, now)
                person.phones.append(phone)
                changed = True
            if ph.get("phoneType") and phone.phone_type != PHONE_TYPE_CODES[ph["phoneType"]]:
                phone.phone_type, changed = PHONE_TYPE_CODES[ph["phoneType"]], True
            if ph.get("ext") is not None and phone.ext != str(ph["ext"]):
                phone.ext, changed = str(ph["ext"]), True
            if ph.get("isPreferred") and not phone.is_preferred:
                for other_phone in person.phones:
                    other_phone.is_preferred = other_phone is phone
                changed = True
            code = ph.get("phoneOptInStatus") or ph.get("smsOptInStatus")
            if code:
                status = opt_in_from_code(code)
                if db.opt_ins.get(number, OptInStatus.UNKNOWN) != status or number not in db.opt_ins:
                    db.opt_ins[number] = status
                    changed = True
                    # Stored per phone: everyone with this number now shows it, so each counts as changed.
                    touched |= {p.van_id for p in db.people.values()
                                if any(x.number == number for x in p.phones)}
        for ad in body.get("addresses") or []:
            address_key = (fold(ad.get("addressLine1")), zip5(ad.get("zipOrPostalCode")))
            match = next((a for a in person.addresses if (fold(a.line1), zip5(a.zip)) == address_key), None)
            if match is None:
                person.addresses.append(_Address(
                    next(self._address_ids), ad.get("addressLine1"), ad.get("addressLine2"),
                    ad.get("addressLine3"), ad.get("city"), ad.get("stateOrProvince"),
                    ad.get("zipOrPostalCode"), ad.get("countryCode"),
                    ADDRESS_TYPE_CODES.get(ad.get("type") or "", "Home"), not person.addresses))
                changed = True
        for ident in body.get("identifiers") or []:
            id_type, ext = str(ident["type"]).strip(), str(ident["externalId"])
            if person.identifiers.get(fold(id_type)) != (id_type, ext):
                person.identifiers[fold(id_type)] = (id_type, ext)
                changed = True
        if changed:
            for van_id in touched:
                db.people[van_id].changes.append(_Change(now, by))

    def _search(self, request: Request, db: _Database) -> Response:
        """``GET people``: case-insensitive prefix match on the given fields, ``$top``/``$skip`` paging."""
        filters = {"firstName": "first_name", "lastName": "last_name", "email": None, "phoneNumber": None}
        given = {k: v for k, v in request.query.items() if k in filters and v.strip()}
        if not given:
            raise _invalid("At least one search parameter is required.")
        try:
            top = min(int(request.query.get("$top") or 50), 200)
            skip = max(int(request.query.get("$skip") or 0), 0)
        except ValueError:
            raise _invalid("'$top' and '$skip' must be integers.", "$top", "$skip") from None
        if top < 1:
            raise _invalid("'$top' must be positive.", "$top")

        def hit(p: _Person) -> bool:
            for key, value in given.items():
                want = fold(value)
                if key == "email":
                    ok = any(fold(e.email).startswith(want) for e in p.emails)
                elif key == "phoneNumber":
                    digits = re.sub(r"\D", "", value)[-10:]
                    ok = bool(digits) and any(ph.number.startswith(digits) for ph in p.phones)
                else:
                    ok = fold(getattr(p, filters[key] or "")).startswith(want)
                if not ok:
                    return False
            return True

        matches = [p for p in sorted(db.people.values(), key=lambda p: p.van_id) if hit(p)]
        page = matches[skip:skip + top]
        expand = self._expansions(request)
        next_link = None
        if skip + top < len(matches):
            query = dict(request.query_list)
            query.update({"$top": str(top), "$skip": str(skip + top)})
            next_link = f"{self._base(request)}{API_PREFIX}/people?{urlencode(query)}"
        return Response.json({"items": [self._render(db, p, expand) for p in page], "count": len(matches),
                              "nextPageLink": next_link})

    # =====================================================================================================
    # Changed-entity export jobs

    def _server_time(self, when: datetime) -> str:
        return when.astimezone(self.server_tz).isoformat()

    def _create_job(self, request: Request, db: _Database, caller: _Caller) -> Response:
        body = self._json_body(request)
        now = self.clock.now()
        date_from = parse_van_datetime(body.get("dateChangedFrom"))
        if date_from is None:
            raise _invalid("'dateChangedFrom' is required and must be a date-time.", "dateChangedFrom")
        if date_from < now - LOOKBACK:
            raise _invalid("'dateChangedFrom' must be within the last 90 days.", "dateChangedFrom")
        if body.get("dateChangedTo") is not None:
            date_to = parse_van_datetime(body.get("dateChangedTo"))
            if date_to is None:
                raise _invalid("'dateChangedTo' must be a date-time.", "dateChangedTo")
            if date_to <= date_from:
                raise _invalid("'dateChangedTo' must be after 'dateChangedFrom'.", "dateChangedTo")
            if date_to > now:
                raise _invalid("'dateChangedTo' cannot be in the future.", "dateChangedTo")
        else:
            date_to = now
        resource = body.get("resourceType")
        if resource not in RESOURCES:
            raise _invalid("'resourceType' must be a value from changedEntityExportJobs/resources.",
                           "resourceType")
        size = body.get("fileSizeKbLimit", 40000)
        if not isinstance(size, int) or not MIN_FILE_SIZE_KB <= size <= MAX_FILE_SIZE_KB:
            raise _invalid(f"'fileSizeKbLimit' must be between {MIN_FILE_SIZE_KB} and {MAX_FILE_SIZE_KB}.",
                           "fileSizeKbLimit")
        requested = body.get("requestedFields") or []
        if not isinstance(requested, list):
            raise _invalid("'requestedFields' must be an array.", "requestedFields")
        known = {f.lower(): f for f in self.export_columns} if resource == "Contacts" else {}
        accepted = [known[str(f).lower()] for f in requested if str(f).lower() in known]
        ids = [int(i) for i in body.get("requestedIds") or [] if str(i).isdigit()]
        job = _Job(
            job_id=next(self._job_ids), key=caller.key, date_from=date_from, date_to=date_to,
            resource_type=resource, fields=list(dict.fromkeys([*CORE_CONTACT_FIELDS, *accepted])),
            file_size_kb=size, exclude_self=bool(body.get("excludeChangesFromSelf")), requested_ids=ids,
            echo={}, fail_with=self._fail_next_job,
        )
        self._fail_next_job = None
        # The real 201 carries the window and the job's state only (research A5.2's recorded answer): it
        # does not echo requestedFields, so a field it did not accept shows only as a column missing from
        # the files (issue 7, item 11).
        job.echo = {"dateChangedFrom": self._server_time(date_from),
                    "dateChangedTo": self._server_time(date_to)}
        db.jobs[job.job_id] = job
        log.debug("everyaction_sim_job_created", export_job_id=job.job_id)
        return Response.json(self._job_json(job), status=201)

    def _poll_job(self, request: Request, db: _Database, job_id: int) -> Response:
        job = db.jobs.get(job_id)
        if job is None:
            raise _HttpError(_van_error(404, "NOT_FOUND", _NOT_FOUND_TEXT))
        if job.status in ("Pending", "InProcess"):
            job.polls += 1
            if job.polls < self.polls_to_complete:
                job.status, job.message = "InProcess", "Processing export job"
            elif job.fail_with is not None:
                job.status, job.message = "Error", job.fail_with
                job.code = secrets.token_hex(3).upper()
            else:
                self._complete(request, db, job)
        return Response.json(self._job_json(job))

    def _complete(self, request: Request, db: _Database, job: _Job) -> None:
        """Render the files: current versions of everyone changed in the window, split by rows and size."""
        def in_window(p: _Person) -> bool:
            return any(job.date_from <= c.at < job.date_to and not (job.exclude_self and c.by == job.key)
                       for c in p.changes)

        people = [p for p in sorted(db.people.values(), key=lambda p: p.van_id)
                  if job.resource_type == "Contacts" and (in_window(p) or p.van_id in job.requested_ids)]
        rows = [[self._field(db, p, f) for f in job.fields] for p in people]
        limit_bytes = job.file_size_kb * 1024
        header_bytes = len(contacts_csv(job.fields, [], self.csv_delimiter).encode())
        chunks: list[list[list[Any]]] = [[]]
        size = header_bytes
        for row in rows:
            row_bytes = len(contacts_csv(job.fields, [row], self.csv_delimiter).encode()) - header_bytes
            current = chunks[-1]
            full = self.rows_per_file is not None and len(current) >= self.rows_per_file
            if current and (full or size + row_bytes > limit_bytes):
                chunks.append([])
                size = header_bytes
            chunks[-1].append(row)
            size += row_bytes
        expires = self.clock.now() + self.link_lifetime
        base = self._base(request)
        for index, chunk in enumerate(chunks):
            name = f"{job.job_id}-{index}.csv"
            content = contacts_csv(job.fields, chunk, self.csv_delimiter)
            export_file = _File(name=name, signature=secrets.token_urlsafe(16), content=content,
                                expires=expires)
            self._files[name] = (job.job_id, export_file)
            job.files.append(export_file)
        job.files_base = base
        job.status, job.message, job.record_count = "Complete", "Finished processing export job", len(rows)

    def _field(self, db: _Database, p: _Person, name: str) -> Any:
        phone = next((x for x in p.phones if x.is_preferred), p.phones[0] if p.phones else None)
        email = next((x for x in p.emails if x.is_preferred), p.emails[0] if p.emails else None)
        address = next((x for x in p.addresses if x.is_preferred), p.addresses[0] if p.addresses else None)
        if name == "VanID":
            return p.van_id
        if name == "PhoneOptInStatus":
            if phone is None:
                return None
            number = opt_in_export_id(db.opt_ins.get(phone.number, OptInStatus.UNKNOWN))
            return f"{number:.1f}" if self.opt_in_as_float else number
        if name == "DateCreated":
            return p.date_created.astimezone(self.server_tz).date().isoformat()  # a date, not a datetime
        simple = {
            "FirstName": p.first_name, "MiddleName": p.middle_name, "LastName": p.last_name,
            "DateOfBirth": p.date_of_birth, "Email": email.email if email else None,
            "Phone": phone.number if phone else None,
        }
        if address is not None:
            simple.update({
                "AddressLine1": address.line1, "AddressLine2": address.line2, "City": address.city,
                "State": address.state, "Zip5": zip5(address.zip), "CountryCode": address.country_code,
            })
        return simple.get(name)

    def _job_json(self, job: _Job) -> dict[str, Any]:
        base = job.files_base
        return {
            **job.echo,
            "files": [{"downloadUrl": f"{base}{BLOB_PREFIX}{f.name}?sv=2021-08-06&sr=b&sp=r"
                                      f"&sig={f.signature}",
                       "dateExpired": self._server_time(f.expires)} for f in job.files],
            "message": job.message, "code": job.code, "exportedRecordCount": job.record_count,
            "exportJobId": job.job_id, "jobStatus": job.status,
        }

    def _download(self, request: Request) -> Response:
        """Pre-signed storage URL: the signature is the credential, VAN auth is not expected."""
        if request.header("authorization"):
            self.downloads_with_auth += 1
            return _blob_error(403, "AuthenticationFailed", "Server failed to authenticate the request. "
                               "Authorization header not expected.")
        entry = self._files.get(request.path[len(BLOB_PREFIX):])
        if entry is None:
            return _blob_error(404, "BlobNotFound", "The specified blob does not exist.")
        _job_id, export_file = entry
        if request.query.get("sig") != export_file.signature:
            return _blob_error(403, "AuthenticationFailed", "Signature did not match.")
        if self.clock.now() > export_file.expires:
            return _blob_error(403, "AuthenticationFailed", "Signed expiry time has passed.")
        self.downloads.append(export_file.name)
        return Response.text(export_file.content, content_type="text/csv; charset=utf-8")

    def _base(self, request: Request) -> str:
        return self.public_url or f"http://{request.header('host') or 'localhost'}"


def _van_number(phone: str) -> str:
    """The 10 digits VAN stores for any North-American number (a Canadian cell too, research A3.2)."""
    digits = re.sub(r"\D", "", phone)
    if not VAN_PHONE_PATTERN.match(digits):
        raise ValueError("not a valid North-American phone number")
    return digits[-10:]


def _blob_error(status: int, code: str, message: str) -> Response:
    body = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>")
    return Response.text(body, status=status, content_type="application/xml")


def decode_basic(header: str) -> tuple[str, str] | None:
    """``(user, password)`` from a Basic header (tests use it to check what the client sent)."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(token).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user, password


__all__ = ["SIM_API_KEY", "EveryActionSimulator", "decode_basic"]
