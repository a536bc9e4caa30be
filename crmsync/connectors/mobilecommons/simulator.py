"""An in-memory Mobile Commons that behaves like the real REST API (research checklist B8).

It serves tests, benchmarks and ``crmsync sandbox``, so it reproduces the quirks the connector must survive:

1. Basic *or* Bearer auth; anything else gets a 401 HTML page.
2. Every answer is ``<response success=…>``; logical errors travel in HTTP 200 bodies
   (5 "Invalid phone number" for unknown profiles, 19 invalid opt-in path, 27 rate limit on demand, ...).
3. Parameters are read from the query string, a form body and a JSON body, merged.
4. ``profile_update`` upserts by normalised phone (digits, leading ``1``) and stores phones as 11 digits.
5. ``opt_in_path_id`` subscribes a phone to the path's campaign once ever; only a new subscription sends
   the path's welcome message, and every welcome sent is recorded in ``welcome_messages``.
6. ``profile_opt_out`` sets ``opted_out_at``, marks subscriptions ``Opted-Out`` and bumps ``updated_at``.
7. ``profiles`` filters ``from``/``to`` on ``updated_at``, caps ``limit`` at 1000, carries ``num``/``page``
   and answers past the last page with ``<profiles num="0" page="N"/>``.
8. Timestamps are mixed: ``2022-06-29 17:28:24 UTC`` in element text, ``2022-06-29T17:28:24Z`` in
   attributes; empty values are self-closing; custom-column values carry surrounding whitespace.
9. Faults render natively: a 429 fault is an HTTP 200 error 27, a 503 is the "heavy load" HTML page,
   502/504 gateway pages; malformed bodies are truncated XML.
10. At most 160 calls in flight per company (B7); beyond, error 27. A per-call ``latency`` setting.

Where the research marks behaviour as inferred, the choice is a constructor setting (see ``__init__``).
All timestamps come from the injected :class:`~crmsync.clock.WallClock`, so MockClock tests can move days.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal
from xml.etree.ElementTree import Element, SubElement, tostring

import structlog
import trio

from crmsync.clock import WallClock
from crmsync.connectors.mobilecommons.records import (
    format_attribute_timestamp,
    format_element_timestamp,
    parse_timestamp,
)
from crmsync.connectors.simkit import Fault, Request, Response, SimulatorApp

log = structlog.get_logger("crmsync.connectors.mobilecommons.simulator")

XML_HEADER = b'<?xml version="1.0" encoding="UTF-8"?>\n'
MAX_LIMIT = 1000
#: "160 concurrent API calls" per company (research B7); beyond it, error 27.
MAX_CONCURRENT_CALLS = 160

#: Standard ``profile_update`` parameters; anything else is taken as a custom column name (B3).
PROFILE_FIELDS = ("email", "first_name", "last_name")
ADDRESS_FIELDS = ("street1", "street2", "city", "state", "postal_code", "country")
NON_COLUMN_PARAMS = frozenset(
    {"phone_number", "opt_in_path_id", "company", "include_messages", "include_donations",
     *PROFILE_FIELDS, *ADDRESS_FIELDS}
)

HEAVY_LOAD_PAGE = (
    "<!DOCTYPE html><html><head><title>Mobile Commons</title></head><body>"
    "<h4>This website is under heavy load</h4><p>We're sorry, too many people are accessing this website "
    "at the same time. We're working on this problem. Please try again later.</p></body></html>"
)
MAINTENANCE_PAGE = (
    "<!DOCTYPE html><html><head><title>Site Maintenance</title></head><body>"
    "<h4>Site Maintenance</h4><p>Mobile Commons is down for scheduled maintenance.</p></body></html>"
)


def _html_page(status: int, headline: str, text: str) -> str:
    return (f"<!DOCTYPE html><html><head><title>{status} {headline}</title></head><body>"
            f"<h4>{headline}</h4><p>{text}</p></body></html>")


# -- state -------------------------------------------------------------------------------------------------


@dataclass
class SimOptInPath:
    id: str
    campaign_id: str
    name: str
    welcome_message: str
    active: bool = True


@dataclass
class SimCampaign:
    id: str
    name: str
    description: str = ""
    active: bool = True
    tags: list[str] = field(default_factory=list)


@dataclass
class SimSubscription:
    id: str
    campaign_id: str
    opt_in_path_id: str | None
    status: str  # "Active" | "Opted-Out"
    opt_in_source: str
    created_at: datetime
    activated_at: datetime
    opted_out_at: datetime | None = None
    opt_out_source: str | None = None


@dataclass
class SimCustomValue:
    value: str
    created_at: datetime
    updated_at: datetime


@dataclass
class SimProfile:
    """Live simulator state for one profile (tests read it; mutate only through the simulator)."""

    id: str
    phone_number: str  # 11 digits, as the API stores and returns it
    created_at: datetime
    updated_at: datetime
    status: str = "No Subscriptions"
    email: str = ""
    first_name: str = ""
    last_name: str = ""
    street1: str = ""
    street2: str = ""
    city: str = ""
    state: str = ""
    postal_code: str = ""
    country: str = ""
    opted_out_at: datetime | None = None
    opted_out_source: str | None = None
    source_type: str = "API"
    source_name: str = ""
    source_opt_in_path_id: str | None = None
    custom_columns: dict[str, SimCustomValue] = field(default_factory=dict)
    subscriptions: list[SimSubscription] = field(default_factory=list)

    def subscription(self, campaign_id: str) -> SimSubscription | None:
        return next((s for s in self.subscriptions if s.campaign_id == str(campaign_id)), None)

    def custom(self, name: str) -> str | None:
        value = self.custom_columns.get(name)
        return value.value if value is not None else None


@dataclass(frozen=True)
class WelcomeMessage:
    """One welcome text the real service would have sent (what a test counts)."""

    phone_number: str  # 11 digits
    opt_in_path_id: str
    campaign_id: str
    body: str
    sent_at: datetime


class SimError(Exception):
    """A logical API error, rendered as ``success="false"`` in an HTTP 200."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def sim_phone(raw: str | None) -> str | None:
    """How the server normalises a phone: keep digits, prepend ``1`` to 10 of them; else invalid."""
    digits = re.sub(r"\D", "", raw or "")
    if len(digits) == 10:
        digits = "1" + digits
    if len(digits) != 11 or not digits.startswith("1"):
        return None
    return digits


