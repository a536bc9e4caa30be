"""Parsing and verifying Efficy's two push forms."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime

import pytest

from crmsync.connectors.efficy.webhooks import (
    ContactChange,
    WebhookPayloadError,
    WebhookSignatureError,
    WebhookTooLargeError,
    parse_contract_webhook,
    parse_native_webhook,
    sign_contract_body,
    verify_shared_headers,
)

SECRET = "whsec-3c1f"


def native(*records: dict[str, object]) -> bytes:
    return json.dumps({"database": "EFFICY_PROD", "version": "12.0.1", "records": list(records)}).encode()


def test_native_contacts_only_in_order() -> None:
    body = native(
        {"table": 11000, "key": 12345, "operation": "Update", "user": "JDO", "subject": "Doe Jane",
         "fields": {"EMAIL1": "new@x.be"}, "date": "2024-03-14T09:00:00Z"},
        {"table": 10000, "key": 7, "operation": "Update", "fields": {}, "date": "2024-03-14T09:00:00Z"},
        {"table": "11000", "key": "12346", "operation": "Create"},
        {"table": 11000, "key": 99, "operation": "delete", "date": "1899-12-30T00:00:00"},
    )
    assert parse_native_webhook(body) == [
        ContactChange("12345", "updated", datetime(2024, 3, 14, 9, tzinfo=UTC)),
        ContactChange("12346", "created", None),
        ContactChange("99", "deleted", None),
    ]
    assert parse_native_webhook(native()) == []
    assert parse_native_webhook(json.loads(body))[0].as_dict() == {
        "contact_id": "12345", "operation": "updated", "changed_at": "2024-03-14T09:00:00+00:00"}


@pytest.mark.parametrize(("body", "message"), [
    (b"{not json", "not valid JSON"),
    (b"[]", "JSON object"),
    (b'{"database":"X"}', "no 'records' list"),
    (b'{"records":{"table":11000}}', "no 'records' list"),
    (b'{"records":[42]}', r"records\[0\] is not an object"),
    (b'{"records":[{"table":"Cont","key":1,"operation":"Update"}]}', "table number"),
    (b'{"records":[{"table":11000,"operation":"Update"}]}', "has no key"),
    (b'{"records":[{"table":11000,"key":1,"operation":"Merge"}]}', "'Merge'"),
])
def test_native_malformed(body: bytes, message: str) -> None:
    with pytest.raises(WebhookPayloadError, match=message):
        parse_native_webhook(body)


def test_shared_headers() -> None:
    verify_shared_headers({"x-efficy-token": "abc"}, {"X-Efficy-Token": "abc"})
    for headers in ({}, {"x-efficy-token": "abd"}):
        with pytest.raises(WebhookSignatureError) as info:
            verify_shared_headers(headers, {"X-Efficy-Token": "abc"})
        assert "abc" not in str(info.value)


def contract(items: list[dict[str, object]]) -> tuple[bytes, str]:
    body = json.dumps(items).encode()
    return body, sign_contract_body(body, SECRET)


def test_signature_is_hmac_sha256_hex_of_raw_body() -> None:
    body = b'[{"record_id":"1","operation":"created"}]'
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert sign_contract_body(body, SECRET) == expected


def test_contract_records_and_consents() -> None:
    body, signature = contract([
        {"record_id": "12345", "operation": "created"},
        {"record_id": 12346, "operation": "updated"},
        {"record_id": "99", "operation": "deleted"},
        {"record_id": "12345", "consent_base_id": "1", "has_consented": False},
    ])
    assert parse_contract_webhook(body, signature=signature, secret=SECRET) == [
        ContactChange("12345", "created"), ContactChange("12346", "updated"), ContactChange("99", "deleted"),
        ContactChange("12345", "updated"),
    ]
    upper = "sha256=" + signature.removeprefix("sha256=").upper()
    assert len(parse_contract_webhook(body, signature=upper, secret=SECRET)) == 4


def test_contract_bad_signatures() -> None:
    body, signature = contract([{"record_id": "1", "operation": "created"}])
    cases = [
        (body, None),
        (body, signature.removeprefix("sha256=")),
        (body, sign_contract_body(body, "other-secret")),
        (body.replace(b'"1"', b'"2"'), signature),  # tampered body
    ]
    for raw, sig in cases:
        with pytest.raises(WebhookSignatureError) as info:
            parse_contract_webhook(raw, signature=sig, secret=SECRET)
        assert SECRET not in str(info.value)


def test_contract_without_secret_skips_verification() -> None:
    body = b'[{"record_id":"1","operation":"updated"}]'
    assert parse_contract_webhook(body, signature=None, secret=None) == [ContactChange("1", "updated")]


@pytest.mark.parametrize(("items", "message"), [
    ({"record_id": "1"}, "JSON array"),
    ([1], r"item \[0\] is not an object"),
    ([{"operation": "created"}], "no record_id"),
    ([{"record_id": "1", "operation": "merged"}], "'merged'"),
    ([{"record_id": "1", "consent_base_id": "2", "has_consented": "no"}], "has_consented"),
])
def test_contract_malformed(items: object, message: str) -> None:
    body = json.dumps(items).encode()
    with pytest.raises(WebhookPayloadError, match=message):
        parse_contract_webhook(body, signature=sign_contract_body(body, SECRET), secret=SECRET)


def test_contract_more_than_200_items() -> None:
    body, signature = contract([{"record_id": str(i), "operation": "updated"} for i in range(201)])
    with pytest.raises(WebhookTooLargeError):
        parse_contract_webhook(body, signature=signature, secret=SECRET)
    body, signature = contract([{"record_id": str(i), "operation": "updated"} for i in range(1, 201)])
    assert len(parse_contract_webhook(body, signature=signature, secret=SECRET)) == 200
