"""The VAN person as crmsync sees it, and the pure translations to and from VAN's wire shapes.

No I/O lives here: the client and the simulator both build on these functions, so that what the client sends
and what the simulator accepts are checked against one definition of the wire format.

VAN writes one concept three ways (research A4): opt-in status goes *in* as a one-letter code (``I/U/O``),
comes *out* of ``GET people/{vanId}`` as a word (``"Unknown"``; the opt-in/opt-out words are unverified, so
parsing accepts every plausible spelling), and appears in changed-entity CSV exports as a number
(``1/2/3``, sometimes rendered as a float ``1.0``). Phone numbers are stored by VAN as 10 digits while
Mobile Commons uses 11; crmsync's canonical form is E.164 (``+1XXXXXXXXXX``).
"""

from __future__ import annotations

import csv
import enum
import functools
import io
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import phonenumbers
import structlog

from crmsync.connectors.errors import MalformedResponseError

log = structlog.get_logger("crmsync.connectors.everyaction.records")

# --------------------------------------------------------------------------------------------------------
# Opt-in status


class OptInStatus(enum.Enum):
    """SMS/phone opt-in status of one phone in one committee (VAN stores it per phone, not per person)."""

    OPT_IN = "opt_in"
    UNKNOWN = "unknown"
    OPT_OUT = "opt_out"


#: One-letter codes VAN accepts on input (``phoneOptInStatus``, ``canvassContext.phone.smsOptInStatus``).
OPT_IN_CODES: Mapping[OptInStatus, str] = {
    OptInStatus.OPT_IN: "I",
    OptInStatus.UNKNOWN: "U",
    OptInStatus.OPT_OUT: "O",
}
_CODE_TO_OPT_IN = {code: status for status, code in OPT_IN_CODES.items()}

#: Words the simulator writes on output. Only ``"Unknown"`` is confirmed by a recorded fixture; the other
#: two are the research's best guess (A4, [INF]) and :func:`opt_in_from_word` accepts other spellings too.
OPT_IN_WORDS: Mapping[OptInStatus, str] = {
    OptInStatus.OPT_IN: "Opt-In",
    OptInStatus.UNKNOWN: "Unknown",
    OptInStatus.OPT_OUT: "Opt-Out",
}

#: Numeric ``PhoneOptInStatus`` / ``PhoneOptInStatusID`` values in changed-entity exports and bulk files.
OPT_IN_EXPORT_IDS: Mapping[OptInStatus, int] = {
    OptInStatus.OPT_IN: 1,
    OptInStatus.UNKNOWN: 2,
    OptInStatus.OPT_OUT: 3,
}
_EXPORT_ID_TO_OPT_IN = {num: status for status, num in OPT_IN_EXPORT_IDS.items()}

# Word spellings, compared after dropping everything but letters and lower-casing.
_WORD_TO_OPT_IN = {
    "optin": OptInStatus.OPT_IN, "optedin": OptInStatus.OPT_IN, "in": OptInStatus.OPT_IN,
    "i": OptInStatus.OPT_IN, "subscribed": OptInStatus.OPT_IN,
    "unknown": OptInStatus.UNKNOWN, "u": OptInStatus.UNKNOWN, "none": OptInStatus.UNKNOWN,
    "optout": OptInStatus.OPT_OUT, "optedout": OptInStatus.OPT_OUT, "out": OptInStatus.OPT_OUT,
    "o": OptInStatus.OPT_OUT, "unsubscribed": OptInStatus.OPT_OUT,
}


def opt_in_code(status: OptInStatus) -> str:
    """The one-letter code to send to VAN."""
    return OPT_IN_CODES[status]


def opt_in_from_code(code: str) -> OptInStatus:
    """Parse a one-letter input code; raises ``ValueError`` for anything else (the API would answer 400)."""
    try:
        return _CODE_TO_OPT_IN[code.strip().upper()]
    except KeyError:
        raise ValueError(f"not a VAN opt-in code: {code!r}") from None