# -- the app -----------------------------------------------------------------------------------------------


class MobileCommonsSimulator(SimulatorApp):
    """In-memory Mobile Commons REST API (endpoints under ``/api/``).

    Settings for behaviour the research could not verify:

    * ``unknown_custom_columns``: ``"ignore"`` (default) or ``"error"`` (error 30) for custom-column
      parameters that are not defined columns [INF, B8.5];
    * ``touch_on_noop_update``: whether a ``profile_update`` that changes nothing still bumps
      ``updated_at`` (default ``False``) [INF];
    * ``default_limit``: page size when ``limit`` is absent (default 1000) [INF]; ``limit`` above 1000 is
      capped at 1000 [INF];
    * ``latency``: seconds each call takes (default 0), for benchmarks and the sandbox;
    * ``max_concurrent_calls``: the documented 160 concurrent calls per company; a call beyond it is answered
      with error 27 in an HTTP 200 (the refusal's HTTP status is undocumented [INF]).
    """

    def __init__(
        self,
        clock: WallClock,
        *,
        login: str = "api@example.org",
        password: str = "sim-password",
        api_token: str | None = "sim-token",
        company_key: str | None = None,
        custom_columns: tuple[str, ...] = ("Constituent ID",),
        unknown_custom_columns: Literal["ignore", "error"] = "ignore",
        touch_on_noop_update: bool = False,
        default_limit: int = MAX_LIMIT,
        api_user_name: str = "API User",
        latency: float = 0.0,
        max_concurrent_calls: int = MAX_CONCURRENT_CALLS,
    ):
        super().__init__()
        self.clock = clock
        self.login = login
        self.password = password
        self.api_token = api_token
        self.company_key = company_key
        self.custom_column_names: list[str] = list(custom_columns)
        self.unknown_custom_columns = unknown_custom_columns
        self.touch_on_noop_update = touch_on_noop_update
        self.default_limit = default_limit
        self.api_user_name = api_user_name
        if latency < 0 or max_concurrent_calls < 1:
            raise ValueError("latency must be >= 0 and max_concurrent_calls >= 1")
        self.latency = latency  # seconds per call, so that benchmarks see a daemon bound by the API
        self.max_concurrent_calls = max_concurrent_calls
        self.in_flight = 0
        self.peak_in_flight = 0
        self.concurrency_refusals = 0
        self.maintenance = False  # while True every API call gets the 503 "Site Maintenance" page
        self.campaigns: dict[str, SimCampaign] = {}
        self.opt_in_paths: dict[str, SimOptInPath] = {}
        self._profiles: dict[str, SimProfile] = {}  # by 11-digit phone
        self.welcome_messages: list[WelcomeMessage] = []
        self.api_calls: list[tuple[str, dict[str, str]]] = []  # (endpoint, merged params) after auth
        self._ids = itertools.count(100001)

    # -- plain methods for tests and the sandbox ---------------------------------------------------------

    def _next_id(self) -> str:
        return str(next(self._ids))

    def _now(self) -> datetime:
        # The API has second resolution; keeping it here makes from/to filtering match what clients see.
        return self.clock.now().replace(microsecond=0)

    def add_campaign(self, name: str, *, campaign_id: str | None = None, active: bool = True,
                     description: str = "", tags: tuple[str, ...] = ()) -> SimCampaign:
        campaign = SimCampaign(campaign_id or self._next_id(), name, description, active, list(tags))
        self.campaigns[campaign.id] = campaign
        return campaign

    def add_opt_in_path(self, campaign_id: str, name: str, *,
                        welcome_message: str = "Welcome! Reply STOP to quit.",
                        opt_in_path_id: str | None = None, active: bool = True) -> SimOptInPath:
        if str(campaign_id) not in self.campaigns:
            raise KeyError(f"no campaign {campaign_id}")
        path = SimOptInPath(
            opt_in_path_id or self._next_id(), str(campaign_id), name, welcome_message, active)
        self.opt_in_paths[path.id] = path
        return path

    def add_custom_column(self, name: str) -> None:
        if name not in self.custom_column_names:
            self.custom_column_names.append(name)

    def add_profile(self, phone: str, *, status: str = "No Subscriptions", email: str = "",
                    first_name: str = "", last_name: str = "", created_at: datetime | None = None,
                    updated_at: datetime | None = None, custom_columns: dict[str, str] | None = None,
                    street1: str = "", street2: str = "", city: str = "", state: str = "",
                    postal_code: str = "", country: str = "") -> SimProfile:
        """Seed a profile directly (no welcome message, no subscription). ``status`` may use any casing."""
        number = sim_phone(phone)
        if number is None:
            raise ValueError(f"invalid phone {phone!r}")
        now = self._now()
        created = (created_at or now).replace(microsecond=0)
        profile = SimProfile(
            id=self._next_id(), phone_number=number, created_at=created,
            updated_at=(updated_at or created).replace(microsecond=0), status=status, email=email,
            first_name=first_name, last_name=last_name, source_name=self.api_user_name, street1=street1,
            street2=street2, city=city, state=state, postal_code=postal_code, country=country,
        )
        for name, value in (custom_columns or {}).items():
            self.add_custom_column(name)
            profile.custom_columns[name] = SimCustomValue(value, created, created)
        self._profiles[number] = profile
        return profile

    def profile(self, phone: str) -> SimProfile | None:
        number = sim_phone(phone)
        return self._profiles.get(number) if number else None

    def profiles(self) -> list[SimProfile]:
        return sorted(self._profiles.values(), key=lambda p: int(p.id))

    def opt_in(self, phone: str, opt_in_path_id: str) -> SimProfile:
        """A person texting the path's keyword: subscribes (or re-subscribes after STOP), sends the welcome.

        Unlike the API, a subscriber's own keyword re-activates an opted-out subscription (B5). Texting again
        while active sends no second welcome.
        """
        path = self.opt_in_paths[str(opt_in_path_id)]
        profile = self.profile(phone)
        if profile is None:
            profile = self.add_profile(phone)
            profile.source_type, profile.source_name = "Keyword", path.name.upper()
            profile.source_opt_in_path_id = path.id
        now = self._now()
        sub = profile.subscription(path.campaign_id)
        if sub is not None and sub.status == "Active":
            return profile
        if sub is None:
            profile.subscriptions.append(SimSubscription(
                self._next_id(), path.campaign_id, path.id, "Active", path.name.upper(), now, now))
        else:
            sub.status, sub.opted_out_at, sub.opt_out_source, sub.activated_at = "Active", None, None, now
            sub.opt_in_path_id = path.id
        profile.status = "Active Subscriber"
        profile.updated_at = now
        self._send_welcome(profile, path, now)
        return profile

    def opt_out(self, phone: str, campaign_id: str | None = None) -> SimProfile:
        """A person texting STOP (all campaigns unless ``campaign_id``)."""
        profile = self.profile(phone)
        if profile is None:
            raise KeyError(f"no profile for {phone}")
        self._opt_out(profile, source="Texted a STOP word", campaign_id=campaign_id)
        return profile

    # -- state changes shared by the API and the plain methods ---------------------------------------

    def _send_welcome(self, profile: SimProfile, path: SimOptInPath, now: datetime) -> None:
        self.welcome_messages.append(
            WelcomeMessage(profile.phone_number, path.id, path.campaign_id, path.welcome_message, now))
        log.debug("sim_welcome_sent", opt_in_path_id=path.id, campaign_id=path.campaign_id)

    def _opt_out(self, profile: SimProfile, *, source: str, campaign_id: str | None = None,
                 subscription_id: str | None = None) -> None:
        now = self._now()
        for sub in profile.subscriptions:
            if campaign_id is not None and sub.campaign_id != campaign_id:
                continue
            if subscription_id is not None and sub.id != subscription_id:
                continue
            if sub.status == "Active":
                sub.status, sub.opted_out_at, sub.opt_out_source = "Opted-Out", now, source
        still_active = any(s.status == "Active" for s in profile.subscriptions)
        if not still_active:
            profile.opted_out_at = now
            profile.opted_out_source = source
            profile.status = "Texted a STOP word" if source == "Texted a STOP word" else "No Subscriptions"
        profile.updated_at = now

    # -- HTTP --------------------------------------------------------------------------------------------

    latency_in_handle = True  # the latency is spent while the call counts against the 160 in flight

    async def handle(self, request: Request) -> Response:
        """The API's limit first: beyond ``max_concurrent_calls`` calls in flight the call is refused with
        error 27 (research B7: "160 concurrent API calls" per company; the HTTP status of the refusal is not
        documented, so it comes in a 200 like every logical error). Then ``latency``, then the call."""
        self.in_flight += 1
        try:
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            if self.in_flight > self.max_concurrent_calls:
                self.concurrency_refusals += 1
                return self._error(27, "API rate limit exceeded")
            if self.latency > 0:
                await trio.sleep(self.latency)
            return self._handle(request)
        finally:
            self.in_flight -= 1

    def _handle(self, request: Request) -> Response:
        if self.maintenance:
            return Response.text(MAINTENANCE_PAGE, status=503, content_type="text/html; charset=utf-8")
        if not self._authorized(request):
            return Response.text(
                _html_page(401, "Unauthorized", "HTTP Basic: Access denied."),
                status=401, content_type="text/html; charset=utf-8",
                headers=[("www-authenticate", 'Basic realm="Application"')],
            )
        endpoint = request.path.rstrip("/").rsplit("/", 1)[-1]
        if not request.path.startswith("/api/") or endpoint not in self._routes:
            return Response.text(_html_page(404, "Not Found", "The page you were looking for doesn't exist."),
                                 status=404, content_type="text/html; charset=utf-8")
        params = self._params(request)
        self.api_calls.append((endpoint, params))
        try:
            if self.company_key and params.get("company") not in (None, "", self.company_key):
                raise SimError(4, "Invalid company id")
            body = getattr(self, self._routes[endpoint])(request.method, params)
        except SimError as exc:
            return self._error(exc.code, exc.message)
        return _xml_response(body)

    _routes = {
        "profiles": "_api_profiles",
        "profile": "_api_profile",
        "profile_update": "_api_profile_update",
        "profile_opt_out": "_api_profile_opt_out",
        "campaigns": "_api_campaigns",
    }

    def _authorized(self, request: Request) -> bool:
        header = request.header("authorization") or ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return self.api_token is not None and value.strip() == self.api_token
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return False
            login, _, password = decoded.partition(":")
            return login == self.login and password == self.password
        return False

    @staticmethod
    def _params(request: Request) -> dict[str, str]:
        """Query + form + JSON, merged in that order (B2: the API reads parameters from anywhere)."""
        params = dict(request.query)
        ctype = (request.header("content-type") or "").lower()
        if request.body:
            if "json" in ctype or request.body.lstrip().startswith(b"{"):
                try:
                    data = request.json()
                except ValueError:
                    data = {}
                if isinstance(data, dict):
                    params.update({str(k): "" if v is None else str(v) for k, v in data.items()})
            elif "x-www-form-urlencoded" in ctype:
                params.update(request.form())
        return params

    def _error(self, code: int, message: str) -> Response:
        root = Element("response", success="false")
        SubElement(root, "error", id=str(code), message=message)
        return _xml_response(root)

    def render_fault(self, fault: Fault, request: Request) -> Response:
        """Faults in the API's own shapes: 429 -> error 27 in a 200, 503 -> heavy-load page, 5xx gateways."""
        headers = [("retry-after", str(int(fault.retry_after)))] if fault.retry_after is not None else []
        if fault.status == 429:
            response = self._error(27, "API rate limit exceeded")
            response.headers.extend(headers)
            return response
        if fault.status == 503:
            page = HEAVY_LOAD_PAGE
        elif fault.status in (502, 504):
            page = _html_page(fault.status, "Bad Gateway" if fault.status == 502 else "Gateway Timeout",
                              "The server did not answer in time.")
        elif fault.status == 401:
            page = _html_page(401, "Unauthorized", "HTTP Basic: Access denied.")
        else:
            page = _html_page(fault.status, "Error", "We're sorry, but something went wrong.")
        return Response.text(page, status=fault.status, content_type="text/html; charset=utf-8",
                             headers=headers)

    def render_malformed(self, request: Request) -> Response:
        body = XML_HEADER + b'<response success="true"><profiles num="3" page="1"><profile id="1'
        return Response(200, body, [("content-type", "application/xml; charset=utf-8")])

    def rate_limit(self, times: int = 1) -> None:
        """Answer the next ``times`` API calls with error 27 (HTTP 200)."""
        self.faults.fail(429, times)

    def heavy_load(self, times: int = 1) -> None:
        """Answer the next ``times`` API calls with the 503 "heavy load" HTML page."""
        self.faults.fail(503, times)

    # -- endpoints -----------------------------------------------------------------------------------

    def _require_profile(self, params: dict[str, str]) -> SimProfile:
        if not params.get("phone_number"):
            raise SimError(28, "Missing phone_number parameter")
        number = sim_phone(params["phone_number"])
        profile = self._profiles.get(number) if number else None
        if profile is None:
            raise SimError(5, "Invalid phone number")
        return profile

    def _api_profile(self, method: str, params: dict[str, str]) -> Element:
        root = Element("response", success="true")
        root.append(self._profile_xml(self._require_profile(params), True, True))
        return root

    def _api_profiles(self, method: str, params: dict[str, str]) -> Element:
        try:
            page = max(1, int(params.get("page") or 1))
            limit = int(params.get("limit") or self.default_limit)
        except ValueError:
            raise SimError(16, "Invalid query parameters") from None
        limit = min(max(limit, 1), MAX_LIMIT)
        try:
            start = _parse_bound(params.get("from"))
            end = _parse_bound(params.get("to"))
        except ValueError:
            raise SimError(35, "Invalid date range") from None
        if start and end and start > end:
            raise SimError(35, "Invalid date range")
        if params.get("phone_number"):
            wanted = {sim_phone(p) for p in params["phone_number"].split(",")}
            selected = sorted((self._profiles[n] for n in wanted if n in self._profiles), key=lambda p: int(p.id))
        else:
            selected = self.profiles()
        # [INF] Both bounds inclusive; an incremental cursor on max(updated_at) therefore re-reads its last
        # second, which is the safe direction.
        selected = [p for p in selected if (start is None or p.updated_at >= start)
                    and (end is None or p.updated_at <= end)]
        chunk = selected[(page - 1) * limit: page * limit]
        root = Element("response", success="true")
        container = SubElement(root, "profiles", num=str(len(chunk)), page=str(page))
        custom = _flag(params.get("include_custom_columns"))
        subs = _flag(params.get("include_subscriptions"))
        for profile in chunk:
            container.append(self._profile_xml(profile, custom, subs))
        return root

    def _api_profile_update(self, method: str, params: dict[str, str]) -> Element:
        if not params.get("phone_number"):
            raise SimError(28, "Missing phone_number parameter")
        number = sim_phone(params["phone_number"])
        if number is None:
            raise SimError(5, "Invalid phone number")
        path = None
        if params.get("opt_in_path_id"):
            path = self.opt_in_paths.get(params["opt_in_path_id"].strip())
            if path is None:
                raise SimError(19, "Invalid opt-in path")
        columns = {k: v for k, v in params.items()
                   if k not in NON_COLUMN_PARAMS and not k.startswith("include_")}
        unknown = [k for k in columns if k not in self.custom_column_names]
        if unknown and self.unknown_custom_columns == "error":
            raise SimError(30, "Invalid profile attributes")
        now = self._now()
        profile = self._profiles.get(number)
        changed = False
        if profile is None:
            profile = SimProfile(id=self._next_id(), phone_number=number, created_at=now, updated_at=now,
                                 source_name=self.api_user_name,
                                 source_opt_in_path_id=path.id if path else None)
            self._profiles[number] = profile
            changed = True
        for name in (*PROFILE_FIELDS, *ADDRESS_FIELDS):
            if name in params and getattr(profile, name) != params[name].strip():
                setattr(profile, name, params[name].strip())
                changed = True
        for name, value in columns.items():
            if name not in self.custom_column_names:
                continue
            current = profile.custom_columns.get(name)
            if current is None:
                profile.custom_columns[name] = SimCustomValue(value.strip(), now, now)
                changed = True
            elif current.value != value.strip():
                current.value, current.updated_at = value.strip(), now
                changed = True
        if path is not None and profile.subscription(path.campaign_id) is None:
            # B5: via the API a phone joins a campaign once ever; past or opted-out members get nothing.
            profile.subscriptions.append(SimSubscription(
                self._next_id(), path.campaign_id, path.id, "Active", path.name, now, now))
            profile.status = "Active Subscriber"
            self._send_welcome(profile, path, now)
            changed = True
        if changed or self.touch_on_noop_update:
            profile.updated_at = now
        root = Element("response", success="true")
        root.append(self._profile_xml(profile, True, True))
        return root

    def _api_profile_opt_out(self, method: str, params: dict[str, str]) -> Element:
        profile = self._require_profile(params)
        campaign_id = params.get("campaign_id") or None
        subscription_id = params.get("subscription_id") or None
        if campaign_id is not None and campaign_id not in self.campaigns:
            raise SimError(1, "Invalid campaign id")
        self._opt_out(profile, source="Opt-out from API", campaign_id=campaign_id,
                      subscription_id=subscription_id)
        return Element("response", success="true")

    def _api_campaigns(self, method: str, params: dict[str, str]) -> Element:
        campaigns = sorted(self.campaigns.values(), key=lambda c: int(c.id) if c.id.isdigit() else 0)
        wanted = params.get("campaign_id")
        if wanted and wanted in self.campaigns:  # an invalid id returns all (B3)
            campaigns = [self.campaigns[wanted]]
        status = params.get("status")
        if status in ("active", "ended"):
            campaigns = [c for c in campaigns if c.active == (status == "active")]
        if params.get("sort") == "desc":
            campaigns.reverse()
        with_paths = _flag(params.get("include_opt_in_paths"), default=False)
        root = Element("response", success="true")
        container = SubElement(root, "campaigns")
        for c in campaigns:
            el = SubElement(container, "campaign", id=c.id, active=_bool(c.active))
            SubElement(el, "name").text = c.name
            SubElement(el, "description").text = c.description or None
            tags = SubElement(el, "tags")
            for tag in c.tags:
                SubElement(tags, "tag").text = tag
            if with_paths:
                paths = SubElement(el, "opt_in_paths")
                for p in self.opt_in_paths.values():
                    if p.campaign_id == c.id:
                        path_el = SubElement(paths, "opt_in_path", id=p.id, active=_bool(p.active))
                        SubElement(path_el, "name").text = p.name
                        SubElement(path_el, "tags")
        return root

    # -- rendering -----------------------------------------------------------------------------------

    def _profile_xml(self, p: SimProfile, custom: bool, subs: bool) -> Element:
        el = Element("profile", id=p.id)
        SubElement(el, "first_name").text = p.first_name or None
        SubElement(el, "last_name").text = p.last_name or None
        SubElement(el, "phone_number").text = p.phone_number
        SubElement(el, "email").text = p.email or None
        SubElement(el, "status").text = p.status
        SubElement(el, "created_at").text = format_element_timestamp(p.created_at)
        SubElement(el, "updated_at").text = format_element_timestamp(p.updated_at)
        opted_out = format_element_timestamp(p.opted_out_at) if p.opted_out_at else None
        SubElement(el, "opted_out_at").text = opted_out
        SubElement(el, "opted_out_source").text = p.opted_out_source
        if p.source_type == "API":
            SubElement(el, "source", type="API", name=p.source_name, email=self.login)
        else:
            SubElement(el, "source", type=p.source_type, name=p.source_name, id=p.id,
                       opt_in_path_id=p.source_opt_in_path_id or "")
        address = SubElement(el, "address")
        for name in ADDRESS_FIELDS:
            SubElement(address, name).text = getattr(p, name) or None
        if custom:
            cols = SubElement(el, "custom_columns")
            for name in self.custom_column_names:
                value = p.custom_columns.get(name)
                if value is None:
                    SubElement(cols, "custom_column", name=name)
                else:
                    # The real API pads values with newlines and spaces (B4.1); so do we.
                    SubElement(cols, "custom_column", name=name,
                               created_at=format_attribute_timestamp(value.created_at),
                               updated_at=format_attribute_timestamp(value.updated_at)).text = (
                        f"\n      {value.value}\n    ")
        if subs:
            subs_el = SubElement(el, "subscriptions")
            for s in p.subscriptions:
                campaign = self.campaigns.get(s.campaign_id)
                SubElement(
                    subs_el, "subscription", campaign_id=s.campaign_id,
                    campaign_name=campaign.name if campaign else "",
                    campaign_description=campaign.description if campaign else "",
                    opt_in_path_id=s.opt_in_path_id or "", status=s.status, opt_in_source=s.opt_in_source,
                    created_at=format_attribute_timestamp(s.created_at),
                    activated_at=format_attribute_timestamp(s.activated_at),
                    opted_out_at=format_attribute_timestamp(s.opted_out_at) if s.opted_out_at else "",
                    opt_out_source=s.opt_out_source or "",
                )
        SubElement(el, "integrations")
        SubElement(el, "clicks")
        return el


def _xml_response(root: Element) -> Response:
    return Response(200, XML_HEADER + tostring(root, encoding="utf-8", xml_declaration=False),
                    [("content-type", "application/xml; charset=utf-8")])


def _parse_bound(raw: str | None) -> datetime | None:
    return parse_timestamp(raw) if raw and raw.strip() else None


def _flag(raw: str | None, default: bool = True) -> bool:
    if raw is None or raw.strip() == "":
        return default
    return raw.strip().lower() in ("1", "true", "yes")


def _bool(value: bool) -> str:
    return "true" if value else "false"


__all__ = [
    "MobileCommonsSimulator",
    "SimCampaign",
    "SimOptInPath",
    "SimProfile",
    "SimSubscription",
    "WelcomeMessage",
    "sim_phone",
]
