"""Changed Entity Export Jobs as data: the job, its files, and the request body (research A5). No I/O.

VAN's answer to "what changed since X" is asynchronous: create a job for a window, poll it until
``jobStatus`` is ``Complete``, then download *every* file it lists (large exports are split; Parsons reads
only ``files[0]`` and silently loses the rest, research C8).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

log = structlog.get_logger("crmsync.connectors.everyaction.exports")

#: ``jobStatus`` values. The docs list Pending/InProcess/Error/Complete; some clients also guard
#: Failed/Cancelled.
PENDING_STATUSES = frozenset({"pending", "inprocess", "queued", "running"})
COMPLETE_STATUS = "complete"
FAILED_STATUSES = frozenset({"error", "failed", "cancelled", "canceled"})

#: ``fileSizeKbLimit`` bounds (research A5.1).
MIN_FILE_SIZE_KB = 1000
MAX_FILE_SIZE_KB = 100000


def format_van_datetime(when: datetime) -> str:
    """``2021-10-10T04:00:00+00:00``: seconds precision, explicit offset. Naive datetimes are refused because
    VAN would read them in the server's local zone (US Eastern), shifting the window by hours."""
    if when.tzinfo is None:
        raise ValueError("export window datetimes must be timezone-aware")
    return when.astimezone(UTC).replace(microsecond=0).isoformat()


def parse_van_datetime(value: Any) -> datetime | None:
    """VAN echoes dates with the server's offset (``-04:00``) and up to 7 fractional digits."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ExportFile:
    """One downloadable part. ``download_url`` is pre-signed (it carries a token): never log it."""

    download_url: str
    date_expired: datetime | None = None

    def __repr__(self) -> str:  # keep the signature out of logs and tracebacks
        return f"ExportFile(download_url=<redacted>, date_expired={self.date_expired!r})"


@dataclass(frozen=True)
class ExportJob:
    export_job_id: int
    job_status: str
    files: tuple[ExportFile, ...] = ()
    message: str | None = None
    code: str | None = None
    exported_record_count: int = 0
    date_changed_from: datetime | None = None
    date_changed_to: datetime | None = None
    resource_type: str | None = None
    requested_fields: tuple[str, ...] | None = None

    @property
    def is_complete(self) -> bool:
        return self.job_status.strip().lower() == COMPLETE_STATUS

    @property
    def is_failed(self) -> bool:
        return self.job_status.strip().lower() in FAILED_STATUSES


def parse_export_job(data: Any) -> ExportJob:
    if not isinstance(data, Mapping) or data.get("exportJobId") is None:
        raise ValueError("export job JSON has no exportJobId")
    files = data.get("files") or []
    fields = data.get("requestedFields")
    return ExportJob(
        export_job_id=int(data["exportJobId"]),
        job_status=str(data.get("jobStatus") or ""),
        files=tuple(
            ExportFile(download_url=str(f["downloadUrl"]),
                       date_expired=parse_van_datetime(f.get("dateExpired")))
            for f in files if isinstance(f, Mapping) and f.get("downloadUrl")
        ),
        message=data.get("message") if isinstance(data.get("message"), str) else None,
        code=None if data.get("code") is None else str(data.get("code")),
        exported_record_count=int(data.get("exportedRecordCount") or 0),
        date_changed_from=parse_van_datetime(data.get("dateChangedFrom")),
        date_changed_to=parse_van_datetime(data.get("dateChangedTo")),
        resource_type=data.get("resourceType") if isinstance(data.get("resourceType"), str) else None,
        requested_fields=tuple(str(f) for f in fields) if isinstance(fields, list) else None,
    )


def export_job_body(
    *,
    since: datetime,
    until: datetime | None,
    resource_type: str,
    requested_fields: Sequence[str],
    file_size_kb_limit: int | None,
    exclude_changes_from_self: bool | None,
    include_inactive: bool = False,
) -> dict[str, Any]:
    """The ``POST changedEntityExportJobs`` body. ``until=None`` lets the server fill in its own "now", which
    avoids a 400 when our clock runs ahead of VAN's ("dateChangedTo must not be in the future")."""
    if until is not None and until <= since:
        raise ValueError("export window end must be after its start")
    if file_size_kb_limit is not None and not MIN_FILE_SIZE_KB <= file_size_kb_limit <= MAX_FILE_SIZE_KB:
        raise ValueError(f"fileSizeKbLimit must be within {MIN_FILE_SIZE_KB}..{MAX_FILE_SIZE_KB}")
    body: dict[str, Any] = {
        "dateChangedFrom": format_van_datetime(since),
        "resourceType": resource_type,
        "requestedFields": list(requested_fields),
        "includeInactive": include_inactive,
    }
    if until is not None:
        body["dateChangedTo"] = format_van_datetime(until)
    if file_size_kb_limit is not None:
        body["fileSizeKbLimit"] = file_size_kb_limit
    if exclude_changes_from_self is not None:
        body["excludeChangesFromSelf"] = exclude_changes_from_self
    return body
