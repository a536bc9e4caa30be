"""Pure translations: opt-in codes, phones, CSV rows, person JSON, match candidates, export-job shapes."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from crmsync.connectors.everyaction.exports import (
    export_job_body,
    format_van_datetime,
    parse_export_job,
)
from crmsync.connectors.everyaction.records import (
    MatchCombination,
    OptInStatus,
    candidate_combinations,
    identifier_update,
    match_candidate,
    normalize_us_phone,
    opt_in_code,
    opt_in_from_code,
    opt_in_from_export,
    opt_in_from_word,
    parse_contacts_csv,
    parse_person,
    phone_opt_in_update,
    sniff_delimiter,
    van_phone,
)

# -- opt-in codes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "code"), [(OptInStatus.OPT_IN, "I"), (OptInStatus.UNKNOWN, "U"),
                                              (OptInStatus.OPT_OUT, "O")])
def test_opt_in_codes_round_trip(status: OptInStatus, code: str) -> None:
    assert opt_in_code(status) == code
    assert opt_in_from_code(code) == status
    assert opt_in_from_code(code.lower()) == status


def test_opt_in_from_code_rejects_words() -> None:
    with pytest.raises(ValueError):
        opt_in_from_code("Opt-Out")


@pytest.mark.parametrize(("word", "expected"), [
    ("Unknown", OptInStatus.UNKNOWN), ("Opt-In", OptInStatus.OPT_IN), ("OptIn", OptInStatus.OPT_IN),
    ("Opted In", OptInStatus.OPT_IN), ("Opt-Out", OptInStatus.OPT_OUT), ("opted out", OptInStatus.OPT_OUT),
    ("O", OptInStatus.OPT_OUT), (None, None), ("", None), ("Maybe", None),
])
def test_opt_in_from_word(word: str | None, expected: OptInStatus | None) -> None:
    assert opt_in_from_word(word) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("1", OptInStatus.OPT_IN), ("1.0", OptInStatus.OPT_IN), (1.0, OptInStatus.OPT_IN),
    ("2", OptInStatus.UNKNOWN), (3, OptInStatus.OPT_OUT), (" 3.0 ", OptInStatus.OPT_OUT),
    ("", None), (None, None), ("4", None), ("1.5", None), ("0", None),
])
def test_opt_in_from_export_numeric(value: object, expected: OptInStatus | None) -> None:
    assert opt_in_from_export(value) == expected  # type: ignore[arg-type]


# -- phones ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    ("4142020792", "+14142020792"),          # VAN's 10 digits
    ("14142020792", "+14142020792"),         # Mobile Commons' 11 digits
    ("(414) 202-0792", "+14142020792"),
    ("+1 414.202.0792 ext. 12", "+14142020792"),
    (" +14142020792 ", "+14142020792"),
    ("8005550100", "+18005550100"),          # toll-free is still a US number
    ("4165550123", None),                    # Toronto: NANP, but not US
    ("+442071838750", None),
    ("5558889999", None),                    # 555 is not an area code
    ("123", None), ("", None), ("   ", None), (None, None), ("not a phone", None),
])
def test_normalize_us_phone(raw: str | None, expected: str | None) -> None:
    assert normalize_us_phone(raw) == expected


def test_van_phone_is_ten_digits() -> None:
    assert van_phone("+14142020792") == "4142020792"
    for bad in ("4142020792", "+442071838750", "+1414202079"):
        with pytest.raises(ValueError):
            van_phone(bad)


# -- CSV ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("VanID\tFirstName\tPhone\n1\tAnn, Jr\t4142020792\n", "\t"),
    ("VanID,FirstName,Phone\r\n1,\"Ann\tX\",4142020792\r\n", ","),
    ("VanID;FirstName\n1;Ann\n", ";"),
    ("\ufeffVanID|FirstName\n1|Ann\n", "|"),
    ("VanID\n1\n", ","),
])
def test_sniff_delimiter_uses_header(text: str, expected: str) -> None:
    assert sniff_delimiter(text) == expected


def test_parse_contacts_csv_tab_float_codes_and_oddities() -> None:
    text = ("\ufeffVanID\tFirstName\tLastName\tPhone\tPhoneOptInStatus\tDateCreated\tEmail\r\n"
            "101\tAnn\tLee\t4142020792\t1.0\t2024-05-06\tann@example.org\r\n"
            "\t\t\t\t\t\t\r\n"
            "102\tBo\tKim\t555\t3\t05/07/2024\t\r\n"
            "oops\tNo\tId\t\t\t\t\r\n"
            "103\tCy\tDo\t\t\t\t\r\n")
    rows = parse_contacts_csv(text)
    assert [r.van_id for r in rows] == [101, 102, 103]
    ann, bo, cy = rows
    assert ann.phone == "+14142020792" and ann.phone_opt_in is OptInStatus.OPT_IN
    assert ann.date_created == date(2024, 5, 6) and ann.email == "ann@example.org"
    assert bo.phone is None and bo.phone_opt_in is OptInStatus.OPT_OUT and bo.date_created == date(2024, 5, 7)
    assert cy.phone is None and cy.phone_opt_in is None and cy.email is None


def test_parse_contacts_csv_comma_with_quoted_commas() -> None:
    rows = parse_contacts_csv('VanID,FirstName,LastName,PhoneOptInStatus\n7,"Smith, Jr",Q,2\n')
    assert rows[0].first_name == "Smith, Jr" and rows[0].phone_opt_in is OptInStatus.UNKNOWN


def test_parse_contacts_csv_empty() -> None:
    assert parse_contacts_csv("") == []
    assert parse_contacts_csv("VanID,FirstName\r\n") == []


# -- person JSON -------------------------------------------------------------------------------------------

FIXTURE = {  # condensed from the public recorded fixture quoted in the research (A3.1)
    "vanId": 19722445, "firstName": "Bob", "lastName": "Smith", "middleName": None,
    "emails": [{"type": None, "email": "jim@example.org", "isPreferred": True}],
    "phones": [{"phoneId": 15406767, "phoneNumber": "4142020792", "ext": None, "phoneType": "Cell",
                "isPreferred": True, "smsOptInStatus": "Unknown", "phoneOptInStatus": "Unknown",
                "isCellStatus": {"statusId": 1, "statusName": "Verified Cell"}}],
    "addresses": [{"addressId": None, "addressLine1": "900 N Washtenaw Ave", "city": "Chicago",
                   "stateOrProvince": "IL", "zipOrPostalCode": "60622-4455", "type": "Voting",
                   "isPreferred": True}],
    "identifiers": [{"type": "StateFileID", "externalId": "KLYW682Z"}],
    "codes": None, "scores": None,
}


def test_parse_person_expanded() -> None:
    person = parse_person(FIXTURE)
    assert person.van_id == 19722445 and person.first_name == "Bob"
    assert person.preferred_email == "jim@example.org"
    phone = person.preferred_phone
    assert phone is not None and phone.e164 == "+14142020792" and phone.is_mobile
    assert phone.effective_opt_in is OptInStatus.UNKNOWN
    assert person.phone("1 (414) 202-0792") == phone
    assert person.identifier("statefileid") == "KLYW682Z"
    assert person.preferred_address is not None and person.preferred_address.zip == "60622-4455"


def test_parse_person_null_collections_are_not_empty() -> None:
    person = parse_person({**FIXTURE, "emails": None, "phones": None, "addresses": None, "identifiers": None})
    assert person.phones is None and person.emails is None and person.identifiers is None
    assert person.preferred_phone is None
    empty = parse_person({**FIXTURE, "phones": []})
    assert empty.phones == ()


def test_parse_person_requires_van_id() -> None:
    with pytest.raises(ValueError):
        parse_person({"firstName": "x"})


# -- match candidates and payloads -------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "combos"), [
    ({"email": "a@b.org"}, {MatchCombination.EMAIL}),
    ({"first_name": "A", "last_name": "B", "email": "a@b.org"},
     {MatchCombination.EMAIL, MatchCombination.NAME_EMAIL}),
    ({"first_name": "A", "last_name": "B", "phone": "4142020792"}, {MatchCombination.NAME_PHONE}),
    ({"first_name": "A", "last_name": "B", "zip": "60622-4455", "date_of_birth": date(1975, 9, 18)},
     {MatchCombination.NAME_ZIP_DOB}),
    ({"first_name": "A", "last_name": "B", "zip": "60622", "address_line1": "900 N Washtenaw Ave"},
     {MatchCombination.NAME_STREET_ZIP}),
    ({"first_name": "A", "last_name": "B"}, set()),
    ({"first_name": "A", "phone": "4142020792"}, set()),
    ({"first_name": "A", "last_name": "B", "zip": "60622", "address_line1": "Washtenaw Ave"}, set()),
    ({"first_name": "A", "last_name": "B", "zip": "606", "date_of_birth": "1975-09-18"}, set()),
])
def test_minimum_match_combinations(kwargs: dict[str, object], combos: set[MatchCombination]) -> None:
    candidate = match_candidate(**kwargs)  # type: ignore[arg-type]
    assert set(candidate.combinations()) == combos
    assert candidate.can_match == bool(combos)


def test_candidate_json_uses_codes_and_ten_digits() -> None:
    body = match_candidate(first_name="Ann", last_name="Lee", phone="+1 414 202 0792",
                           phone_opt_in=OptInStatus.OPT_IN, email="ann@example.org").to_json()
    assert body["phones"] == [{"phoneNumber": "4142020792", "phoneType": "C", "phoneOptInStatus": "I"}]
    assert body["emails"] == [{"email": "ann@example.org"}]
    assert "addresses" not in body and "vanId" not in body
    assert candidate_combinations(body)


def test_candidate_refuses_invalid_phone_without_echoing_it() -> None:
    with pytest.raises(ValueError) as info:
        match_candidate(first_name="A", last_name="B", phone="4165550123")
    assert "4165550123" not in str(info.value) and "0123" in str(info.value)


def test_update_payloads() -> None:
    assert phone_opt_in_update("+14142020792", OptInStatus.OPT_OUT) == {
        "phones": [{"phoneNumber": "4142020792", "phoneOptInStatus": "O"}]}
    assert phone_opt_in_update("+14142020792", OptInStatus.OPT_IN, phone_type="c")["phones"][0]["phoneType"] == "C"
    assert identifier_update("mobilecommonsid", "42") == {"identifiers": [{"type": "mobilecommonsid",
                                                                           "externalId": "42"}]}
    with pytest.raises(ValueError):
        identifier_update(" ", "42")


# -- export jobs -------------------------------------------------------------------------------------------


def test_export_dates_need_timezones() -> None:
    assert format_van_datetime(datetime(2021, 10, 10, 0, 0, 0, 123, tzinfo=timezone(timedelta(hours=-4)))) \
        == "2021-10-10T04:00:00+00:00"
    with pytest.raises(ValueError):
        format_van_datetime(datetime(2021, 10, 10))


def test_export_job_body_validation() -> None:
    since = datetime(2021, 10, 10, tzinfo=UTC)
    body = export_job_body(since=since, until=None, resource_type="Contacts", requested_fields=["VanID"],
                           file_size_kb_limit=None, exclude_changes_from_self=True)
    assert "dateChangedTo" not in body and body["excludeChangesFromSelf"] is True
    with pytest.raises(ValueError):
        export_job_body(since=since, until=since, resource_type="Contacts", requested_fields=[],
                        file_size_kb_limit=None, exclude_changes_from_self=None)
    with pytest.raises(ValueError):
        export_job_body(since=since, until=None, resource_type="Contacts", requested_fields=[],
                        file_size_kb_limit=999, exclude_changes_from_self=None)


def test_parse_complete_job_with_server_offsets() -> None:
    job = parse_export_job({
        "exportJobId": 2170181229, "jobStatus": "Complete", "dateChangedFrom": "2021-10-10T00:00:00-04:00",
        "dateChangedTo": "2021-10-11T00:00:00-04:00", "message": "Finished processing export job", "code": None,
        "exportedRecordCount": 6110,
        "files": [{"downloadUrl": "https://blob.example/a.csv?sig=SECRET",
                   "dateExpired": "2021-11-03T15:27:01.8687339-04:00"},
                  {"downloadUrl": "https://blob.example/b.csv?sig=SECRET", "dateExpired": None}],
    })
    assert job.is_complete and not job.is_failed and len(job.files) == 2
    assert job.date_changed_from == datetime(2021, 10, 10, 4, tzinfo=UTC)
    assert job.files[0].date_expired is not None and job.files[0].date_expired.tzinfo is not None
    assert "SECRET" not in repr(job)
    assert parse_export_job({"exportJobId": 1, "jobStatus": "Error"}).is_failed
