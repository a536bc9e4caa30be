"""Phone numbers as APSIS takes them (E.164), read with ``phonenumbers``. Pure functions, no I/O.

:func:`normalise_phone` is ``phonenumbers.parse`` + ``is_valid_number`` + E.164 formatting. ``parse`` is
lenient (punctuation, IDD prefixes, extensions, vanity letters, RFC 3966) and costs about 40 us a number, most
of it in steps that leave an already-international ``+<digits>`` number as it is; a full sync validates one
number per contact, so that form takes a short path: the same library steps that do change such a number
(country code, national prefix, length checks, leading zeros), in the same order, with the same metadata.
Every other form, and any number the short path cannot settle, goes through ``parse`` itself; a test
compares both paths over numbers of every country calling code. If a ``phonenumbers`` release drops one of
the helpers used, the short path switches itself off.
"""

from __future__ import annotations

import re
from typing import Any

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumber, PhoneNumberFormat

_util = phonenumbers.phonenumberutil
try:  # helpers of parse() itself: the short path must do exactly what parse does
    _strip_national_prefix = _util._maybe_strip_national_prefix_carrier_code
    _test_number_length = _util._test_number_length
    _set_leading_zeros = _util._set_italian_leading_zeros_for_phone_number
    _NOT_POSSIBLE = (_util.ValidationResult.TOO_SHORT, _util.ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
                     _util.ValidationResult.INVALID_LENGTH)
    _MIN_NSN, _MAX_NSN = _util._MIN_LENGTH_FOR_NSN, _util._MAX_LENGTH_FOR_NSN
    _MAX_CC, _MAX_INPUT = _util._MAX_LENGTH_COUNTRY_CODE, _util._MAX_INPUT_STRING_LENGTH
    SHORT_PATH = True
except AttributeError:  # pragma: no cover - another phonenumbers layout
    SHORT_PATH = False

#: "+" and ASCII digits only, not starting with 0 (a "+0…" number goes back through parse's IDD retry).
_INTERNATIONAL = re.compile(r"\+([1-9][0-9]{2,})")


def normalise_phone(value: Any, region: str | None) -> str | None:
    """A phone number in E.164 (``+32470123456``), read in ``region`` when it is in national form; None
    when it is not a valid number."""
    if isinstance(value, bool) or value is None:
        return None
    text = f"+{value}" if isinstance(value, int) else str(value).strip()
    if not text:
        return None
    if SHORT_PATH:
        number = _parse_international(text, region)
        if number is not None:
            return _valid_e164(number)
    return parse_phone(text, region)


def parse_phone(text: str, region: str | None) -> str | None:
    """:func:`normalise_phone` through ``phonenumbers.parse`` alone (every form of number)."""
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    return _valid_e164(number)


def _valid_e164(number: PhoneNumber) -> str | None:
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def _parse_international(text: str, region: str | None) -> PhoneNumber | None:
    """What ``phonenumbers.parse(text, region)`` returns for ``+<digits>``, or None when this path does not
    settle it (another form, an unknown country code, a parse error: the caller runs ``parse`` then)."""
    match = _INTERNATIONAL.fullmatch(text)
    if match is None or len(text) > _MAX_INPUT:
        return None
    digits = match.group(1)
    # the country calling code: the shortest known prefix of up to three digits
    for size in range(1, min(len(digits), _MAX_CC) + 1):
        country_code = int(digits[:size])
        if country_code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            break
    else:
        return None
    national = digits[size:]
    number_region = phonenumbers.region_code_for_country_code(country_code)
    if number_region != region:
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(country_code, number_region)
    else:
        metadata = PhoneMetadata.metadata_for_region(region.upper(), None) if region is not None else None
    if len(national) < _MIN_NSN:
        return None
    if metadata is not None:
        _, potential, _ = _strip_national_prefix(national, metadata)
        if _test_number_length(potential, metadata) not in _NOT_POSSIBLE:
            national = potential
    if not _MIN_NSN <= len(national) <= _MAX_NSN:
        return None
    number = PhoneNumber(country_code=country_code)
    _set_leading_zeros(national, number)
    number.national_number = int(national)
    return number