def opt_in_from_word(word: str | None) -> OptInStatus | None:
    """Parse the word VAN returns on GET (``"Unknown"``, ``"Opt-In"``, ...); None if empty or unrecognised.

    Unrecognised words are logged rather than guessed: treating an unknown word as "opted in" could text
    someone who never consented.
    """
    if word is None:
        return None
    key = re.sub(r"[^a-z]", "", word.lower())
    if not key:
        return None
    status = _WORD_TO_OPT_IN.get(key)
    if status is None:
        log.warning("everyaction_unknown_opt_in_word", word=word)
    return status


def opt_in_word(status: OptInStatus) -> str:
    return OPT_IN_WORDS[status]


def opt_in_from_export(value: str | int | float | None) -> OptInStatus | None:
    """Parse the numeric export code; accepts ``"1"``, ``"1.0"``, ``1`` (CSV readers may yield floats)."""
    if value is None:
        return None
    number: float
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            number = float(text)
        except ValueError:
            # Tolerate a word or letter in case a column is rendered differently.
            return opt_in_from_word(text)
    else:
        number = float(value)
    if number != int(number):
        return None
    return _EXPORT_ID_TO_OPT_IN.get(int(number))


def opt_in_export_id(status: OptInStatus) -> int:
    return OPT_IN_EXPORT_IDS[status]


# --------------------------------------------------------------------------------------------------------
# Phone numbers


@functools.lru_cache(maxsize=16384)  # pure, and a record's phone is normalized several times
def normalize_us_phone(raw: str | None) -> str | None:
    """E.164 (``+1XXXXXXXXXX``) for a valid US number in any common format (10 or 11 digits, punctuation,
    extensions dropped); ``None`` when empty or not a valid US number (including other NANP countries,
    because the product only syncs US records)."""
    if raw is None:
        return None
    raw = str(raw).strip()
    if not raw:
        return None
    try:
        number = phonenumbers.parse(raw, "US")
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number_for_region(number, "US"):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def van_phone(e164: str) -> str:
    """The 10-digit form VAN stores (``+14142020792`` -> ``4142020792``)."""
    if not re.fullmatch(r"\+1\d{10}", e164):
        raise ValueError("expected a +1 E.164 phone number")
    return e164[2:]


def mask_phone(number: str | None) -> str:
    """For logs and error messages: phone numbers are personal data, keep only the last four digits."""
    digits = re.sub(r"\D", "", number or "")
    return f"***{digits[-4:]}" if digits else "<none>"


#: VAN's North-American phone validation (research A3.2), applied after stripping non-digits.
VAN_PHONE_PATTERN = re.compile(r"^1?[2-9][0-8]\d[2-9]\d{6}$")

# --------------------------------------------------------------------------------------------------------
# Type codes (one-letter in, words out)

PHONE_TYPE_CODES: Mapping[str, str] = {"H": "Home", "W": "Work", "C": "Cell", "M": "Main", "F": "Fax"}
EMAIL_TYPE_CODES: Mapping[str, str] = {"P": "Personal", "W": "Work"}
ADDRESS_TYPE_CODES: Mapping[str, str] = {"H": "Home", "W": "Work", "M": "Mailing", "V": "Voting"}
_MOBILE_PHONE_TYPES = {"cell", "mobile", "c"}


# --------------------------------------------------------------------------------------------------------
# The person


@dataclass(frozen=True)
class VanPhone:
    """One phone of a person. ``number`` is as VAN returns it (10 digits); :attr:`e164` is canonical."""

    number: str
    phone_type: str | None = None
    is_preferred: bool = False
    opt_in: OptInStatus | None = None
    sms_opt_in: OptInStatus | None = None
    phone_id: int | None = None
    ext: str | None = None

    @functools.cached_property
    def e164(self) -> str | None:
        """Parsed once per phone (phonenumbers is the costliest step of reading a person)."""
        return normalize_us_phone(self.number)

    @property
    def is_mobile(self) -> bool:
        return (self.phone_type or "").strip().lower() in _MOBILE_PHONE_TYPES

    @property
    def effective_opt_in(self) -> OptInStatus | None:
        """``phoneOptInStatus``, falling back to ``smsOptInStatus`` (GET returns both, research A4)."""
        return self.opt_in if self.opt_in is not None else self.sms_opt_in


