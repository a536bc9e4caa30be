"""Mobile Commons records as the connector sees them: frozen dataclasses plus pure parse/build functions.

Nothing here does I/O. The client feeds parsed XML elements in and gets :class:`Profile` / :class:`Campaign`
out; the sync engine builds :class:`ProfileUpdate` values and this module turns them into request parameters.

The quirks handled here come from the research sheet (PART B and C):

* timestamps mix ``2022-06-29 17:28:24 UTC`` (element text) and ``2022-06-29T17:28:24Z`` (attributes), and
  empty values are self-closing elements or empty attributes (B2);
* phones come back as 11 digits with a leading ``1``; the connector keys on E.164 (B2, PART D);
* values may carry surrounding whitespace and newlines, so every text is trimmed (B4.1, C9);
* profile ``status`` casing varies (``Active Subscriber`` / ``Active subscriber``) (B5, C9).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from xml.etree.ElementTree import Element

import phonenumbers
import structlog

log = structlog.get_logger("crmsync.connectors.mobilecommons.records")

#: Name of the custom column the connector writes the EveryAction Constituent ID (VAN id) into.
#: [INF] The research finds no documented API parameter for the "Constituent ID" field the native
#: EveryAction sync fills; custom columns are written as ``<Custom Column Name>=<value>`` on
#: ``profile_update`` (B3), so the name is a setting and this is only its default.
DEFAULT_CONSTITUENT_ID_FIELD = "Constituent ID"

#: ``profile_update`` parameters that are standard profile fields (B3). A custom column with one of these
#: names would silently overwrite the standard field, so the builder refuses it.
STANDARD_UPDATE_FIELDS: tuple[str, ...] = (
    "email", "first_name", "last_name", "street1", "street2", "city", "state", "postal_code", "country",
)
RESERVED_PARAMS: frozenset[str] = frozenset(
    {*STANDARD_UPDATE_FIELDS, "phone_number", "opt_in_path_id", "company", "campaign_id", "subscription_id",
     "include_messages", "include_donations"}
)

#: Profile ``status`` values (casefolded) that mean "may be texted" (B5). Everything else
#: (``undeliverable``, ``no subscriptions``, ``hard bounce``, ``texted a stop word``, ...) does not.
ACTIVE_PROFILE_STATUSES = frozenset({"active subscriber"})
#: Subscription ``status`` values (casefolded) meaning subscribed to that campaign.
ACTIVE_SUBSCRIPTION_STATUSES = frozenset({"active"})


# -- timestamps ----------------------------------------------------------------------------------------

_TZ_SUFFIX = re.compile(r"\s*(UTC|GMT|Z)$", re.IGNORECASE)


def parse_timestamp(raw: str | None) -> datetime | None:
    """Parse any timestamp shape Mobile Commons emits into an aware UTC datetime; empty -> ``None``.

    Accepts ``2022-06-29 17:28:24 UTC``, ``2022-06-29T17:28:24Z``, ISO-8601 with an offset, and a bare
    ``2022-06-29`` (midnight UTC). A naive value is taken as UTC, which is what the API uses throughout.
    Raises :class:`ValueError` for anything else: a garbled timestamp is a malformed response, not "empty".
    """
    if raw is None:
        return None
    text = raw.strip()
    if not text:
        return None
    iso = _TZ_SUFFIX.sub("+00:00", text)
    try:
        value = datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(f"unrecognised Mobile Commons timestamp: {text!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def format_element_timestamp(value: datetime) -> str:
    """The element-text format (``2022-06-29 17:28:24 UTC``), also sent as ``from``/``to`` by most clients."""
    return _utc(value).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_attribute_timestamp(value: datetime) -> str:
    """The attribute format (``2022-06-29T17:28:24Z``)."""
    return _utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamps sent to Mobile Commons must be timezone-aware")
    return value.astimezone(UTC)


def format_range_bound(value: datetime | date, fmt: str = "%Y-%m-%d %H:%M:%S UTC") -> str:
    """Format a ``from``/``to`` bound of ``profiles``.

    [INF] The docs say ISO-8601; Parsons sends ``YYYY-MM-DD`` and other clients ``YYYY-MM-DD HH:MM:SS UTC``
    (B3). Which the server prefers is not verified, so the client takes ``fmt`` as a setting.
    """
    if isinstance(value, datetime):
        return _utc(value).strftime(fmt)
    return value.strftime("%Y-%m-%d")


# -- phones --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16384)  # pure, and a record's phone is normalized several times
def normalize_us_phone(raw: str | None) -> str | None:
    """E.164 (``+13075550100``) for a valid North American number in any common format, else ``None``.

    Accepts 10 digits, 11 digits with a leading ``1`` (Mobile Commons' own form), punctuation and ``+1``.
    Only country code 1 is accepted: both the EveryAction sync (seed: "Country field setting must be US")
    and Mobile Commons' 11-digit form are North American.
    """
    if raw is None:
        return None
    text = raw.strip()
    if not text:
        return None
    try:
        number = phonenumbers.parse(text, "US")
    except phonenumbers.NumberParseException:
        return None
    if number.country_code != 1 or not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def mc_phone(e164: str) -> str:
    """Mobile Commons' 11-digit form (``13075550100``) of an E.164 North American number."""
    if not re.fullmatch(r"\+1\d{10}", e164):
        raise ValueError("expected an E.164 North American number (+1 and 10 digits)")
    return e164[1:]


def last10(phone: str) -> str:
    """The last 10 digits: how VAN (10 digits) and Mobile Commons (11) phones are compared (PART C)."""
    return re.sub(r"\D", "", phone)[-10:]


# -- records -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subscription:
    """One campaign subscription of a profile (B5: status ``Active`` or ``Opted-Out``)."""

    campaign_id: str
    campaign_name: str | None
    opt_in_path_id: str | None
    status: str
    opt_in_source: str | None = None
    created_at: datetime | None = None
    activated_at: datetime | None = None
    opted_out_at: datetime | None = None
    opt_out_source: str | None = None

    @property
    def active(self) -> bool:
        return _fold(self.status) in ACTIVE_SUBSCRIPTION_STATUSES and self.opted_out_at is None


@dataclass(frozen=True)
class Integration:
    """An ``<integration constituent_id type synchronized_at>`` entry written by a native CRM sync."""

    constituent_id: str | None
    type: str | None
    synchronized_at: datetime | None


@dataclass(frozen=True)
class ProfileSource:
    """Where the profile came from (``type="Keyword"``, ``"API"``, ...)."""

    type: str | None
    name: str | None
    id: str | None = None
    opt_in_path_id: str | None = None


@dataclass(frozen=True)
class Profile:
    """A Mobile Commons profile, normalised: E.164 phone, aware UTC timestamps, trimmed strings.

    ``phone_number`` is ``None`` when the API's value is not a valid North American number;
    ``raw_phone_number`` always keeps what the API sent (11 digits). ``constituent_id`` is the EveryAction
    identifier, read from the configured custom column or else from a native ``<integration>`` entry.
    """

    id: str
    phone_number: str | None
    raw_phone_number: str
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    street1: str | None = None
    street2: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None
    status: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    opted_out_at: datetime | None = None
    opted_out_source: str | None = None
    source: ProfileSource | None = None
    subscriptions: tuple[Subscription, ...] = ()
    custom_columns: Mapping[str, str] = field(default_factory=dict, hash=False)
    integrations: tuple[Integration, ...] = ()
    constituent_id: str | None = None

    def subscription(self, campaign_id: str) -> Subscription | None:
        """The subscription to ``campaign_id`` (the active one if there are several)."""
        matches = [s for s in self.subscriptions if s.campaign_id == str(campaign_id)]
        active = [s for s in matches if s.active]
        best = active or matches
        return best[0] if best else None


@dataclass(frozen=True)
class OptInPath:
    """An opt-in path: the way a phone joins a campaign; each sends its own welcome message."""

    id: str
    name: str | None
    active: bool
    campaign_id: str


@dataclass(frozen=True)
class Campaign:
    id: str
    name: str | None
    active: bool
    description: str | None = None
    tags: tuple[str, ...] = ()
    opt_in_paths: tuple[OptInPath, ...] = ()


@dataclass(frozen=True)
class ProfileUpdate:
    """What the connector writes through ``profile_update``; ``None`` fields are not sent (left unchanged).

    ``opt_in_path_id`` subscribes the phone to that path's campaign and makes Mobile Commons send the path's
    welcome text, once per campaign ever (B5): repeating it, or retrying the request, sends nothing more.
    ``constituent_id`` is written into the custom column named by the client's ``constituent_id_field``.
    """

    phone_number: str
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    street1: str | None = None
    street2: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None
    opt_in_path_id: str | None = None
    constituent_id: str | None = None
    custom_columns: Mapping[str, str] = field(default_factory=dict, hash=False)


# -- parsing -------------------------------------------------------------------------------------------


def _text(el: Element | None) -> str | None:
    """Trimmed element text; empty or missing -> ``None``."""
    if el is None or el.text is None:
        return None
    value = el.text.strip()
    return value or None


def _child(el: Element, name: str) -> str | None:
    return _text(el.find(name))


def _attr(el: Element, name: str) -> str | None:
    value = el.get(name)
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def _fold(value: str | None) -> str:
    return " ".join((value or "").split()).casefold()


def parse_subscription(el: Element) -> Subscription:
    return Subscription(
        campaign_id=_attr(el, "campaign_id") or "",
        campaign_name=_attr(el, "campaign_name"),
        opt_in_path_id=_attr(el, "opt_in_path_id"),
        status=_attr(el, "status") or "",
        opt_in_source=_attr(el, "opt_in_source"),
        created_at=parse_timestamp(_attr(el, "created_at")),
        activated_at=parse_timestamp(_attr(el, "activated_at")),
        opted_out_at=parse_timestamp(_attr(el, "opted_out_at")),
        opt_out_source=_attr(el, "opt_out_source"),
    )


def parse_profile(el: Element, *, constituent_id_field: str = DEFAULT_CONSTITUENT_ID_FIELD) -> Profile:
    """Build a :class:`Profile` from a ``<profile id=…>`` element.

    Tolerates both the current ``<address>`` block and missing sections; raises :class:`ValueError` when
    the element lacks its id or phone, or carries a garbled timestamp.
    """
    profile_id = _attr(el, "id")
    raw_phone = _child(el, "phone_number")
    if not profile_id or not raw_phone:
        raise ValueError("profile element without id or phone_number")
    address = el.find("address")

    def addr(name: str) -> str | None:
        return _child(address, name) if address is not None else None

    source_el = el.find("source")
    source = None
    if source_el is not None:
        source = ProfileSource(
            type=_attr(source_el, "type"), name=_attr(source_el, "name"), id=_attr(source_el, "id"),
            opt_in_path_id=_attr(source_el, "opt_in_path_id"),
        )
    custom: dict[str, str] = {}
    for col in el.findall("custom_columns/custom_column"):
        name = _attr(col, "name")
        value = _text(col)
        if name and value is not None:
            custom[name] = value
    integrations = tuple(
        Integration(
            constituent_id=_attr(i, "constituent_id"), type=_attr(i, "type"),
            synchronized_at=parse_timestamp(_attr(i, "synchronized_at")),
        )
        for i in el.findall("integrations/integration")
    )
    constituent_id = custom.get(constituent_id_field) or next(
        (i.constituent_id for i in integrations if i.constituent_id), None
    )
    return Profile(
        id=profile_id,
        phone_number=normalize_us_phone(raw_phone),
        raw_phone_number=raw_phone,
        email=_child(el, "email"),
        first_name=_child(el, "first_name"),
        last_name=_child(el, "last_name"),
        street1=addr("street1"),
        street2=addr("street2"),
        city=addr("city"),
        state=addr("state"),
        postal_code=addr("postal_code"),
        country=addr("country"),
        status=_child(el, "status"),
        created_at=parse_timestamp(_child(el, "created_at")),
        updated_at=parse_timestamp(_child(el, "updated_at")),
        opted_out_at=parse_timestamp(_child(el, "opted_out_at")),
        opted_out_source=_child(el, "opted_out_source"),
        source=source,
        subscriptions=tuple(parse_subscription(s) for s in el.findall("subscriptions/subscription")),
        custom_columns=custom,
        integrations=integrations,
        constituent_id=constituent_id,
    )


def parse_campaign(el: Element) -> Campaign:
    """Build a :class:`Campaign` (with its opt-in paths, if listed) from a ``<campaign>`` element."""
    campaign_id = _attr(el, "id")
    if not campaign_id:
        raise ValueError("campaign element without id")
    paths = tuple(
        OptInPath(
            id=_attr(p, "id") or "", name=_child(p, "name"), active=_truthy(_attr(p, "active")),
            campaign_id=campaign_id,
        )
        for p in el.findall("opt_in_paths/opt_in_path")
    )
    tags = tuple(t for t in (_text(t) for t in el.findall("tags/tag")) if t)
    return Campaign(
        id=campaign_id, name=_child(el, "name"), active=_truthy(_attr(el, "active")),
        description=_child(el, "description"), tags=tags, opt_in_paths=paths,
    )


def _truthy(value: str | None) -> bool:
    return _fold(value) in {"true", "1", "yes"}


# -- consent semantics ---------------------------------------------------------------------------------


def is_opted_in(profile: Profile, campaign_id: str | None = None) -> bool:
    """May this profile be texted? (B5)

    Without ``campaign_id``: the profile-level ``status`` decides, compared case-insensitively (casing
    varies); only ``Active Subscriber`` counts. If the API sent no status at all, fall back to "has an
    active subscription and no profile-level ``opted_out_at``" (the rule a public VAN↔MC reconciliation
    uses). A status is trusted over ``opted_out_at`` because a subscriber who texted a keyword again after
    opting out is active while the old ``opted_out_at`` may remain.

    With ``campaign_id``: the subscription to that campaign must be ``Active`` with no ``opted_out_at``,
    and the profile must not be globally opted out by status (``Texted a STOP word``).
    """
    status = _fold(profile.status)
    if campaign_id is not None:
        if status == "texted a stop word":
            return False
        sub = profile.subscription(str(campaign_id))
        return sub is not None and sub.active
    if status:
        return status in ACTIVE_PROFILE_STATUSES
    return profile.opted_out_at is None and any(s.active for s in profile.subscriptions)


# -- request builders ----------------------------------------------------------------------------------


def require_mc_phone(raw: str) -> str:
    """The 11-digit form of a phone in any format; :class:`ValueError` if it is not a valid NANP number."""
    e164 = normalize_us_phone(raw)
    if e164 is None:
        raise ValueError("not a valid North American phone number")
    return mc_phone(e164)


def build_profile_update_params(
    update: ProfileUpdate, *, constituent_id_field: str = DEFAULT_CONSTITUENT_ID_FIELD
) -> dict[str, str]:
    """``profile_update`` parameters: phone in 11-digit form, only the fields that are set.

    Custom columns travel as ``<Custom Column Name>=<value>`` (B3). A custom column whose name collides with
    a standard parameter is refused, since the API reads parameters from one flat namespace.
    """
    params: dict[str, str] = {"phone_number": require_mc_phone(update.phone_number)}
    for name in STANDARD_UPDATE_FIELDS:
        value = getattr(update, name)
        if value is not None:
            params[name] = str(value).strip()
    if update.opt_in_path_id is not None:
        params["opt_in_path_id"] = str(update.opt_in_path_id)
    columns = dict(update.custom_columns)
    if update.constituent_id is not None:
        columns[constituent_id_field] = str(update.constituent_id)
    for name, value in columns.items():
        if name in RESERVED_PARAMS:
            raise ValueError(f"custom column name {name!r} collides with a standard profile_update parameter")
        params[name] = str(value)
    return params


def build_opt_out_params(
    phone_number: str, *, campaign_id: str | None = None, subscription_id: str | None = None
) -> dict[str, str]:
    """``profile_opt_out`` parameters. Neither id given means **all** campaigns (B5); both is ambiguous."""
    if campaign_id is not None and subscription_id is not None:
        raise ValueError("give campaign_id or subscription_id, not both")
    params = {"phone_number": require_mc_phone(phone_number)}
    if campaign_id is not None:
        params["campaign_id"] = str(campaign_id)
    if subscription_id is not None:
        params["subscription_id"] = str(subscription_id)
    return params


def build_profiles_params(
    *,
    updated_from: datetime | date | None = None,
    updated_to: datetime | date | None = None,
    phone_numbers: Iterable[str] | None = None,
    limit: int = 1000,
    page: int = 1,
    include_custom_columns: bool = True,
    include_subscriptions: bool = True,
    range_format: str = "%Y-%m-%d %H:%M:%S UTC",
) -> dict[str, str]:
    """``profiles`` parameters: ``from``/``to`` filter on ``updated_at``; ``limit`` at most 1000 (B3, B6)."""
    if not 1 <= limit <= 1000:
        raise ValueError("limit must be between 1 and 1000")
    if page < 1:
        raise ValueError("page is 1-based")
    params = {
        "limit": str(limit),
        "page": str(page),
        "include_custom_columns": _bool(include_custom_columns),
        "include_subscriptions": _bool(include_subscriptions),
        # Clicks and group memberships are large and unused by the sync; the docs default them to true.
        "include_clicks": "false",
        "include_members": "false",
    }
    if updated_from is not None:
        params["from"] = format_range_bound(updated_from, range_format)
    if updated_to is not None:
        params["to"] = format_range_bound(updated_to, range_format)
    if phone_numbers is not None:
        params["phone_number"] = ",".join(require_mc_phone(p) for p in phone_numbers)
    return params


def _bool(value: bool) -> str:
    return "true" if value else "false"


__all__ = [
    "DEFAULT_CONSTITUENT_ID_FIELD",
    "Campaign",
    "Integration",
    "OptInPath",
    "Profile",
    "ProfileSource",
    "ProfileUpdate",
    "Subscription",
    "build_opt_out_params",
    "build_profile_update_params",
    "build_profiles_params",
    "format_attribute_timestamp",
    "format_element_timestamp",
    "format_range_bound",
    "is_opted_in",
    "last10",
    "mc_phone",
    "normalize_us_phone",
    "parse_campaign",
    "parse_profile",
    "parse_subscription",
    "parse_timestamp",
    "require_mc_phone",
]
