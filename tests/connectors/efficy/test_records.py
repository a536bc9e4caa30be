"""Typed reading of Efficy rows: zero dates, string flags, numbers, keys; and the envelope helpers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crmsync.connectors.efficy.envelope import dataset, find_error, normalise_key
from crmsync.connectors.efficy.paging import decode_position, encode_position
from crmsync.connectors.efficy.records import (
    EfficyContact,
    FieldTypes,
    contact_from_row,
    contacts_from_rows,
    normalise_profile_ids,
    parse_datetime,
    parse_flag,
    parse_number,
    parse_value,
)


@pytest.mark.parametrize("value", ["1899-12-30", "1899-12-30T00:00:00", "1899-12-30 00:00:00",
                                   "1899-12-30T00:00:00Z", "", None, "not a date", "  "])
def test_zero_and_empty_dates_read_as_none(value: object) -> None:
    assert parse_datetime(value) is None


def test_dates_are_timezone_aware() -> None:
    assert parse_datetime("2024-03-14T09:00:00") == datetime(2024, 3, 14, 9, tzinfo=UTC)
    assert parse_datetime("2024-03-14T09:00:00Z") == datetime(2024, 3, 14, 9, tzinfo=UTC)
    assert parse_datetime("2024-03-14 09:00") == datetime(2024, 3, 14, 9, tzinfo=UTC)
    brussels_winter = timezone(timedelta(hours=1))
    assert parse_datetime("2024-03-14T09:00:00", tz=brussels_winter) == datetime(2024, 3, 14, 8, tzinfo=UTC)


@pytest.mark.parametrize(("value", "expected"), [
    ("1", True), ("0", False), ("T", True), ("F", False), ("t", True), ("f", False), (True, True),
    (False, False), (1, True), (0, False), ("", False), (None, None), ("maybe", None),
])
def test_flags(value: object, expected: bool | None) -> None:
    assert parse_flag(value) is expected


def test_numbers() -> None:
    assert parse_number("12") == 12 and isinstance(parse_number("12"), int)
    assert parse_number("12.0") == 12 and isinstance(parse_number("12.0"), int)
    assert parse_number("1,5", "float") == 1.5
    assert parse_number("") is None and parse_number("abc") is None and parse_number(True) is None


def test_value_typing_by_column() -> None:
    assert parse_value("K_COMPANY", "56") == 56
    assert parse_value("K_RELATION", "56_865114542") == "56_865114542"  # composite relation key
    assert parse_value("D_CREATE", "1899-12-30T00:00:00") is None
    assert parse_value("OPENED", "0") is False
    assert parse_value("MOBILE", "+32470000000") == "+32470000000"
    assert parse_value("POSTCODE", "01234") == "01234"  # never guessed into a number
    assert parse_value("BIRTHDATE", "1899-12-30T00:00:00") is None  # custom date column, no D_ prefix
    assert parse_value("BIRTHDATE", "1980-05-01T00:00:00") == datetime(1980, 5, 1, tzinfo=UTC)
    assert parse_value("CITY", "") is None
    assert parse_value("SCORE", 7) == 7
    types = FieldTypes(flags=frozenset({"OPENED", "ROBINSON"}), overrides={"SCORE": "float", "CODE": "str"})
    assert parse_value("ROBINSON", "T", types=types) is True
    assert parse_value("SCORE", "7", types=types) == 7.0
    assert parse_value("CODE", "0012", types=types) == "0012"


def test_contact_from_row() -> None:
    row = {"K_CONTACT": "12345", "NAME": "Doe", "FIRSTNAME": " Jane ", "EMAIL1": "", "OPENED": "1",
           "D_CHANGE": "2024-03-14T09:00:00", "D_CREATE": "1899-12-30T00:00:00", "K_COMPANY": "7"}
    contact = contact_from_row(row, profile_ids=[12, "3", 3.0])
    assert contact.contact_id == "12345"
    assert (contact.first_name, contact.last_name, contact.email) == ("Jane", "Doe", None)
    assert contact.fields == {"NAME": "Doe", "FIRSTNAME": " Jane ", "EMAIL1": None, "OPENED": True,
                              "D_CHANGE": datetime(2024, 3, 14, 9, tzinfo=UTC), "D_CREATE": None,
                              "K_COMPANY": 7}
    assert contact.profile_ids == ("3", "12")
    assert contact.modified_at == datetime(2024, 3, 14, 9, tzinfo=UTC)
    assert contact_from_row({"k_contact": 12345.0}).contact_id == "12345"
    assert contact_from_row({"K_CONTACT": 1}).profile_ids is None  # not loaded, unlike "none"
    with pytest.raises(ValueError, match="K_CONTACT"):
        contact_from_row({"NAME": "x"})


def test_page_of_rows_is_typed_exactly_like_row_by_row() -> None:
    """The client types a page at once (column readers decided once per page): every contact, field, type
    and field order must equal what contact_from_row gives each row alone, whatever the columns."""
    types = FieldTypes(flags=frozenset({"OPENED", "ROBINSON"}), overrides={"SCORE": "float", "CODE": "str"})
    tz = timezone(timedelta(hours=2))
    values = ["1899-12-30T00:00:00", "2024-03-14T09:00:00", " 2024-03-14 ", "2024-03-14T09:00:00Z", "", "  ",
              None, True, False, 0, 1, 3.5, "0", "1", "T", "F", "0470123456", "01234", "+32470123456",
              "56_865114542", "1,5", "abc", "2024-13-45", "12", "Zoë", "\u0662\u0660\u0662\u0664-01-01"]
    columns = ["K_CONTACT", "NAME", "FIRSTNAME", "EMAIL1", "OPENED", "ROBINSON", "D_CHANGE", "D_CREATE",
               "BIRTHDATE", "K_COMPANY", "SCORE", "CODE", "POSTCODE", "MOBILE", "CUSTOM"]
    rows: list[dict[str, object]] = []
    for i in range(len(values) * 2):
        row: dict[str, object] = {c: values[(i + j) % len(values)] for j, c in enumerate(columns)}
        row["K_CONTACT"] = str(100 + i) if i % 2 else 100 + i
        rows.append(row)
    rows.append({"k_contact": 7, "Name": " Ann ", "d_change": "2024-01-02T03:04:05", "email1": "a@b.c"})
    rows.append({"K_CONTACT": 8, "name": "first", "NAME": "second", "Opened": "T"})  # the last wins
    rows.append(rows[0])  # the first layout again, after others
    expected = [contact_from_row(r, types=types, tz=tz) for r in rows]
    got = contacts_from_rows(rows, types=types, tz=tz)
    assert got == expected
    assert [list(c.fields) for c in got] == [list(c.fields) for c in expected]
    assert [[type(v) for v in c.fields.values()] for c in got] == \
        [[type(v) for v in c.fields.values()] for c in expected]
    with pytest.raises(ValueError, match="K_CONTACT"):
        contacts_from_rows([{"NAME": "no key"}])


def test_contacts_compare_by_value() -> None:
    a = contact_from_row({"K_CONTACT": 1, "NAME": "x"}, [2, 1])
    b = contact_from_row({"K_CONTACT": "1", "NAME": "x"}, ["1", "2"])
    assert a == b
    assert isinstance(hash(a), int)
    assert a.with_profiles([]) != a
    assert isinstance(a, EfficyContact)


def test_normalise_key() -> None:
    assert normalise_key(12345) == "12345"
    assert normalise_key("12345") == "12345"
    assert normalise_key(12345.0) == "12345"
    assert normalise_key("56_865114542") == "56_865114542"
    assert normalise_key("") is None and normalise_key(None) is None


def test_find_error_forms() -> None:
    assert find_error([{"@name": "api", "@func": [{"@name": "x", "#result": 1}]}]) is None
    flag = find_error([{"@name": "api", "@func": [{"@name": "x", "#error": True, "#message": "Nope"}]}])
    assert flag is not None and flag.message == "Nope" and flag.where == "function"
    u = find_error([{"#error": {"code": 12, "message": "Bad", "detail": "field X"}}])
    assert u is not None and u.message == "Bad (field X)" and u.code == "12"
    top = find_error({"error": True, "code": 3, "message": "Top"})
    assert top is not None and top.message == "Top" and top.code == "3"
    assert find_error([{"@name": "api", "#error": False, "@func": []}]) is None


def test_dataset_search_tolerates_nesting_and_the_efficy_u_variant() -> None:
    nested = {"@name": "query", "#result": {"wrap": [{"#class": "dataset", "#data": [{"A": 1}]}]}}
    assert dataset(nested) == [{"A": 1}]
    bug = {"@name": "query", "#result": {"#class": "dataset", "#data": {"data": [{"A": 2}]}}}
    assert dataset(bug) == [{"A": 2}]
    assert dataset({"@name": "query"}) == []


def test_positions_round_trip_and_reject_garbage() -> None:
    assert decode_position(None) == 0
    assert decode_position(encode_position(10042)) == 10042
    for bad in ("10042", "efficy-k1:abc", "efficy-k1:-5", "other:1"):
        with pytest.raises(ValueError):
            decode_position(bad)


# -- a contact with its CRM Profiles: the same value as one built whole -----------------------------------

_keys = st.sampled_from(["3", "10", "2", " 7 ", "", "x", "1e3", "1_0"]) | st.integers(-3, 12) | st.sampled_from(
    [2.0, 2.5, None, True])
_when = st.none() | st.sampled_from([datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 6, 1, tzinfo=UTC)])


def _reference_ids(profile_ids: list[object]) -> tuple[str, ...]:
    """The definition: every key normalised, unique, in numeric order (shorter first, then by text)."""
    keys = {normalise_key(p) for p in profile_ids} - {None}
    return tuple(sorted((k for k in keys if k is not None), key=lambda k: (len(k), k)))


@settings(max_examples=300, deadline=None)
@given(st.lists(_keys, max_size=5), st.dictionaries(_keys, _when, max_size=4), st.booleans())
def test_with_profiles_is_the_contact_built_with_them(profile_ids: list[object],
                                                      changed_at: dict[object, datetime | None],
                                                      modified: bool) -> None:
    base = EfficyContact("42", "a@example.com", "Jane", None, {"NAME": "Doe"}, ("9",),
                         datetime(2024, 5, 1, tzinfo=UTC) if modified else None, {"9": datetime(2020, 1, 1)})
    ids = _reference_ids(profile_ids)
    assert normalise_profile_ids(profile_ids) == ids
    times = {}
    for key, when in changed_at.items():
        pid = normalise_key(key)
        if pid is not None and pid in ids and when is not None:
            times[pid] = when
    got = base.with_profiles(profile_ids, changed_at)
    want = EfficyContact(base.contact_id, base.email, base.first_name, base.last_name, base.fields, ids,
                         base.modified_at, times)
    assert got == want and hash(got) == hash(want) and repr(got) == repr(want)
    assert type(got.profile_ids) is tuple and base.profile_ids == ("9",)  # the original is left as it was


# -- fast paths hold their definitions -----------------------------------------------------------------------

def _normalise_key_definition(value: object) -> str | None:
    """normalise_key as first written (every value through the same steps): the reference."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text or None
    return str(int(number)) if number.is_integer() and "_" not in text else text