@dataclass(frozen=True)
class VanEmail:
    email: str
    email_type: str | None = None
    is_preferred: bool = False
    is_subscribed: bool | None = None
    subscription_status: str | None = None


@dataclass(frozen=True)
class VanAddress:
    line1: str | None = None
    line2: str | None = None
    line3: str | None = None
    city: str | None = None
    state: str | None = None
    zip: str | None = None
    country_code: str | None = None
    address_type: str | None = None
    is_preferred: bool = False


@dataclass(frozen=True)
class VanIdentifier:
    id_type: str
    external_id: str


@dataclass(frozen=True)
class VanPerson:
    """A VAN contact. Collections are ``None`` when they were not ``$expand``ed (VAN returns ``null``), so
    that "not loaded" is never mistaken for "has none"; an expanded but empty collection is ``()``."""

    van_id: int
    first_name: str | None = None
    last_name: str | None = None
    middle_name: str | None = None
    date_of_birth: str | None = None
    emails: tuple[VanEmail, ...] | None = None
    phones: tuple[VanPhone, ...] | None = None
    addresses: tuple[VanAddress, ...] | None = None
    identifiers: tuple[VanIdentifier, ...] | None = None

    @property
    def preferred_email(self) -> str | None:
        return _preferred([e for e in self.emails or ()], lambda e: e.is_preferred, lambda e: e.email)

    @property
    def preferred_phone(self) -> VanPhone | None:
        phones = list(self.phones or ())
        return _preferred(phones, lambda p: p.is_preferred, lambda p: p)

    @property
    def preferred_address(self) -> VanAddress | None:
        return _preferred(list(self.addresses or ()), lambda a: a.is_preferred, lambda a: a)

    def phone(self, raw: str) -> VanPhone | None:
        """The phone matching ``raw`` (any format), compared in E.164."""
        wanted = normalize_us_phone(raw)
        if wanted is None:
            return None
        return next((p for p in self.phones or () if p.e164 == wanted), None)

    def identifier(self, id_type: str) -> str | None:
        """External id of ``id_type`` (case-insensitive: VAN's type names differ in case between docs)."""
        return next((i.external_id for i in self.identifiers or () if i.id_type.lower() == id_type.lower()),
                    None)


def _preferred(items: Sequence[Any], is_pref: Any, pick: Any) -> Any:
    if not items:
        return None
    for item in items:
        if is_pref(item):
            return pick(item)
    return pick(items[0])


def _str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _collection(data: Mapping[str, Any], key: str) -> list[Mapping[str, Any]] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError(f"person field {key!r} is not a list")
    return [v for v in value if isinstance(v, Mapping)]


def parse_person(data: Mapping[str, Any]) -> VanPerson:
    """Parse ``GET people/{vanId}`` JSON. ``null`` collections stay ``None``; unknown keys are ignored.
    :class:`ValueError` for anything else (a wrong type anywhere inside included: the answer is untrusted)."""
    try:
        return _parse_person(data)
    except (TypeError, AttributeError, KeyError, OverflowError) as exc:
        raise ValueError(f"unexpected person JSON ({type(exc).__name__}: {exc})") from None


