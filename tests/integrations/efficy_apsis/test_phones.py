"""Phone numbers: the short path for ``+<digits>`` gives exactly what phonenumbers.parse gives."""

from __future__ import annotations

import random

import phonenumbers
import pytest

from crmsync.daemon.integrations.efficy_apsis import phones
from crmsync.daemon.integrations.efficy_apsis.phones import normalise_phone, parse_phone

REGIONS = [None, "BE", "US", "IT", "GB", "001", "ZZ", "be"]


def _numbers() -> list[str]:
    rng = random.Random(8)
    out = []
    for code in sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE):
        for length in range(0, 18):
            for _ in range(3):
                lead = rng.choice(["", "0", "00", "1", "9"])
                rest = "".join(rng.choice("0123456789") for _ in range(max(0, length - len(lead))))
                out.append(f"+{code}{lead}{rest}")
        # valid examples of every region of the code, in international form
        for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[code]:
            for kind in (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE):
                example = phonenumbers.example_number_for_type(region, kind)
                if example is not None:
                    national = phonenumbers.national_significant_number(example)
                    out.append(f"+{code}{national}")
                    out.append(f"+{code}0{national}")  # a national prefix left in
    return out


def test_short_path_is_on() -> None:
    assert phones.SHORT_PATH
    assert phones._parse_international("+32470123456", "BE") is not None


@pytest.mark.parametrize("region", REGIONS)
def test_international_numbers_read_exactly_as_phonenumbers_parse_reads_them(region: str | None) -> None:
    numbers = _numbers()
    short = 0
    for text in numbers:
        if phones._parse_international(text, region) is not None:
            short += 1
        assert normalise_phone(text, region) == parse_phone(text, region), text
    assert short > len(numbers) // 2  # the comparison is about the short path, not the fallback


@pytest.mark.parametrize("text", ["0470 12 34 56", "+32 470 12 34 56", "+32-470-123456", "0032470123456",
                                  "+0032470123456", "+32470123456 ext 12", "tel:+32-470-123456",
                                  "+1 800 FLOWERS", "+", "+3", "+32", "", "  ", "abc", "+٣٢٤٧٠١٢٣٤٥٦"])
def test_other_forms_go_through_parse(text: str) -> None:
    for region in REGIONS:
        assert normalise_phone(text, region) == parse_phone(text, region)


def test_ints_bools_and_none() -> None:
    assert normalise_phone(32470123456, None) == "+32470123456"
    assert normalise_phone(True, "BE") is None
    assert normalise_phone(None, "BE") is None
