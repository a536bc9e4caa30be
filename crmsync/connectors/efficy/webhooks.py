"""Parsing and verifying what Efficy pushes to the daemon. Pure functions, no I/O.

Efficy can push contact changes in two forms (research §1.9 and §3):

* **native** Efficy webhooks (Designer → Content Management → WebHooks, table ``SYS_WEBHOOKS``):
  ``{"database", "version", "records": [{"table", "key", "operation": "Create|Update|Delete", "user",
  "subject", "fields", "date"}]}``. ``table`` 11000 is ``Cont``; other tables are ignored (gotcha §9.10:
  webhooks for the wrong entity produced empty profiles). No signature is documented ([U]), so an optional
  shared-header check is offered instead (:func:`verify_shared_headers`).
* the APSIS **generic-connector contract** Efficy 12.1 implements: a JSON array (≤ 200 items) of
  ``{"record_id", "operation": "created|updated|deleted"}`` or consent items
  ``{"record_id", "consent_base_id", "has_consented"}``, signed with
  ``X-Justin-Signature: sha256=<hex HMAC-SHA256(raw body, secret)>`` (verified in APSIS' public
  implementation, so the scheme is fixed here, not a parameter).

Both only say *which* contact changed; the receiver re-reads the contact (with its CRM Profiles) through
the API. A consent item is therefore reported as an ``updated`` event for its contact.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import structlog

from crmsync import jsonlimits
from crmsync.connectors.efficy.records import parse_datetime

log = structlog.get_logger("crmsync.connectors.efficy.webhooks")

Operation = Literal["created", "updated", "deleted"]

CONTACT_TABLE_ID = 11000
SIGNATURE_HEADER = "X-Justin-Signature"
SIGNATURE_PREFIX = "sha256="
MAX_CONTRACT_ITEMS = 200

_NATIVE_OPERATIONS: dict[str, Operation] = {"create": "created", "update": "updated", "delete": "deleted"}
_CONTRACT_OPERATIONS: dict[str, Operation] = {
    "created": "created", "updated": "updated", "deleted": "deleted",
    "create": "created", "update": "updated", "delete": "deleted",
}


class WebhookPayloadError(ValueError):
    """The pushed body is not a well-formed Efficy webhook (answer 400; resending will not help)."""


class WebhookSignatureError(WebhookPayloadError):
    """The signature (or shared header) is missing or wrong (answer 401)."""


class WebhookTooLargeError(WebhookPayloadError):
    """A contract batch with more than 200 items (the contract's receiver answers 413)."""


@dataclass(frozen=True)
class ContactChange:
    """One contact that changed: re-read it (or drop it locally when ``deleted``)."""

    contact_id: str
    operation: Operation
    changed_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"contact_id": self.contact_id, "operation": self.operation,
                "changed_at": self.changed_at.isoformat() if self.changed_at else None}


def _load(body: bytes | str | Any) -> Any:
    if isinstance(body, bytes | bytearray | str):
        try:
            return jsonlimits.loads(body)
        except ValueError as exc:  # malformed, nested too deep, NaN/Infinity, not UTF-8
            raise WebhookPayloadError(f"webhook body is not valid JSON: {exc}") from None
    return body


# Efficy keys are positive integers (K_CONTACT); 18 digits stay inside a signed 64-bit integer.
MAX_KEY_DIGITS = 18
_KEY_TEXT = re.compile(rf"[0-9]{{1,{MAX_KEY_DIGITS}}}", re.ASCII)
_MAX_EXACT_FLOAT = 2 ** 53


def contact_key(value: Any, where: str) -> str:
    """The contact key of a pushed record as its decimal string, or :class:`WebhookPayloadError`.

    A key is a positive integer of at most 18 digits, or its decimal ASCII string; an integral float is
    taken too (SDKs parseFloat keys). Anything else (lists, objects, NaN, 1.5, -7, paths, SQL, control or
    non-ASCII characters, 5,000 digits) refuses the whole body: such a key names no contact.
    """
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value if 0 < value < 10 ** MAX_KEY_DIGITS else None
    elif isinstance(value, float):
        if value.is_integer() and 0 < value <= _MAX_EXACT_FLOAT:
            number = int(value)
    elif isinstance(value, str) and _KEY_TEXT.fullmatch(value):
        number = int(value) or None
    if number is None:
        shown = repr(value) if isinstance(value, int | float | str) else type(value).__name__
        raise WebhookPayloadError(f"{where} is not a contact key (a positive integer): {shown[:40]}")
    return str(number)


# -- native form ------------------------------------------------------------------------------------------