def _parse_person(data: Mapping[str, Any]) -> VanPerson:
    if not isinstance(data, Mapping):
        raise ValueError("person JSON is not an object")
    if "vanId" not in data or data["vanId"] is None:
        raise ValueError("person JSON has no vanId")
    emails = _collection(data, "emails")
    phones = _collection(data, "phones")
    addresses = _collection(data, "addresses")
    identifiers = _collection(data, "identifiers")
    return VanPerson(
        van_id=int(data["vanId"]),
        first_name=_str(data.get("firstName")),
        last_name=_str(data.get("lastName")),
        middle_name=_str(data.get("middleName")),
        date_of_birth=_str(data.get("dateOfBirth")),
        emails=None if emails is None else tuple(
            VanEmail(
                email=str(e.get("email") or "").strip(),
                email_type=_str(e.get("type")),
                is_preferred=bool(e.get("isPreferred")),
                is_subscribed=e.get("isSubscribed") if isinstance(e.get("isSubscribed"), bool) else None,
                subscription_status=_str(e.get("subscriptionStatus")),
            ) for e in emails if e.get("email")
        ),
        phones=None if phones is None else tuple(
            VanPhone(
                number=re.sub(r"\D", "", str(p.get("phoneNumber") or "")),
                phone_type=_str(p.get("phoneType")),
                is_preferred=bool(p.get("isPreferred")),
                opt_in=opt_in_from_word(_str(p.get("phoneOptInStatus"))),
                sms_opt_in=opt_in_from_word(_str(p.get("smsOptInStatus"))),
                phone_id=int(p["phoneId"]) if p.get("phoneId") is not None else None,
                ext=_str(p.get("ext")),
            ) for p in phones if p.get("phoneNumber")
        ),
        addresses=None if addresses is None else tuple(
            VanAddress(
                line1=_str(a.get("addressLine1")), line2=_str(a.get("addressLine2")),
                line3=_str(a.get("addressLine3")), city=_str(a.get("city")),
                state=_str(a.get("stateOrProvince")), zip=_str(a.get("zipOrPostalCode")),
                country_code=_str(a.get("countryCode")), address_type=_str(a.get("type")),
                is_preferred=bool(a.get("isPreferred")),
            ) for a in addresses
        ),
        identifiers=None if identifiers is None else tuple(
            VanIdentifier(id_type=str(i.get("type")), external_id=str(i.get("externalId")))
            for i in identifiers if i.get("type") and i.get("externalId") is not None
        ),
    )


@dataclass(frozen=True)
class MatchResult:
    """What find/findOrCreate/``POST people/{vanId}`` tell us. Research A3.5: only ``vanId`` is reliable, the
    body may be ``{vanId,status}`` or a full person, so that is all we keep."""

    van_id: int
    status: str | None = None
    created: bool = False


def parse_match_response(data: Any) -> tuple[int, str | None]:
    """``vanId`` (and ``status`` if present) from a match response or a full person."""
    if not isinstance(data, Mapping) or data.get("vanId") is None:
        raise ValueError("match response has no vanId")
    status = data.get("status")
    return int(data["vanId"]), status if isinstance(status, str) else None


# --------------------------------------------------------------------------------------------------------
# Match candidates and update payloads


class MatchCombination(enum.Enum):
    """The minimum field combinations VAN needs to match a person (research A3.2)."""

    EMAIL = "email"
    NAME_EMAIL = "firstName+lastName+email"
    NAME_PHONE = "firstName+lastName+phone"
    NAME_ZIP_DOB = "firstName+lastName+zip5+dateOfBirth"
    NAME_STREET_ZIP = "firstName+lastName+streetNumber+streetName+zip5"


_STREET_RE = re.compile(r"^\s*(\d+[A-Za-z]?(?:-\d+)?)\s+(\S.*)$")


def split_street(line1: str | None) -> tuple[str, str] | None:
    """``"900 N Washtenaw Ave"`` -> ``("900", "N Washtenaw Ave")``; None when there is no street number."""
    m = _STREET_RE.match(line1 or "")
    return (m.group(1), m.group(2).strip()) if m else None


def zip5(value: str | None) -> str | None:
    digits = re.sub(r"\D", "", value or "")
    return digits[:5] if len(digits) >= 5 else None


