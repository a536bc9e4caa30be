"""Efficy Enterprise connector: JSON-RPC client, typed contact records, webhook parsing, and a simulator.

Modules: :mod:`.client` (API calls), :mod:`.envelope` (JSON-RPC shapes and errors), :mod:`.records`
(typed contacts), :mod:`.paging` (resumable positions), :mod:`.webhooks` (push parsing/verification),
:mod:`.simulator` (in-memory Efficy and webhook sender).
"""

from crmsync.connectors.efficy.client import EfficyClient, EfficySchema, EfficySessionExpiredError
from crmsync.connectors.efficy.paging import ContactPage
from crmsync.connectors.efficy.records import EfficyContact, EfficyProfile, FieldTypes, contact_from_row
from crmsync.connectors.efficy.webhooks import (
    ContactChange,
    WebhookPayloadError,
    WebhookSignatureError,
    parse_contract_webhook,
    parse_native_webhook,
)

__all__ = [
    "ContactChange",
    "ContactPage",
    "EfficyClient",
    "EfficyContact",
    "EfficyProfile",
    "EfficySchema",
    "EfficySessionExpiredError",
    "FieldTypes",
    "WebhookPayloadError",
    "WebhookSignatureError",
    "contact_from_row",
    "parse_contract_webhook",
    "parse_native_webhook",
]
