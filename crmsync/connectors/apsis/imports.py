"""Full-sync import files written as a stream: rows go to a spooled temporary file, never a list in memory.

An APSIS import carries one CSV of at most 50 MB (research §7). A full sync of millions of contacts must not
hold that file, or the rows behind it, in memory: :class:`ImportFileWriter` appends CSV lines to a
``SpooledTemporaryFile`` (memory up to ``spool_bytes``, disk beyond) and knows its size, so the caller closes
a file when the next row would pass the byte cap or the row cap. The upload streams the same file object.

The column layout is fixed by the configuration, not by the rows: the key, every mapped attribute, one
column per consent slot of the file's type, and (when tags travel in imports) one column per managed tag.

**Tags in imports are [U]**: the help centre lists tags among import mappings, but no public source shows the
mapping key or the cell values. :class:`TagImportSettings` makes both settings (default key
``tag_mappings``, entries ``{"field_selector", "tag_discriminator"}``, cells ``1`` add / ``0`` remove /
empty leave alone); with ``enabled = False`` the flows patch tags per profile instead.
"""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from crmsync.connectors.apsis.records import ConsentKey, ImportSettings, consent_column, import_cell, import_request

#: Bytes of an import file kept in memory before the spooled file moves to disk.
DEFAULT_SPOOL_BYTES = 1_000_000
#: Rows kept as bytes before they are appended to the spooled file (a few hundred kB at most).
_PENDING_LINES = 512


@dataclass(frozen=True)
class TagImportSettings:
    """How tags travel in import files (**[U]**, see the module docstring)."""

    enabled: bool = True
    mapping_key: str = "tag_mappings"
    tag_field: str = "tag_discriminator"
    add_cell: str = "1"
    remove_cell: str = "0"


def tag_column(tag: str) -> str:
    return f"tag|{tag}"


@dataclass(frozen=True)
class ImportLayout:
    """The columns of one kind of import file.

    ``kind`` is the consent type its consent columns apply (``opt-in`` or ``opt-out``); ``resubscribe`` sets
    ``resubscribe_if_opted_out`` on its consent mappings; ``attributes`` are the attribute discriminators it
    carries (all mapped ones in the main file, only the channels' address attributes in consent-only files);
    ``tags`` the tag columns (main file only, when tags travel in imports).
    """

    kind: str
    resubscribe: bool
    attributes: tuple[str, ...]
    slots: tuple[ConsentKey, ...]
    tags: tuple[str, ...] = ()
    settings: ImportSettings = field(default_factory=ImportSettings)
    tag_settings: TagImportSettings = field(default_factory=TagImportSettings)

    def header(self) -> list[str]:
        return ([self.settings.key_column] + list(self.attributes) + [consent_column(ck) for ck in self.slots]
                + [tag_column(t) for t in self.tags])

    def request(self, attribute_versions: Mapping[str, str]) -> dict[str, Any]:
        """The import body (§7) for this layout; tags added under the configured mapping key."""
        missing = [a for a in self.attributes if a not in attribute_versions]
        if missing:
            raise ValueError(f"no attribute version id known for {', '.join(missing)}")
        settings = ImportSettings(
            keyspace=self.settings.keyspace, key_column=self.settings.key_column,
            address_attributes=self.settings.address_attributes,
            update_existing_profiles=self.settings.update_existing_profiles,
            clear_existing_attributes=self.settings.clear_existing_attributes,
            resubscribe_if_opted_out=self.resubscribe, max_file_bytes=self.settings.max_file_bytes)
        body = import_request(self.attributes, attribute_versions, self.slots, self.kind, settings)
        if self.tags:
            ts = self.tag_settings
            body[ts.mapping_key] = [{"field_selector": tag_column(t), ts.tag_field: t} for t in self.tags]
        return body


def csv_fast_line(values: Sequence[str]) -> bytes | None:
    """The CSV line ``csv.writer`` (excel dialect, ``\n`` line end) writes for ``values``, when no cell needs
    quoting: no comma, quote, CR or LF in any cell. None otherwise (the caller lets ``csv`` quote)."""
    text = ",".join(values)
    if '"' in text or "\n" in text or "\r" in text or text.count(",") != len(values) - 1 or \
            (len(values) == 1 and not text):
        return None
    return (text + "\n").encode("utf-8")


class ImportFileWriter:
    """One import file being written: rows appended as CSV lines to a spooled temporary file.

    :meth:`add` returns False (and writes nothing) when the row would pass ``max_bytes`` or ``max_rows``:
    the caller then closes this file and starts another. ``file()`` rewinds and hands the file object to
    the upload (which streams it); :meth:`close` frees it.
    """

    def __init__(self, layout: ImportLayout, *, max_bytes: int, max_rows: int,
                 spool_bytes: int = DEFAULT_SPOOL_BYTES):
        self.layout = layout
        self.max_bytes = max_bytes
        self.max_rows = max_rows
        self._buf = io.StringIO()
        self._csv = csv.writer(self._buf, lineterminator="\n")
        self._file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=spool_bytes)
        header = self._line(layout.header())
        if len(header) > max_bytes:
            raise ValueError("the import header alone passes the file size cap")
        self._file.write(header)
        self.bytes = len(header)
        self.rows = 0
        self._slot_index = {ck: i for i, ck in enumerate(layout.slots)}
        self._no_slots = ["0"] * len(layout.slots)
        self._tag_index = {t: i for i, t in enumerate(layout.tags)}
        self._pending: list[bytes] = []

    def _line(self, values: Sequence[str]) -> bytes:
        line = csv_fast_line(values)
        if line is not None:
            return line
        self._buf.seek(0)
        self._buf.truncate()
        self._csv.writerow(values)
        return self._buf.getvalue().encode("utf-8")

    def add(self, key: str, attributes: Mapping[str, Any], slots: Sequence[ConsentKey] = (),
            add_tags: Sequence[str] = (), remove_tags: Sequence[str] = ()) -> bool:
        """Append a row: ``slots`` get ``1`` (apply this file's consent type), the others ``0``."""
        if self.rows >= self.max_rows:
            return False
        layout = self.layout
        cells = [key]
        cells += [value if type(value) is str else import_cell(value)
                  for value in map(attributes.get, layout.attributes)]
        first = len(cells)  # the consent cells: "0" unless the row's slots say "1"
        cells += self._no_slots
        for ck in slots:
            cells[first + self._slot_index[ck]] = "1"
        if layout.tags:
            tag_cells = [""] * len(layout.tags)
            ts = layout.tag_settings
            for t in remove_tags:
                tag_cells[self._tag_index[t]] = ts.remove_cell
            for t in add_tags:
                tag_cells[self._tag_index[t]] = ts.add_cell
            cells += tag_cells
        line = self._line(cells)
        if self.bytes + len(line) > self.max_bytes:
            if self.rows == 0:
                raise ValueError(f"one import row of {len(line)} bytes passes the file size cap")
            return False
        self._pending.append(line)  # written a chunk at a time: one spooled-file write per row costs more
        if len(self._pending) >= _PENDING_LINES:
            self._write_pending()
        self.bytes += len(line)
        self.rows += 1
        return True

    def _write_pending(self) -> None:
        if self._pending:
            self._file.seek(0, 2)  # after the rows before, even once file() has rewound
            self._file.write(b"".join(self._pending))
            self._pending = []

    def file(self) -> IO[bytes]:
        self._write_pending()
        self._file.seek(0)
        return self._file

    def close(self) -> None:
        self._pending = []
        self._file.close()


__all__ = ["ImportFileWriter", "ImportLayout", "TagImportSettings", "csv_fast_line", "tag_column"]
