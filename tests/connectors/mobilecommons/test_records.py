"""Pure record functions: timestamps, phones, XML parsing, consent semantics, request builders."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import defusedxml.ElementTree as SafeET
import pytest

from crmsync.connectors.mobilecommons.records import (
    Profile,
    ProfileUpdate,
    Subscription,
    build_opt_out_params,
    build_profile_update_params,
    build_profiles_params,
    format_attribute_timestamp,
    format_element_timestamp,
    is_opted_in,
    last10,
    mc_phone,
    normalize_us_phone,
    parse_campaign,
    parse_profile,
    parse_timestamp,
)

# Shaped like the research sheet's B4.1 profile (element-text and attribute timestamps, padded values).
PROFILE_XML = """<?xml version="1.0" encoding="UTF-8"?>
<response success="true">
  <profiles num="1" page="1">
    <profile id="12345">
      <first_name>James</first_name>
      <last_name>Holden</last_name>
      <phone_number>13075550100</phone_number>
      <email>jh@example.org</email>
      <status>Active subscriber</status>
      <created_at>2022-06-29 17:28:24 UTC</created_at>
      <updated_at>2023-03-14 21:46:58 UTC</updated_at>
      <opted_out_at/>
      <opted_out_source/>
      <source type="Keyword" name="JOIN" id="12345" opt_in_path_id="22233" message_id="1234567"/>
      <address><street1>2430 Douglas Dr</street1><street2/><city>Salt Lake City</city>
               <state>UT</state><postal_code/><country>US</country></address>
      <custom_columns>
        <custom_column name="Birthday"/>
        <custom_column name="Constituent ID" created_at="2022-07-01T15:19:18Z"
          updated_at="2022-07-01T15:19:18Z">
           101234
        </custom_column>
      </custom_columns>
      <subscriptions>
        <subscription campaign_id="22345" campaign_name="Test Campaign" campaign_description=""
          opt_in_path_id="22233" status="Opted-Out" opt_in_source="JOIN" created_at="2022-06-29T17:28:24Z"
          activated_at="2022-06-29T17:28:24Z" opted_out_at="2022-07-01T15:18:59Z"
          opt_out_source="Texted a STOP word"/>
        <subscription campaign_id="555" campaign_name="Other" opt_in_path_id="7" status="Active"
          opt_in_source="Web" created_at="2022-08-01T10:00:00Z" activated_at="2022-08-01T10:00:00Z"
          opted_out_at="" opt_out_source=""/>
      </subscriptions>
      <integrations><integration constituent_id="999" type="EveryAction"
          synchronized_at="2023-01-01T00:00:00Z"/></integrations>
      <clicks></clicks>
    </profile>
  </profiles>
