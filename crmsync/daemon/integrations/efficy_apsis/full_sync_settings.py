"""The full sync's settings as plain data (the config model builds them; the flow and benchmarks take them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from crmsync.connectors.apsis.imports import TagImportSettings
from crmsync.connectors.apsis.records import MAX_IMPORT_FILE_BYTES


@dataclass(frozen=True)
class FullSyncSettings:
    """See ``[full_sync]`` in docs/efficy_apsis.md: every field is a config key there."""

    page_size: int = 500
    import_threshold: int = 0
    concurrency: int = 16
    read_ahead: int = 16
    read_sessions: int = 1
    import_rows: int = 50_000
    import_tail_batches: int = 3
    import_file_bytes: int = MAX_IMPORT_FILE_BYTES
    batches_in_flight: int = 2
    spool_bytes: int = 1_000_000
    tags: TagImportSettings = field(default_factory=TagImportSettings)
    clear_existing_attributes: bool = False