_key_values = (st.integers() | st.text(alphabet=st.sampled_from([*"0123456789", " ", "_", "-", "+", ".", "e",
                                                                  "\u0662", "\u00b2", "x"]), max_size=20)
               | st.integers(min_value=0).map(str) | st.integers(min_value=0).map(lambda i: "0" + str(i))
               | st.floats(allow_nan=False, allow_infinity=False) | st.booleans() | st.none()
               | st.from_regex(r"\A[0-9]{1,20}\Z") | st.text(max_size=20))


@settings(max_examples=1000, deadline=None)
@given(_key_values)
def test_normalise_key_is_its_definition(value: object) -> None:
    assert normalise_key(value) == _normalise_key_definition(value)


_cell_values = st.sampled_from(["1899-12-30T00:00:00", "2024-03-14T09:00:00", " 2024-03-14 ", "2024-03-14",
                                "2024-13-45", "2024-03-14T09:00:00Z", "", "  ", "12", "abc", "0470", None, 3,
                                2.5, True])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.fixed_dictionaries({"BIRTHDATE": _cell_values, "CUSTOM": _cell_values, "NAME": _cell_values,
                                       "D_CHANGE": _cell_values}), min_size=1, max_size=8))
def test_a_page_with_repeated_untyped_dates_is_typed_like_row_by_row(cells: list[dict[str, object]]) -> None:
    rows = [{"K_CONTACT": 100 + i, **row} for i, row in enumerate(cells)]
    tz = timezone(timedelta(hours=-3))
    expected = [contact_from_row(r, tz=tz) for r in rows]
    got = contacts_from_rows(rows, tz=tz)
    assert got == expected
    assert [[type(v) for v in c.fields.values()] for c in got] == \
        [[type(v) for v in c.fields.values()] for c in expected]