@dataclass(frozen=True)
class MatchCandidate:
    """Input to ``people/find`` and ``people/findOrCreate``. Build it with :func:`match_candidate`.

    ``phone`` is E.164; it is sent as VAN's 10-digit form. ``phone_type`` defaults to ``"C"`` (cell) because
    the numbers crmsync syncs come from a messaging platform.
    """

    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = None
    phone_type: str = "C"
    phone_opt_in: OptInStatus | None = None
    date_of_birth: str | None = None
    address_line1: str | None = None
    city: str | None = None
    state: str | None = None
    zip: str | None = None
    country_code: str | None = None
    identifiers: tuple[VanIdentifier, ...] = ()
    van_id: int | None = None

    def combinations(self) -> list[MatchCombination]:
        """Every minimum combination this candidate satisfies (empty: VAN can never match it)."""
        return candidate_combinations(self.to_json())

    @property
    def can_match(self) -> bool:
        return bool(self.combinations())

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.van_id is not None:
            body["vanId"] = self.van_id
        if self.first_name:
            body["firstName"] = self.first_name
        if self.last_name:
            body["lastName"] = self.last_name
        if self.date_of_birth:
            body["dateOfBirth"] = self.date_of_birth
        if self.email:
            body["emails"] = [{"email": self.email}]
        if self.phone:
            phone: dict[str, Any] = {"phoneNumber": van_phone(self.phone), "phoneType": self.phone_type}
            if self.phone_opt_in is not None:
                phone["phoneOptInStatus"] = opt_in_code(self.phone_opt_in)
            body["phones"] = [phone]
        if self.address_line1 or self.zip or self.city:
            address: dict[str, Any] = {}
            for key, value in (("addressLine1", self.address_line1), ("city", self.city),
                               ("stateOrProvince", self.state), ("zipOrPostalCode", self.zip),
                               ("countryCode", self.country_code)):
                if value:
                    address[key] = value
            body["addresses"] = [address]
        if self.identifiers:
            body["identifiers"] = [{"type": i.id_type, "externalId": i.external_id} for i in self.identifiers]
        return body


def match_candidate(
    *,
    first_name: str | None = None,
    last_name: str | None = None,
    email: str | None = None,
    phone: str | None = None,
    phone_type: str = "C",
    phone_opt_in: OptInStatus | None = None,
    date_of_birth: date | str | None = None,
    address_line1: str | None = None,
    city: str | None = None,
    state: str | None = None,
    zip: str | None = None,
    country_code: str | None = "US",
    identifiers: Mapping[str, str] | None = None,
    van_id: int | None = None,
) -> MatchCandidate:
    """Build a candidate from loosely-typed input (Mobile Commons fields, say), normalising as VAN expects.

    Raises ``ValueError`` when ``phone`` is given but is not a valid US number: silently dropping it would
    change which match combination applies.
    """
    e164 = None
    if phone is not None and str(phone).strip():
        e164 = normalize_us_phone(phone)
        if e164 is None:
            raise ValueError(f"not a valid US phone number: {mask_phone(str(phone))}")
    if phone_type.upper() not in PHONE_TYPE_CODES:
        raise ValueError(f"phone_type must be one of {sorted(PHONE_TYPE_CODES)}")
    dob = date_of_birth.isoformat() if isinstance(date_of_birth, date) else _str(date_of_birth)
    return MatchCandidate(
        first_name=_str(first_name), last_name=_str(last_name), email=_str(email), phone=e164,
        phone_type=phone_type.upper(), phone_opt_in=phone_opt_in, date_of_birth=dob,
        address_line1=_str(address_line1), city=_str(city), state=_str(state), zip=_str(zip),
        country_code=_str(country_code) if (address_line1 or zip or city) else None,
        identifiers=tuple(VanIdentifier(k, v) for k, v in (identifiers or {}).items()),
        van_id=van_id,
    )


def candidate_combinations(body: Mapping[str, Any]) -> list[MatchCombination]:
    """Which minimum combinations a find/findOrCreate JSON body satisfies. Shared with the simulator, which
    must refuse to match exactly when the client would refuse to send."""
    def first(key: str, sub: str) -> list[str]:
        items = body.get(key) or []
        return [str(i.get(sub)).strip() for i in items if isinstance(i, Mapping) and _str(i.get(sub))]

    names = bool(_str(body.get("firstName"))) and bool(_str(body.get("lastName")))
    emails = first("emails", "email")
    phones = first("phones", "phoneNumber")
    zips = [z for z in (zip5(v) for v in first("addresses", "zipOrPostalCode")) if z]
    streets = [s for s in (split_street(v) for v in first("addresses", "addressLine1")) if s]
    combos: list[MatchCombination] = []
    if emails:
        combos.append(MatchCombination.EMAIL)
    if names and emails:
        combos.append(MatchCombination.NAME_EMAIL)
    if names and phones:
        combos.append(MatchCombination.NAME_PHONE)
    if names and zips and _str(body.get("dateOfBirth")):
        combos.append(MatchCombination.NAME_ZIP_DOB)
    if names and zips and streets:
        combos.append(MatchCombination.NAME_STREET_ZIP)
    return combos


