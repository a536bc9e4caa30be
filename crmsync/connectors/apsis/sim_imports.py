"""The APSIS simulator's bulk imports (§7): creation under the account's import limits (10 a minute, 3
unfinished; 429 beyond), the fake S3 pre-signed multipart upload (50 MB cap, ``EntityTooLarge``), the
status machine and the application of the CSV (attributes, consents with ``resubscribe_if_opted_out``,
and tags under the [U] mapping key).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import re
import sys
from collections import deque
from collections.abc import Iterator
from datetime import timedelta
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from typing import Any

from crmsync.connectors.apsis.records import (
    CHANNELS,
    WRITABLE_CONSENT_TYPES,
)
from crmsync.connectors.apsis.sim_limits import ApsisLimits
from crmsync.connectors.apsis.sim_state import (
    S3_PATH,
    ApsisState,
    _Import,
    _Problem,
    _s3_error,
)
from crmsync.connectors.simkit import (
    Request,
    Response,
)


class ApsisImports(ApsisLimits, ApsisState):
    """Import routes of :class:`~crmsync.connectors.apsis.simulator.ApsisSimulator` (its ``__init__`` creates
    the attributes declared here)."""

    attributes: dict[str, dict[str, Any]]
    topics: dict[str, dict[str, Any]]
    tag_definitions: dict[str, dict[str, Any]]
    public_url: str
    imports_per_minute: int
    max_pending_imports: int
    import_polls_per_step: int
    upload_url_lifetime: float
    max_import_file_bytes: int
    import_rows_per_second: float | None
    import_tag_mapping_key: str
    import_tag_field: str
    rate_limited: int
    max_concurrent_imports_seen: int
    _import_window: deque[float]
    _import_seq: Iterator[int]
    _signing_key: bytes

    # -- imports -----------------------------------------------------------------------------------------

    def _pending_imports(self) -> int:
        """Unfinished imports. APSIS works on an import whether anyone polls it or not: one whose processing
        time has passed is finished (and applied) now; one whose upload URL expired without a file can
        never finish ([U]: read as ended in error)."""
        now = self.clock.timestamp()
        for imp in self._imports.values():
            if imp.status in ("queued", "in_progress") and imp.ready_at is not None and now >= imp.ready_at:
                self._apply_import(imp)
            elif imp.status == "waiting_for_file" and now > imp.upload_expires:
                imp.status, imp.error = "error", "The upload URL expired before a file arrived"
        return sum(1 for imp in self._imports.values() if imp.status not in ("completed", "error"))

    async def _create_import(self, request: Request, section: str) -> Response:
        self.writes["create_import"] += 1
        self._section(section)
        now = self.clock.timestamp()
        if self._pending_imports() >= self.max_pending_imports:
            self.rate_limited += 1
            raise _Problem(429, "Too many requests", "At most 3 imports may be pending at once")
        self._throttle(self._import_window, now, 60.0, self.imports_per_minute,
                       "Import endpoint allows 10 requests per minute")
        spec = self._json_object(request)
        mapping = spec.get("keyspace_mapping")
        if not isinstance(mapping, dict) or not mapping.get("field_selector"):
            raise _Problem(400, "Validation failed", "keyspace_mapping with field_selector is required")
        self._keyspace(str(mapping.get("keyspace_discriminator")), write=True, consents=True)
        versions = {v["id"]: d for d, a in self.attributes.items() for v in a["versions"]}
        for am in spec.get("attribute_mappings") or []:
            if am.get("attribute_version_id") not in versions:
                raise _Problem(400, "Validation failed",
                               f"Unknown attribute version {am.get('attribute_version_id')}")
        for cm in spec.get("consent_mappings") or []:
            for c in cm.get("consents") or []:
                if (c.get("topic_discriminator") not in self.topics
                        or c.get("channel_discriminator") not in CHANNELS):
                    raise _Problem(400, "Validation failed", "Unknown topic or channel in consent_mappings")
                if c.get("type") not in WRITABLE_CONSENT_TYPES:
                    raise _Problem(400, "Validation failed", "Consent type must be opt-in or opt-out")
        for tm in spec.get(self.import_tag_mapping_key) or []:
            if not isinstance(tm, dict) or not tm.get("field_selector") \
                    or tm.get(self.import_tag_field) not in self.tag_definitions:
                raise _Problem(400, "Validation failed", f"Unknown tag in {self.import_tag_mapping_key}")
        import_id = f"imp-{next(self._import_seq):06d}"
        expires = now + self.upload_url_lifetime
        signature = hmac.new(self._signing_key, import_id.encode(), hashlib.sha256).hexdigest()
        fields = {"key": f"imports/{import_id}.csv", "policy": base64.b64encode(import_id.encode()).decode(),
                  "x-amz-algorithm": "AWS4-HMAC-SHA256", "x-amz-signature": signature}
        self._imports[import_id] = _Import(import_id, section, spec, fields, expires)
        self.max_concurrent_imports_seen = max(self.max_concurrent_imports_seen, self._pending_imports())
        expires_at = (self.clock.now() + timedelta(seconds=self.upload_url_lifetime)).isoformat()
        return Response.json({"import_id": import_id, "file_upload_url": self.public_url + S3_PATH,
                              "file_upload_body": fields,
                              "file_upload_url_expires_at": expires_at.replace("+00:00", "Z")}, status=201)

    def _s3_upload(self, request: Request, now: float) -> Response:
        """A pre-signed S3 POST: form fields replayed, the file last, and no other auth allowed."""
        self.writes["upload"] += 1
        if request.header("authorization"):
            return _s3_error(400, "InvalidArgument", "Only one auth mechanism allowed")
        parts = _multipart(request)
        if parts is None or not parts or parts[-1][0] != "file":
            return _s3_error(400, "InvalidArgument",
                             "POST requires exactly one file upload, as the last field")
        form = {name: value for name, value, _ in parts[:-1]}
        imp = next((i for i in self._imports.values() if i.upload_fields["key"] == form.get("key")), None)
        if imp is None or any(form.get(k) != v for k, v in imp.upload_fields.items()):
            return _s3_error(403, "AccessDenied", "Invalid according to Policy")
        if now > imp.upload_expires:
            return _s3_error(403, "AccessDenied", "Invalid according to Policy: Policy expired")
        content = parts[-1][1]
        if isinstance(content, str):
            content = content.encode("utf-8")
        if len(content) > self.max_import_file_bytes:
            return _s3_error(400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")
        if imp.status == "waiting_for_file":
            imp.csv = content
            imp.status = "queued"
            imp.polls_in_status = 0
            if self.import_rows_per_second:
                rows = max(0, content.count(b"\n") - 1)
                imp.ready_at = now + rows / self.import_rows_per_second
        return Response.empty(204)

    async def _get_import(self, request: Request, section: str, import_id: str) -> Response:
        self._section(section)
        imp = self._imports.get(import_id)
        if imp is None or imp.section != section:
            raise _Problem(404, "Not found", "Import does not exist")
        if imp.status in ("queued", "in_progress") and imp.ready_at is not None:
            if self.clock.timestamp() >= imp.ready_at:
                self._apply_import(imp)
            else:
                imp.status = "in_progress"
        elif imp.status in ("queued", "in_progress"):
            imp.polls_in_status += 1
            if imp.polls_in_status > self.import_polls_per_step:
                imp.polls_in_status = 0
                if imp.status == "queued":
                    imp.status = "in_progress"
                else:
                    self._apply_import(imp)
        result: dict[str, Any] = {"import_id": imp.import_id, "status": imp.status}
        if imp.status == "completed":
            result["imported_profiles"] = imp.rows_imported
        if imp.error:
            result["error"] = imp.error
        return Response.json({"result": result})

    def _apply_import(self, imp: _Import) -> None:
        """Apply the CSV: ``1`` cells apply that mapping's consent; empty attribute cells are left alone
        unless ``clear_existing_attributes`` ([U] meaning) is set."""
        spec = imp.spec
        mapping = spec["keyspace_mapping"]
        keyspace, key_col = str(mapping["keyspace_discriminator"]), str(mapping["field_selector"])
        options = spec.get("options") or {}
        update_existing = bool(options.get("update_existing_profiles", True))
        clear_empty = bool(options.get("clear_existing_attributes", False))
        versions = {v["id"]: d for d, a in self.attributes.items() for v in a["versions"]}
        reader = csv.DictReader(io.StringIO((imp.csv or b"").decode("utf-8")))
        if key_col not in (reader.fieldnames or []):
            imp.status, imp.error = "error", f"Column {key_col} not found in file"
            return
        count = 0
        stamp = self._stamp()  # the import's rows are applied as of one moment
        records: dict[tuple[str, str, str], dict[str, Any]] = {}
        for row in reader:
            key = (row.get(key_col) or "").strip()
            if not key:
                continue
            exists = (keyspace, key) in self._profiles
            if exists and not update_existing:
                continue
            data = self._ensure(keyspace, key, imp.section)
            for am in spec.get("attribute_mappings") or []:
                value = row.get(am["field_selector"])
                name = versions[am["attribute_version_id"]]
                if value:
                    data.attributes[name] = sys.intern(value) if len(value) <= 16 else value  # names, countries
                elif clear_empty and value is not None:
                    data.attributes.pop(name, None)
            for cm in spec.get("consent_mappings") or []:
                if not (row.get(cm.get("address_field_selector", "")) or "").strip():
                    continue  # no address on this channel: nothing to consent with
                for c in cm.get("consents") or []:
                    if (row.get(c["field_selector"]) or "").strip() != "1":
                        continue
                    slot = (c["topic_discriminator"], c["channel_discriminator"])
                    current = data.consents.get(slot)
                    if (c["type"] == "opt-in" and current is not None and current["type"] == "opt-out"
                            and not c.get("resubscribe_if_opted_out")):
                        continue
                    if current is None or current["type"] != c["type"]:
                        self._set_consent(data, slot[0], slot[1], c["type"], source="Import", reason=None,
                                          stamp=stamp, shared=records)
            for tm in spec.get(self.import_tag_mapping_key) or []:
                cell = (row.get(tm["field_selector"]) or "").strip()
                if cell == "1":
                    data.tags.add(tm[self.import_tag_field])
                elif cell == "0":
                    data.tags.discard(tm[self.import_tag_field])
            count += 1
        imp.rows_imported = count
        imp.status = "completed"
        imp.csv = None  # applied: a finished import keeps its status, not its file (up to 50 MB each)


def _disposition_param(header: str, name: str) -> str | None:
    match = re.search(r'(?:^|;)\s*' + name + r'="([^"]*)"', header)
    return match.group(1) if match else None


def _multipart(request: Request) -> list[tuple[str, bytes | str, str | None]] | None:
    """Parse multipart/form-data into ``(name, value, filename)`` in order; None if it is not multipart."""
    ctype = request.header("content-type") or ""
    if not ctype.startswith("multipart/form-data"):
        return None
    message = BytesParser(policy=compat32).parsebytes(
        b"Content-Type: " + ctype.encode("latin-1") + b"\r\nMIME-Version: 1.0\r\n\r\n" + request.body)
    parts: list[tuple[str, bytes | str, str | None]] = []
    if not message.is_multipart():
        return None
    for part in message.get_payload():
        if not isinstance(part, Message):
            continue
        disposition = part.get("content-disposition", "")
        name = _disposition_param(disposition, "name")
        filename = _disposition_param(disposition, "filename")
        raw = part.get_payload(decode=True)
        payload = raw if isinstance(raw, bytes) else b""
        if name is None:
            continue
        parts.append((name, payload if filename else payload.decode("utf-8"), filename))
    return parts