def parse_native_webhook(body: bytes | str | Any, *,
                         contact_table: int = CONTACT_TABLE_ID) -> list[ContactChange]:
    """Contact events from a native Efficy webhook body (raw bytes or already-decoded JSON).

    Records of other tables are skipped; a record of the contact table with no usable key or an unknown
    operation makes the whole body invalid (better a visible 400 than a silently lost change).
    """
    payload = _load(body)
    if not isinstance(payload, Mapping):
        raise WebhookPayloadError("native Efficy webhook must be a JSON object with 'records'")
    records = payload.get("records")
    if not isinstance(records, list):
        raise WebhookPayloadError("native Efficy webhook has no 'records' list")
    events: list[ContactChange] = []
    skipped = 0
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise WebhookPayloadError(f"records[{index}] is not an object")
        try:
            table = int(str(record.get("table")).strip())
        except ValueError as exc:
            raise WebhookPayloadError(f"records[{index}].table is not a table number") from exc
        if table != contact_table:
            skipped += 1
            continue
        if record.get("key") is None:
            raise WebhookPayloadError(f"records[{index}] has no key")
        key = contact_key(record.get("key"), f"records[{index}].key")
        operation = _NATIVE_OPERATIONS.get(str(record.get("operation", "")).strip().lower())
        if operation is None:
            raise WebhookPayloadError(f"records[{index}].operation {record.get('operation')!r} is not "
                                      "Create, Update or Delete")
        events.append(ContactChange(key, operation, parse_datetime(record.get("date"))))
    if skipped:
        log.debug("efficy_webhook_other_tables_ignored", count=skipped)
    return events


def verify_shared_headers(headers: Mapping[str, str], expected: Mapping[str, str]) -> None:
    """Check configured shared-secret headers on a native webhook ([U]: Efficy documents no signature).

    Header names are compared case-insensitively, values in constant time. Raises
    :class:`WebhookSignatureError` naming only the header, never its value.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    for name, value in expected.items():
        got = lowered.get(name.lower())
        if got is None or not hmac.compare_digest(got.encode(), value.encode()):
            raise WebhookSignatureError(f"webhook header {name} missing or wrong")


# -- contract form ----------------------------------------------------------------------------------------

def sign_contract_body(body: bytes, secret: str) -> str:
    """The ``X-Justin-Signature`` value for a body: ``sha256=`` + hex HMAC-SHA256 of the raw bytes."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def verify_contract_signature(body: bytes, signature: str | None, secret: str) -> None:
    """Raise :class:`WebhookSignatureError` unless ``signature`` is the body's HMAC under ``secret``."""
    if not signature:
        raise WebhookSignatureError(f"missing {SIGNATURE_HEADER} header")
    signature = signature.strip()
    if not signature.lower().startswith(SIGNATURE_PREFIX):
        raise WebhookSignatureError(f"{SIGNATURE_HEADER} is not of the form sha256=<hex>")
    expected = sign_contract_body(body, secret)
    got = SIGNATURE_PREFIX + signature[len(SIGNATURE_PREFIX):].lower()
    if not hmac.compare_digest(got.encode(), expected.encode()):
        raise WebhookSignatureError(f"{SIGNATURE_HEADER} does not match the body")


def parse_contract_webhook(body: bytes, *, signature: str | None, secret: str | None) -> list[ContactChange]:
    """Contact events from a signed generic-connector webhook.

    ``body`` must be the raw bytes as received (the HMAC covers them exactly). ``secret=None`` skips the
    check, for deployments that registered no secret; pass the secret whenever one was registered.
    """
    if secret is not None:
        verify_contract_signature(body, signature, secret)
    payload = _load(body)
    if not isinstance(payload, list):
        raise WebhookPayloadError("contract webhook must be a JSON array of records")
    if len(payload) > MAX_CONTRACT_ITEMS:
        raise WebhookTooLargeError(
            f"contract webhook carries {len(payload)} items (max {MAX_CONTRACT_ITEMS})")
    events: list[ContactChange] = []
    for index, item in enumerate(payload):
        if not isinstance(item, Mapping):
            raise WebhookPayloadError(f"item [{index}] is not an object")
        if item.get("record_id") is None:
            raise WebhookPayloadError(f"item [{index}] has no record_id")
        key = contact_key(item.get("record_id"), f"item [{index}].record_id")
        if "consent_base_id" in item:
            if not isinstance(item.get("has_consented"), bool):
                raise WebhookPayloadError(f"item [{index}].has_consented is not a boolean")
            events.append(ContactChange(key, "updated"))
            continue
        operation = _CONTRACT_OPERATIONS.get(str(item.get("operation", "")).strip().lower())
        if operation is None:
            raise WebhookPayloadError(f"item [{index}].operation {item.get('operation')!r} is not "
                                      "created, updated or deleted")
        events.append(ContactChange(key, operation))
    return events