def phone_opt_in_update(phone_e164: str, status: OptInStatus, *, phone_type: str | None = None
                        ) -> dict[str, Any]:
    """Body for ``POST people/{vanId}`` that sets one phone's opt-in (research A4 (a), Parsons sample).

    ``phoneType`` is left out unless given, so that an existing Home phone is not re-typed as Cell; VAN adds
    the phone if the person does not have it yet.
    """
    phone: dict[str, Any] = {"phoneNumber": van_phone(phone_e164), "phoneOptInStatus": opt_in_code(status)}
    if phone_type is not None:
        if phone_type.upper() not in PHONE_TYPE_CODES:
            raise ValueError(f"phone_type must be one of {sorted(PHONE_TYPE_CODES)}")
        phone["phoneType"] = phone_type.upper()
    return {"phones": [phone]}


def identifier_update(id_type: str, external_id: str) -> dict[str, Any]:
    """Body for ``POST people/{vanId}`` adding an external identifier (e.g. the Mobile Commons profile id)."""
    if not id_type.strip() or not str(external_id).strip():
        raise ValueError("identifier type and external id must be non-empty")
    return {"identifiers": [{"type": id_type, "externalId": str(external_id)}]}


def fold(text: str | None) -> str:
    """Case- and accent-insensitive comparison key (VAN matching ignores both, research A3.2)."""
    decomposed = unicodedata.normalize("NFKD", text or "")
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().strip()


# --------------------------------------------------------------------------------------------------------
# Changed-entity export rows

#: Contacts export columns, by :class:`ContactChange` attribute. Only ``VanID``, ``FirstName``, ``LastName``,
#: ``Phone``, ``PhoneOptInStatus`` and ``DateCreated`` are confirmed column names (research A5, issue 7 item
#: 11); the email and address columns are not, so they are not requested unless configured, and the header of
#: the first file is checked against what was requested.
CONFIRMED_CONTACT_COLUMNS: Mapping[str, str] = {
    "van_id": "VanID", "first_name": "FirstName", "last_name": "LastName", "phone": "Phone",
    "phone_opt_in": "PhoneOptInStatus", "date_created": "DateCreated",
}
DEFAULT_CONTACT_FIELDS: tuple[str, ...] = tuple(CONFIRMED_CONTACT_COLUMNS.values())


def export_header(text: str) -> list[str]:
    """The column names of an export file's header row (delimiter sniffed, BOM dropped)."""
    text = text.lstrip("\ufeff")
    header = text.split("\n", 1)[0].rstrip("\r")
    try:
        return [c.strip() for c in next(csv.reader([header], delimiter=sniff_delimiter(text)), [])]
    except csv.Error:
        raise MalformedResponseError("everyaction", "unreadable export file header") from None


@dataclass(frozen=True)
class ContactChange:
    """One row of a Contacts changed-entity export: the *current* version of someone changed in the window."""

    van_id: int
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = None  # E.164, or None if absent/invalid
    phone_opt_in: OptInStatus | None = None
    address_line1: str | None = None
    city: str | None = None
    state: str | None = None
    zip: str | None = None
    date_created: date | None = None
    raw: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)


_DELIMITERS = ("\t", ",", ";", "|")


def sniff_delimiter(text: str) -> str:
    """Guess the delimiter from the header row (research A5.3: tab or comma, not guaranteed).

    Field names never contain delimiters, so the candidate that splits the header into the most fields wins;
    ties (a one-column header) fall back to comma.
    """
    header = text.lstrip("\ufeff").split("\n", 1)[0].rstrip("\r")
    best, best_count = ",", 1
    for delimiter in _DELIMITERS:
        try:
            count = len(next(csv.reader([header], delimiter=delimiter), []))
        except csv.Error:  # not a header at all (a stray CR, a NUL...): the caller's check refuses the file
            continue
        if count > best_count:
            best, best_count = delimiter, count
    return best


