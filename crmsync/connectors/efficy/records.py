"""Efficy contact rows turned into typed records. Pure functions and frozen dataclasses, no I/O.

Why this exists: Efficy's wire values are not what they look like (research §9.3):

* an **empty date comes back as 1899-12-30** (Delphi's zero date); passing it on makes marketing flows fire
  for "125-year-old" contacts, so it is read as ``None``;
* integers and booleans arrive as **strings** (``"1"``/``"0"``; some Efficy builds and custom fields use
  ``"T"``/``"F"``), so flags and keys are converted by field, never by guessing at every string
  (``"0470…"`` phone numbers and ``"01234"`` postcodes must stay strings).

Field types come from naming conventions that hold for the standard schema (``K_*`` keys, ``D_*`` dates,
``OPENED`` flag) plus an optional per-deployment override (:class:`FieldTypes`), because the Efficy schema is
customisable per customer (§1.5).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from typing import Any, Literal

import structlog

from crmsync.connectors.efficy.envelope import normalise_key

log = structlog.get_logger("crmsync.connectors.efficy.records")

FieldValue = str | int | float | bool | datetime | None
FieldType = Literal["str", "int", "float", "flag", "datetime"]

#: Delphi's TDateTime zero: what Efficy returns for an empty date.
EFFICY_EMPTY_DATE = date(1899, 12, 30)

_TRUE = frozenset({"1", "t", "true", "y", "yes", "-1"})
_FALSE = frozenset({"0", "f", "false", "n", "no", ""})
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$")

#: Columns of the standard Cont row that get their own attribute on :class:`EfficyContact`.
ID_FIELD = "K_CONTACT"
EMAIL_FIELD = "EMAIL1"
FIRST_NAME_FIELD = "FIRSTNAME"
LAST_NAME_FIELD = "NAME"
CHANGED_FIELD = "D_CHANGE"


@dataclass(frozen=True)
class FieldTypes:
    """How to type Efficy columns. Conventions first, explicit ``overrides`` (column → type) win.

    ``flags`` lists the columns known to be boolean flags; ``[U]`` beyond ``OPENED`` (research §1.5 verifies
    only ``OPENED``), so deployments add their own (e.g. a ``ROBINSON`` flag used in sync conditions).
    """

    flags: frozenset[str] = frozenset({"OPENED"})
    overrides: Mapping[str, FieldType] = field(default_factory=dict)
    # column -> type, filled as columns are met (every row of a page has the same columns)
    _known: dict[str, FieldType | None] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def type_of(self, column: str) -> FieldType | None:
        try:
            return self._known[column]
        except KeyError:
            kind = self._known[column] = self._type_of(column)
            return kind

    def _type_of(self, column: str) -> FieldType | None:
        name = column.upper()
        if name in self.overrides:
            return self.overrides[name]
        if name in self.flags:
            return "flag"
        if name.startswith("K_"):
            return "int"
        if name.startswith("D_"):
            return "datetime"
        return None


DEFAULT_FIELD_TYPES = FieldTypes()


@dataclass(frozen=True)
class EfficyContact:
    """One Efficy contact (entity ``Cont``, table 11000) as the daemon sees it.

    ``contact_id`` is ``K_CONTACT`` as a decimal string (the APSIS CRM-id profile key); ``fields`` holds every
    other column, typed; ``profile_ids`` are the CRM Profiles linked to the contact, i.e. its consents
    (seed 004: "CRM Profiles" are the consent base). ``profile_ids`` is ``None`` when the read did not
    include profiles, which is different from "has none". ``profile_changed_at`` holds each link's own
    change time (the relation's ``D_CHANGE``) when the deployment says Efficy exposes it ([U]); a link
    missing there has no known time. The contact's ``modified_at`` is never a link's time: an unrelated
    edit changes it too.
    """

    contact_id: str
    email: str | None
    first_name: str | None
    last_name: str | None
    fields: Mapping[str, FieldValue] = field(default_factory=dict, hash=False)
    profile_ids: tuple[str, ...] | None = None
    modified_at: datetime | None = None
    profile_changed_at: Mapping[str, datetime] = field(default_factory=dict, hash=False)

    def has_profile(self, profile_id: str) -> bool:
        """Whether the contact is linked to (has consented via) a CRM Profile."""
        return self.profile_ids is not None and str(profile_id) in self.profile_ids

    def with_profiles(self, profile_ids: Iterable[Any],
                      changed_at: Mapping[Any, datetime | None] | None = None) -> EfficyContact:
        """A copy carrying ``profile_ids`` (normalised and sorted so equal sets compare equal) and, when
        known, each link's own change time."""
        ids = normalise_profile_ids(profile_ids)
        times: dict[str, datetime] = {}
        for key, when in (changed_at or {}).items():
            pid = normalise_key(key)
            if pid is not None and pid in ids and when is not None:
                times[pid] = when
        # the same fields but these two, copied without the frozen dataclass's __init__ (one setattr a
        # field): the client makes one such copy per contact it reads with its profiles
        copy = object.__new__(EfficyContact)
        values = copy.__dict__
        values.update(self.__dict__)
        values["profile_ids"] = ids
        values["profile_changed_at"] = times
        return copy


@dataclass(frozen=True)
class EfficyProfile:
    """A CRM Profile (consent base), e.g. ``("3", "Newsletter")``."""

    profile_id: str
    name: str


# -- scalar readers ---------------------------------------------------------------------------------------

def parse_datetime(value: Any, *, tz: tzinfo = UTC) -> datetime | None:
    """Read an Efficy date/time; 1899-12-30 (Delphi zero), empty strings and garbage read as ``None``.

    Efficy sends local server time without an offset; ``tz`` says which zone that is (an [U] per-deployment
    setting; UTC by default). Results are timezone-aware.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    else:
        text = str(value).strip()
        if not text or not _DATE_RE.match(text):
            return None
        try:
            parsed = datetime.fromisoformat(text.replace(" ", "T", 1).replace("Z", "+00:00"))
        except ValueError:
            return None
    if parsed.date() <= EFFICY_EMPTY_DATE:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.astimezone(UTC)


def parse_flag(value: Any) -> bool | None:
    """Read an Efficy flag: ``"1"``/``"0"``, ``"T"``/``"F"``, real booleans or numbers; unknown → ``None``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


def parse_number(value: Any, kind: Literal["int", "float"] = "int") -> int | float | None:
    """Read a number Efficy may send as a string (``"12"``, ``"12.0"``, ``"1,5"``); empty → ``None``."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number: float = float(value)
    else:
        text = str(value).strip().replace(",", ".")
        if not _NUMBER_RE.match(text):  # float() would also take "1_000", "nan", "inf"
            return None
        number = float(text)
    if kind == "int":
        return int(number) if number.is_integer() else number
    return number


def parse_value(column: str, value: Any, *, types: FieldTypes = DEFAULT_FIELD_TYPES,
                tz: tzinfo = UTC) -> FieldValue:
    """Type one column's value by its declared/conventional type.

    Untyped columns keep JSON numbers as numbers and strings as strings, except that an empty string and the
    1899-12-30 zero date (in any column, as custom date fields have no naming convention) read as ``None``.
    """
    kind = types.type_of(column)
    if kind == "datetime":
        return parse_datetime(value, tz=tz)
    if kind == "flag":
        return parse_flag(value)
    if kind in ("int", "float"):
        number = parse_number(value, kind)
        if number is None and value not in (None, ""):
            return str(value)  # composite relation keys like "56_865114542" stay readable
        return number
    if kind == "str":
        return None if value is None else str(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    text = str(value)
    if text == "":
        return None
    if _DATE_RE.match(text.strip()):
        parsed = parse_datetime(text, tz=tz)
        if parsed is None:
            return None  # the zero date
        return parsed
    return text


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def normalise_profile_ids(profile_ids: Iterable[Any]) -> tuple[str, ...]:
    """Profile keys as sorted unique strings (Efficy sends them as numbers or numeric strings)."""
    keys = {k for p in profile_ids if (k := normalise_key(p)) is not None}
    if len(keys) < 2:
        return tuple(keys)
    return tuple(sorted(keys, key=_numeric_order))


def _numeric_order(key: str) -> tuple[int, str]:
    return len(key), key


def contact_from_row(row: Mapping[str, Any], profile_ids: Iterable[Any] | None = None, *,
                     types: FieldTypes = DEFAULT_FIELD_TYPES, tz: tzinfo = UTC,
                     email_field: str = EMAIL_FIELD) -> EfficyContact:
    """Build an :class:`EfficyContact` from one Cont row (UPPER-CASE columns, as Efficy returns them).

    Raises ``ValueError`` when the row has no ``K_CONTACT``: a contact without its key cannot be synced.
    """
    upper = {str(k).upper(): v for k, v in row.items()}
    contact_id = normalise_key(upper.get(ID_FIELD))
    if contact_id is None:
        raise ValueError("Efficy contact row without K_CONTACT")
    fields: dict[str, FieldValue] = {}
    for column, value in upper.items():
        if column == ID_FIELD:
            continue
        fields[column] = parse_value(column, value, types=types, tz=tz)
    changed = fields.get(CHANGED_FIELD)
    return EfficyContact(
        contact_id=contact_id,
        email=_text(upper.get(email_field.upper())),
        first_name=_text(upper.get(FIRST_NAME_FIELD)),
        last_name=_text(upper.get(LAST_NAME_FIELD)),
        fields=fields,
        profile_ids=None if profile_ids is None else normalise_profile_ids(profile_ids),
        modified_at=changed if isinstance(changed, datetime) else None,
    )


def contacts_from_rows(rows: Iterable[Mapping[str, Any]], *, types: FieldTypes = DEFAULT_FIELD_TYPES,
                       tz: tzinfo = UTC, email_field: str = EMAIL_FIELD) -> list[EfficyContact]:
    """Every row of a page as :class:`EfficyContact` (in row order), typed exactly as :func:`contact_from_row`
    types each one, but with each column's reader chosen once per page rather than value by value (every row
    of a page has the same columns)."""
    email_column = email_field.upper()
    layouts: dict[tuple[Any, ...], _RowLayout] = {}
    out: list[EfficyContact] = []
    for row in rows:
        keys = tuple(row)
        layout = layouts.get(keys)
        if layout is None:
            layout = layouts[keys] = _RowLayout(keys, types, tz)
        values = layout.upper(row)
        contact_id = normalise_key(values.get(ID_FIELD))
        if contact_id is None:
            raise ValueError("Efficy contact row without K_CONTACT")
        fields = {column: read(values[column]) for column, read in layout.readers}
        changed = fields.get(CHANGED_FIELD)
        # what EfficyContact(...) makes, without the frozen dataclass's per-field __init__ (one per row)
        contact = object.__new__(EfficyContact)
        contact.__dict__.update(
            contact_id=contact_id, email=_text(values.get(email_column)),
            first_name=_text(values.get(FIRST_NAME_FIELD)), last_name=_text(values.get(LAST_NAME_FIELD)),
            fields=fields, profile_ids=None, modified_at=changed if isinstance(changed, datetime) else None,
            profile_changed_at={})
        out.append(contact)
    return out


class _RowLayout:
    """One page's columns: their UPPER-CASE names and each column's reader (decided once)."""

    def __init__(self, keys: tuple[Any, ...], types: FieldTypes, tz: tzinfo):
        names = [str(k).upper() for k in keys]
        self._same = all(isinstance(k, str) for k in keys) and names == list(keys) and \
            len(set(names)) == len(names)
        self.readers = [(column, _reader(types.type_of(column), tz))
                        for column in dict.fromkeys(names) if column != ID_FIELD]

    def upper(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        return row if self._same else {str(k).upper(): v for k, v in row.items()}


def _reader(kind: FieldType | None, tz: tzinfo) -> Callable[[Any], FieldValue]:
    """The reader :func:`parse_value` uses for a column of type ``kind``, as one function."""
    if kind == "datetime":
        dates: dict[Any, datetime | None] = {}  # a page repeats dates (the zero date above all)

        def read_datetime(value: Any) -> FieldValue:
            if isinstance(value, str):
                try:
                    return dates[value]
                except KeyError:
                    if len(dates) > 4096:
                        dates.clear()
                    parsed = dates[value] = parse_datetime(value, tz=tz)
                    return parsed
            return parse_datetime(value, tz=tz)
        return read_datetime
    if kind == "flag":
        return parse_flag
    if kind in ("int", "float"):
        number_kind: Literal["int", "float"] = "int" if kind == "int" else "float"

        def read_number(value: Any) -> FieldValue:
            number = parse_number(value, number_kind)
            if number is None and value not in (None, ""):
                return str(value)
            return number
        return read_number
    if kind == "str":
        return lambda value: None if value is None else str(value)

    seen_dates: dict[str, datetime | None] = {}  # untyped date columns repeat too (zero dates above all)

    def read_untyped(value: Any) -> FieldValue:
        if type(value) is str:
            if not value:
                return None  # an empty cell (what the steps below give it)
            if not (value[0].isdigit() or value[0].isspace()):
                return value  # the usual text value, tested first: what the steps below give it
        if value is None or isinstance(value, bool | int | float):
            return value
        text = value if type(value) is str else str(value)
        if text == "":
            return None
        if not (text[0].isdigit() or text[0].isspace()):
            return text  # cannot be a date (_DATE_RE starts with a digit, after optional spaces)
        if _DATE_RE.match(text.strip()):
            try:
                return seen_dates[text]
            except KeyError:
                if len(seen_dates) > 4096:
                    seen_dates.clear()
                parsed = seen_dates[text] = parse_datetime(text, tz=tz)  # None for the zero date
                return parsed
        return text
    return read_untyped


def profile_from_row(row: Mapping[str, Any], *, key_field: str = "K_PROFILE",
                     name_field: str = "NAME") -> EfficyProfile | None:
    """A CRM Profile from a detail/SQL row; ``None`` when the row carries no profile key."""
    upper = {str(k).upper(): v for k, v in row.items()}
    key = normalise_key(upper.get(key_field.upper()))
    if key is None:
        return None
    return EfficyProfile(key, _text(upper.get(name_field.upper())) or "")