</response>"""


def _profile_el(xml: str = PROFILE_XML):
    return SafeET.fromstring(xml).find("profiles/profile")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2022-06-29 17:28:24 UTC", datetime(2022, 6, 29, 17, 28, 24, tzinfo=UTC)),
        ("2022-06-29T17:28:24Z", datetime(2022, 6, 29, 17, 28, 24, tzinfo=UTC)),
        ("  2022-06-29T17:28:24z \n", datetime(2022, 6, 29, 17, 28, 24, tzinfo=UTC)),
        ("2022-06-29T13:28:24-04:00", datetime(2022, 6, 29, 17, 28, 24, tzinfo=UTC)),
        ("2022-06-29 17:28:24", datetime(2022, 6, 29, 17, 28, 24, tzinfo=UTC)),
        ("2022-06-29", datetime(2022, 6, 29, tzinfo=UTC)),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_parse_timestamp_accepts_both_formats(raw: str | None, expected: datetime | None) -> None:
    value = parse_timestamp(raw)
    assert value == expected
    if value is not None:
        assert value.utcoffset() == timedelta(0)


@pytest.mark.parametrize("raw", ["yesterday", "29/06/2022 17:28", "2022-13-01 00:00:00 UTC"])
def test_parse_timestamp_rejects_garbage(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(raw)


def test_timestamp_formatting_round_trips() -> None:
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-5)))
    assert format_element_timestamp(when) == "2024-01-02 08:04:05 UTC"
    assert format_attribute_timestamp(when) == "2024-01-02T08:04:05Z"
    assert parse_timestamp(format_element_timestamp(when)) == when
    with pytest.raises(ValueError):
        format_element_timestamp(datetime(2024, 1, 2))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("13073997994", "+13073997994"),
        ("3075550100", "+13075550100"),
        ("(307) 555-0100", "+13075550100"),
        ("+1 307.555.0100", "+13075550100"),
        (" 1-307-555-0100 ", "+13075550100"),
        ("555-0100", None),
        ("12345", None),
        ("+44 20 7946 0958", None),
        ("not a phone", None),
        ("", None),
        (None, None),
    ],
)
def test_normalize_us_phone(raw: str | None, expected: str | None) -> None:
    assert normalize_us_phone(raw) == expected


def test_mc_phone_is_eleven_digits() -> None:
    assert mc_phone("+13075550100") == "13075550100"
    assert last10("13075550100") == last10("+1 (307) 555-0100") == "3075550100"
    for bad in ("3075550100", "+442079460958", "+1307555010"):
        with pytest.raises(ValueError):
            mc_phone(bad)


def test_parse_profile_from_fixture_shape() -> None:
    p = parse_profile(_profile_el())
    assert p.id == "12345"
    assert p.phone_number == "+13075550100"
    assert p.raw_phone_number == "13075550100"
    assert (p.first_name, p.last_name, p.email) == ("James", "Holden", "jh@example.org")
    assert (p.street1, p.street2, p.city, p.state, p.postal_code, p.country) == (
        "2430 Douglas Dr", None, "Salt Lake City", "UT", None, "US")
    assert p.created_at == datetime(2022, 6, 29, 17, 28, 24, tzinfo=UTC)
    assert p.updated_at == datetime(2023, 3, 14, 21, 46, 58, tzinfo=UTC)
    assert p.opted_out_at is None and p.opted_out_source is None
    assert p.source is not None and p.source.type == "Keyword" and p.source.opt_in_path_id == "22233"
    # empty custom column dropped, padded value trimmed, and it wins over the integration's id
    assert p.custom_columns == {"Constituent ID": "101234"}
    assert p.constituent_id == "101234"
    assert p.integrations[0].constituent_id == "999"
    old, new = p.subscriptions
    assert old.status == "Opted-Out" and old.opted_out_at == datetime(2022, 7, 1, 15, 18, 59, tzinfo=UTC)
    assert old.opt_out_source == "Texted a STOP word" and not old.active
    assert new.active and new.opted_out_at is None and new.opt_out_source is None


def test_constituent_id_falls_back_to_integration_and_field_is_configurable() -> None:
    p = parse_profile(_profile_el(), constituent_id_field="VAN ID")
    assert p.constituent_id == "999"
    xml = PROFILE_XML.replace("Constituent ID", "VAN ID")
    assert parse_profile(_profile_el(xml), constituent_id_field="VAN ID").constituent_id == "101234"


def test_parse_profile_rejects_missing_phone_and_bad_timestamps() -> None:
    with pytest.raises(ValueError):
        parse_profile(_profile_el(PROFILE_XML.replace("<phone_number>13075550100</phone_number>", "")))
    with pytest.raises(ValueError):
        parse_profile(_profile_el(PROFILE_XML.replace("2023-03-14 21:46:58 UTC", "last tuesday")))


def test_parse_campaign_with_opt_in_paths() -> None:
    el = SafeET.fromstring(
        '<campaign id="7" active="true"><name> Main </name><description/><tags><tag>a</tag><tag/></tags>'
        '<opt_in_paths><opt_in_path id="70" active="false"><name>Web</name><tags/></opt_in_path>'
        "</opt_in_paths></campaign>"
    )
    c = parse_campaign(el)
    assert (c.id, c.name, c.active, c.description, c.tags) == ("7", "Main", True, None, ("a",))
    assert [(p.id, p.name, p.active, p.campaign_id) for p in c.opt_in_paths] == [("70", "Web", False, "7")]


def _profile(status: str | None, *subs: Subscription, opted_out_at: datetime | None = None) -> Profile:
    return Profile(id="1", phone_number="+13075550100", raw_phone_number="13075550100", status=status,
                   subscriptions=subs, opted_out_at=opted_out_at)


ACTIVE = Subscription("10", "C", "100", "Active")
OUT = Subscription("20", "D", "200", "Opted-Out", opted_out_at=datetime(2024, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("Active Subscriber", True),
        ("Active subscriber", True),
        ("  ACTIVE   SUBSCRIBER ", True),
        ("Undeliverable", False),
        ("No Subscriptions", False),
        ("Hard bounce", False),
        ("Texted a STOP word", False),
    ],
)
def test_is_opted_in_profile_status_case_insensitive(status: str, expected: bool) -> None:
    assert is_opted_in(_profile(status, ACTIVE)) is expected


def test_is_opted_in_without_status_falls_back_to_subscriptions_and_opted_out_at() -> None:
    assert is_opted_in(_profile(None, ACTIVE)) is True
    assert is_opted_in(_profile(None, OUT)) is False
    assert is_opted_in(_profile(None, ACTIVE, opted_out_at=datetime(2024, 1, 1, tzinfo=UTC))) is False


def test_is_opted_in_per_campaign() -> None:
    p = _profile("Active Subscriber", ACTIVE, OUT)
    assert is_opted_in(p, "10") is True
    assert is_opted_in(p, "20") is False
    assert is_opted_in(p, "30") is False  # never subscribed
    assert is_opted_in(_profile("Texted a STOP word", ACTIVE), "10") is False
    # "Active" with an opted_out_at stamp is not trusted as active
    odd = Subscription("10", "C", "100", "active", opted_out_at=datetime(2024, 1, 1, tzinfo=UTC))
    assert is_opted_in(_profile("Active Subscriber", odd), "10") is False


def test_build_profile_update_params() -> None:
    update = ProfileUpdate(
        phone_number="(307) 555-0100", email="a@b.org", first_name=" Ann ", street2="", opt_in_path_id="70",
        constituent_id="4242", custom_columns={"Birthday": "1990-01-01"},
    )
    assert build_profile_update_params(update) == {
        "phone_number": "13075550100", "email": "a@b.org", "first_name": "Ann", "street2": "",
        "opt_in_path_id": "70", "Birthday": "1990-01-01", "Constituent ID": "4242",
    }
    assert build_profile_update_params(update, constituent_id_field="VAN ID")["VAN ID"] == "4242"
    with pytest.raises(ValueError):
        build_profile_update_params(ProfileUpdate(phone_number="555-0100"))
    with pytest.raises(ValueError, match="collides"):
        build_profile_update_params(ProfileUpdate(phone_number="3075550100", custom_columns={"email": "x"}))


def test_build_opt_out_params() -> None:
    assert build_opt_out_params("+13075550100") == {"phone_number": "13075550100"}
    assert build_opt_out_params("3075550100", campaign_id="7") == {"phone_number": "13075550100",
                                                                  "campaign_id": "7"}
    with pytest.raises(ValueError):
        build_opt_out_params("3075550100", campaign_id="7", subscription_id="8")


def test_build_profiles_params() -> None:
    params = build_profiles_params(
        updated_from=datetime(2024, 3, 1, 7, 0, tzinfo=timezone(timedelta(hours=-5))),
        updated_to=date(2024, 3, 2), limit=250, page=3,
    )
    assert params["from"] == "2024-03-01 12:00:00 UTC"
    assert params["to"] == "2024-03-02"
    assert (params["limit"], params["page"]) == ("250", "3")
    for bad in (0, 1001):
        with pytest.raises(ValueError):
            build_profiles_params(limit=bad)