def _parse_date(value: str | None) -> date | None:
    value = _str(value)
    if value is None:
        return None
    for candidate in (value, value.replace("Z", "+00:00")):
        try:
            return datetime.fromisoformat(candidate).date()
        except ValueError:
            pass
    for fmt in ("%m/%d/%Y", "%m/%d/%Y %H:%M:%S", "%m/%d/%Y %I:%M:%S %p"):
        try:
            return datetime.strptime(value, fmt).date()
        except ValueError:
            pass
    return None


def _pick(row: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = _str(row.get(name))
        if value is not None:
            return value
    return None


_EXPORT_VAN_ID = re.compile(r"([0-9]{1,18})(?:\.0+)?", re.ASCII)


def _export_van_id(text: str) -> int:
    """A positive vanId as an export writes it ("123", or "123.0" from a spreadsheet round trip); never rounds
    "1.9" to 1 nor takes INF, NaN or a negative number (:class:`ValueError`: the row is skipped)."""
    m = _EXPORT_VAN_ID.fullmatch(text.strip())
    if m is None or int(m.group(1)) == 0:
        raise ValueError(f"export row VanID {text[:30]!r} is not a positive integer")
    return int(m.group(1))


def parse_contact_row(row: Mapping[str, str], columns: Mapping[str, str] | None = None) -> ContactChange:
    """Typed row from one CSV record (header names matched case-insensitively). ``columns`` names the column
    of each :class:`ContactChange` attribute where an instance uses other names than the defaults."""
    lowered = {k.strip().lower(): (v or "") for k, v in row.items() if k is not None}
    for attr, column in (columns or {}).items():
        if column.strip().lower() in lowered:
            lowered[f"@{attr}"] = lowered[column.strip().lower()]
    van_id_text = _pick(lowered, "@van_id", "vanid")
    if van_id_text is None:
        raise ValueError("export row has no VanID")
    return ContactChange(
        van_id=_export_van_id(van_id_text),
        first_name=_pick(lowered, "@first_name", "firstname"),
        last_name=_pick(lowered, "@last_name", "lastname"),
        email=_pick(lowered, "@email", "email", "emailaddress", "preferredemail"),
        phone=normalize_us_phone(_pick(lowered, "@phone", "phone", "phonenumber", "preferredphone")),
        phone_opt_in=opt_in_from_export(_pick(lowered, "@phone_opt_in", "phoneoptinstatus", "phoneoptinstatusid")),
        address_line1=_pick(lowered, "@address_line1", "addressline1", "streetaddress"),
        city=_pick(lowered, "@city", "city"),
        state=_pick(lowered, "@state", "state", "stateorprovince"),
        zip=_pick(lowered, "@zip", "zip5", "zip", "zipcode", "ziporpostalcode"),
        date_created=_parse_date(_pick(lowered, "@date_created", "datecreated")),
        raw=dict(row),
    )


def parse_contacts_csv(text: str, columns: Mapping[str, str] | None = None) -> list[ContactChange]:
    """Parse a whole export file (delimiter sniffed, BOM and CRLF tolerated). Unparseable rows are logged and
    skipped rather than failing the file, because rows repeat in later windows anyway (research A5.4)."""
    text = text.lstrip("\ufeff")
    if not text.strip():
        return []
    rows: list[ContactChange] = []
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=sniff_delimiter(text))
        for line_no, row in enumerate(reader, start=2):
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue
            try:
                rows.append(parse_contact_row(row, columns))
            except ValueError as exc:
                log.warning("everyaction_export_row_skipped", line=line_no, error=str(exc))
    except csv.Error as exc:  # the file itself cannot be read (a field past the csv module's limit...)
        raise MalformedResponseError("everyaction", f"unreadable export file: {exc}") from None
    return rows


def contacts_csv(header: Sequence[str], rows: Iterable[Sequence[Any]], delimiter: str = ",") -> str:
    """Write an export file (the simulator's side of :func:`parse_contacts_csv`)."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue()
