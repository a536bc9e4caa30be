"""APSIS One record shapes and request-body builders: pure data, no I/O, no trio.

Why a separate module: the sync rules (what to patch, which consents to write, what goes in an import file)
must be testable in microseconds and shared by the client, the simulator and the integration flows.

Facts (research ``efficy_apsis.md``): v2 attribute writes are JSON merge-patch keyed by attribute
discriminator, ``null`` clears (§6.1); Consent 2.0 bodies carry topic + channel discriminators and a type
(§5 C1); request bodies are capped at 100 kB (§8.3); bulk imports take a CSV whose headers are the
``field_selector`` values of the import mappings (§7). The tag merge-patch value encoding is unverified
(§6.3), hence :class:`TagEncoding`.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeVar

# -- well-known discriminators (§4.2) ---------------------------------------------------------------------

SECTION_DEFAULT = "com.apsis1.sections.default"
KEYSPACE_CRM_ID = "com.apsis1.keyspaces.crm-id"
KEYSPACE_EMAIL = "com.apsis1.keyspaces.email"
KEYSPACE_MOBILE = "com.apsis1.keyspaces.mobile"
KEYSPACE_EXPORT = "com.apsis1.keyspaces.export"
CHANNEL_EMAIL = "com.apsis1.channels.email"
CHANNEL_SMS = "com.apsis1.channels.sms"
CHANNELS = (CHANNEL_EMAIL, CHANNEL_SMS)
ATTR_CRMID = "com.apsis1.attributes.crmid"
ATTR_EMAIL = "com.apsis1.attributes.email"
ATTR_MOBILE = "com.apsis1.attributes.mobile"
ATTR_FIRSTNAME = "com.apsis1.attributes.firstname"
ATTR_LASTNAME = "com.apsis1.attributes.lastname"

ConsentType = Literal["opt-in", "opt-out", "pending-opt-in", "confirmed-opt-in"]
WritableConsentType = Literal["opt-in", "opt-out"]
CONSENT_TYPES: tuple[str, ...] = ("opt-in", "opt-out", "pending-opt-in", "confirmed-opt-in")
WRITABLE_CONSENT_TYPES: tuple[str, ...] = ("opt-in", "opt-out")  # the other two are not writable via API

#: APSIS rejects request bodies above 100 kB with 413 (§8.3). Whether "kB" is 1000 or 1024 bytes is not
#: documented; 100 000 is the safe reading.
MAX_BODY_BYTES = 100_000
#: Import files are capped at 50 MB (§7).
MAX_IMPORT_FILE_BYTES = 50_000_000

T = TypeVar("T")

#: E.164: a plus, a country code that does not start with 0, at most 15 digits in all (research §9.4: APSIS
#: wants phone numbers in international form, ``+46700…``).
_INTERNATIONAL_PHONE = re.compile(r"^\+[1-9]\d{6,14}$")


def is_international_phone(value: Any) -> bool:
    """Whether APSIS takes ``value`` as a phone number: an E.164 string, or the same digits as a JSON number
    (the help article's example sends ``32470000000``)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 10**6 <= value < 10**15
    return isinstance(value, str) and _INTERNATIONAL_PHONE.match(value) is not None


def dumps(body: Any) -> bytes:
    """The exact bytes the client sends for a JSON body (compact, UTF-8): sizes are measured on these."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# -- profile view ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsentKey:
    """One consent slot: a topic (the UI's "Subscription") on one channel; a CRM profile maps to one."""

    topic: str
    channel: str


@dataclass(frozen=True)
class Consent:
    """One consent as Consent 2.0 reports it (§5 C2)."""

    topic: str
    channel: str
    type: str
    source: str | None = None
    reason: str | None = None
    modified_at: str | None = None

    @property
    def key(self) -> ConsentKey:
        return ConsentKey(self.topic, self.channel)

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> Consent:
        """:class:`ValueError` when a required member is missing or not a string (the answer is untrusted)."""
        required = ("topic_discriminator", "channel_discriminator", "type")
        if not all(isinstance(item.get(k), str) and item.get(k) for k in required):
            raise ValueError(f"consent without {', '.join(required)} strings")
        optional = {k: item.get(k) if isinstance(item.get(k), str) else None
                    for k in ("source", "reason", "modified_at")}
        return cls(topic=item["topic_discriminator"], channel=item["channel_discriminator"], type=item["type"],
                   **optional)


@dataclass(frozen=True)
class ApsisProfile:
    """What crmsync wants (or knows) of one APSIS profile in one section.

    ``key`` is the profile key in the connector's keyspace (the Efficy ``K_CONTACT`` in the CRM-id keyspace);
    ``attributes`` are keyed by attribute discriminator; ``consents`` map a topic/channel to ``opt-in`` or
    ``opt-out``; ``tags`` are tag discriminators the profile carries.
    """

    key: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    consents: Mapping[ConsentKey, str] = field(default_factory=dict)
    tags: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("an APSIS profile needs a non-empty key")
        object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))
        object.__setattr__(self, "consents", MappingProxyType(dict(self.consents)))
        object.__setattr__(self, "tags", frozenset(self.tags))
        for ck, kind in self.consents.items():
            if kind not in WRITABLE_CONSENT_TYPES:
                raise ValueError(f"consent {ck.topic}/{ck.channel}: {kind!r} cannot be written via the API")

    @classmethod
    def owning(cls, key: str, attributes: Mapping[str, Any], consents: Mapping[ConsentKey, str],
               tags: Iterable[str] = frozenset()) -> ApsisProfile:
        """``ApsisProfile(key, attributes, consents, tags)`` for a caller that hands over ``attributes`` and
        ``consents`` and never touches them again (the plan of every contact builds its own): the same checks
        and value, without copying the two dicts. Give each as a dict of the caller's own, or as another
        profile's ``attributes`` / ``consents`` (read-only views of dicts no one else holds): those are shared
        as they are."""
        if not key:
            raise ValueError("an APSIS profile needs a non-empty key")
        for ck, kind in consents.items():
            if kind not in WRITABLE_CONSENT_TYPES:
                raise ValueError(f"consent {ck.topic}/{ck.channel}: {kind!r} cannot be written via the API")
        profile = object.__new__(cls)
        profile.__dict__.update(
            key=key, attributes=attributes if type(attributes) is MappingProxyType else MappingProxyType(attributes),
            consents=consents if type(consents) is MappingProxyType else MappingProxyType(consents),
            tags=tags if type(tags) is frozenset else frozenset(tags))
        return profile


@dataclass(frozen=True)
class AttributeDefinition:
    """An attribute of a section (§5 D3): v2 writes use ``discriminator``, imports use ``version_id``."""

    discriminator: str
    name: str
    type: str | None
    version_id: str | None

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> AttributeDefinition:
        versions = item.get("versions") or []
        current = [v for v in versions if not v.get("deprecated_at")]
        chosen = (current or versions or [{}])[-1]
        return cls(
            discriminator=str(item["discriminator"]),
            name=str(item.get("name") or item["discriminator"]),
            type=item.get("type"),
            version_id=chosen.get("id"),
        )


# -- request bodies ----------------------------------------------------------------------------------------


def attributes_patch(desired: Mapping[str, Any], current: Mapping[str, Any] | None = None, *,
                     clear: Iterable[str] = ()) -> dict[str, Any]:
    """The v2 merge-patch that turns ``current`` into ``desired`` (§6.1).

    Only changed keys are sent (``current`` unknown: all of ``desired``); discriminators in ``clear`` become
    ``null``, which merge-patch defines as "remove". An empty result means "no write needed".
    """
    patch: dict[str, Any] = {}
    for name, value in desired.items():
        if current is None or name not in current or current[name] != value:
            patch[name] = value
    for name in clear:
        if name not in desired and (current is None or current.get(name) is not None):
            patch[name] = None
    return patch


def consent_body(topic: str, channel: str, type: str, *, reason: str | None = None,
                 source: str | None = None) -> dict[str, Any]:
    """A Consent 2.0 write (§5 C1); only ``opt-in``/``opt-out`` are writable through the API."""
    if type not in WRITABLE_CONSENT_TYPES:
        raise ValueError(f"consent type {type!r} cannot be written via the API")
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}")
    body: dict[str, Any] = {"topic_discriminator": topic, "channel_discriminator": channel, "type": type}
    if reason is not None:
        body["reason"] = reason
    if source is not None:
        body["source"] = source
    return body


@dataclass(frozen=True)
class TagEncoding:
    """How a tag merge-patch says add/remove. [U] research §6.3: most plausible is ``true``/``false``."""

    add_value: Any = True
    remove_value: Any = False

    def is_set(self, value: Any) -> bool:
        """Read a tag value from a GET body (anything truthy other than the remove value counts as set)."""
        return value is not None and value != self.remove_value and bool(value)


def tags_patch(add: Iterable[str] = (), remove: Iterable[str] = (),
               encoding: TagEncoding = TagEncoding()) -> dict[str, Any]:
    """A tag merge-patch (§5 P5): adding wins if a tag is in both (an explicit add is the newer intent)."""
    patch: dict[str, Any] = {tag: encoding.remove_value for tag in remove}
    patch.update({tag: encoding.add_value for tag in add})
    return patch


def parse_tags(body: Any, encoding: TagEncoding = TagEncoding()) -> frozenset[str]:
    """Read a profile's tags from GET (§5 P6, shape [U]): an object ``{tag: bool}``, ``{"items": [...]}``
    of discriminators or ``{"discriminator": ...}`` objects, or a bare list."""
    if isinstance(body, Mapping) and "items" in body:
        body = body["items"]
    if isinstance(body, Mapping):
        return frozenset(str(k) for k, v in body.items() if encoding.is_set(v))
    tags: set[str] = set()
    for item in body or []:
        if isinstance(item, Mapping):
            tags.add(str(item.get("discriminator") or item.get("tag_discriminator")))
        else:
            tags.add(str(item))
    return frozenset(tags)


# -- the byte-size chunker ---------------------------------------------------------------------------------


class ItemTooLargeError(ValueError):
    """A single item cannot fit in one body: sending it would earn a 413, so it is never sent."""


def chunk_by_size(items: Iterable[T], max_bytes: int, *, size: Callable[[T], int], overhead: int = 2,
                  separator: int = 1) -> Iterator[list[T]]:
    """Group ``items`` so each group's serialized size stays within ``max_bytes``.

    ``size`` gives one item's serialized bytes; ``overhead`` is the envelope (``[]`` or ``{}``: 2) and
    ``separator`` the bytes between items (``,``: 1). Order is kept. Generic so the same rule serves JSON
    arrays, merge-patch objects and CSV files (overhead = header line, separator 0).
    """
    group: list[T] = []
    used = overhead
    for item in items:
        n = size(item)
        if overhead + n > max_bytes:
            raise ItemTooLargeError(f"one item is {n} bytes; the limit is {max_bytes} bytes per body")
        extra = n + (separator if group else 0)
        if group and used + extra > max_bytes:
            yield group
            group, used = [], overhead
            extra = n
        group.append(item)
        used += extra
    if group:
        yield group


def split_patch(patch: Mapping[str, Any], max_bytes: int = MAX_BODY_BYTES) -> list[dict[str, Any]]:
    """Split a flat merge-patch into several whose compact JSON each fits ``max_bytes``.

    Flat merge-patch members are independent, so applying the parts one after the other equals applying
    the whole. An empty patch gives no parts (nothing to send).
    """

    def entry_size(entry: tuple[str, Any]) -> int:
        return len(dumps(entry[0])) + 1 + len(dumps(entry[1]))

    return [dict(group) for group in chunk_by_size(patch.items(), max_bytes, size=entry_size)]


def split_list(items: Sequence[Any], max_bytes: int = MAX_BODY_BYTES) -> list[list[Any]]:
    """Split a JSON array body into arrays that each fit ``max_bytes``."""
    return list(chunk_by_size(items, max_bytes, size=lambda item: len(dumps(item))))


# -- bulk import (§7) --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportSettings:
    """How full-sync import files are laid out.

    ``key_column`` is the CSV header holding the profile key. ``address_attributes`` names, per channel,
    the attribute whose column is the consent's ``address_field_selector`` (email for email, mobile for SMS).
    ``update_existing_profiles``/``clear_existing_attributes`` are the import options (§7); what
    ``clear_existing_attributes`` does exactly is [U], so it defaults to False: never wipe data we did not
    mean to touch. ``resubscribe_if_opted_out`` defaults to False (consent invariant 1: an existing opt-out
    is not overwritten by a bulk opt-in).
    """

    keyspace: str = KEYSPACE_CRM_ID
    key_column: str = "crm_id"
    address_attributes: Mapping[str, str] = field(
        default_factory=lambda: {CHANNEL_EMAIL: ATTR_EMAIL, CHANNEL_SMS: ATTR_MOBILE})
    update_existing_profiles: bool = True
    clear_existing_attributes: bool = False
    resubscribe_if_opted_out: bool = False
    max_file_bytes: int = MAX_IMPORT_FILE_BYTES


@dataclass(frozen=True)
class ImportFile:
    """One import: the body for ``POST /v2/audience/sections/{sec}/imports`` and the CSV to upload."""

    request: dict[str, Any]
    csv: bytes
    rows: int


def consent_column(ck: ConsentKey) -> str:
    """CSV header for a topic/channel: unique per pair, since one topic may be mapped on both channels."""
    return f"{ck.topic}|{ck.channel}"


def import_cell(value: Any) -> str:
    """An attribute value as an import file's CSV cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _csv_line(values: Sequence[str]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue().encode("utf-8")


def build_imports(profiles: Sequence[ApsisProfile], attribute_versions: Mapping[str, str],
                  settings: ImportSettings = ImportSettings()) -> list[ImportFile]:
    """Import files for a full sync: attributes plus one consent type per file, each file ≤ the size cap.

    Like APSIS' own Magento module, one file carries one consent type, with a column per topic/channel
    holding ``1`` (apply) or ``0`` (leave alone) (§7). Opt-ins go first so that a later opt-out file always
    has the last word. ``attribute_versions`` maps attribute discriminator → current version id (imports
    key attributes by version id, §4.2); a profile attribute without a version is a configuration error.
    """
    if not profiles:
        return []
    attributes = sorted({name for p in profiles for name in p.attributes})
    missing = [a for a in attributes if a not in attribute_versions]
    if missing:
        raise ValueError(f"no attribute version id known for {', '.join(missing)}")
    files: list[ImportFile] = []
    for kind in WRITABLE_CONSENT_TYPES:
        slots = sorted({ck for p in profiles for ck, t in p.consents.items() if t == kind},
                       key=consent_column)
        if kind == "opt-out" and not slots:
            continue
        with_attributes = kind == "opt-in"
        columns = [settings.key_column]
        attr_cols = list(attributes) if with_attributes else []
        # The address column of each channel used must be present, even in consent-only files.
        needed_addresses = sorted({settings.address_attributes[ck.channel] for ck in slots})
        for addr in needed_addresses:
            if addr not in attr_cols:
                attr_cols.append(addr)
                if addr not in attribute_versions:
                    raise ValueError(f"no attribute version id known for address attribute {addr}")
        columns += attr_cols + [consent_column(ck) for ck in slots]
        header = _csv_line(columns)
        lines = [
            _csv_line([p.key]
                      + [import_cell(p.attributes.get(a)) for a in attr_cols]
                      + ["1" if p.consents.get(ck) == kind else "0" for ck in slots])
            for p in profiles
            if with_attributes or any(p.consents.get(ck) == kind for ck in slots)
        ]
        request = import_request(attr_cols, attribute_versions, slots, kind, settings)
        for group in chunk_by_size(lines, settings.max_file_bytes, size=len, overhead=len(header),
                                   separator=0):
            files.append(ImportFile(request=request, csv=header + b"".join(group), rows=len(group)))
    return files


def import_request(attr_cols: Sequence[str], attribute_versions: Mapping[str, str],
                   slots: Sequence[ConsentKey], kind: str, settings: ImportSettings) -> dict[str, Any]:
    """The v2 import body (§7): one keyspace mapping, attribute mappings by version id, consent mappings
    grouped by the channel's address column."""
    by_address: dict[str, list[dict[str, Any]]] = {}
    for ck in slots:
        address = settings.address_attributes[ck.channel]
        by_address.setdefault(address, []).append({
            "field_selector": consent_column(ck),
            "channel_discriminator": ck.channel,
            "topic_discriminator": ck.topic,
            "type": kind,
            "resubscribe_if_opted_out": settings.resubscribe_if_opted_out,
        })
    return {
        "keyspace_mapping": {"keyspace_discriminator": settings.keyspace,
                             "field_selector": settings.key_column},
        "options": {"update_existing_profiles": settings.update_existing_profiles,
                    "clear_existing_attributes": settings.clear_existing_attributes},
        "attribute_mappings": [{"field_selector": a, "attribute_version_id": attribute_versions[a]}
                               for a in attr_cols],
        "consent_mappings": [{"address_field_selector": addr, "consents": consents}
                             for addr, consents in by_address.items()],
    }


# -- consent report (§5 E1) --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsentReportRow:
    """One consent of one profile, as a consent report (§5 E1) lists it.

    ``profile_key`` is the profile's key in the client's keyspace; ``modified_at`` is APSIS's raw timestamp
    (ISO 8601, or None when the report has no such column).
    """

    profile_key: str
    topic: str
    channel: str
    type: str
    modified_at: str | None = None

    @property
    def key(self) -> ConsentKey:
        return ConsentKey(self.topic, self.channel)


@dataclass(frozen=True)
class ConsentReportColumns:
    """CSV header names of a consent report. **[U]**: no public source shows the report's columns.

    The defaults reuse the names of the Consent 2.0 JSON (``topic_discriminator``, ``channel_discriminator``,
    ``type``, ``modified_at``, research §5 C2) plus ``profile_key`` (§5 P1). ``profile_key``, ``topic`` and
    ``type`` must be in the header. ``channel`` and ``modified_at`` are optional: without a channel column
    every row gets the channel the report was requested for; without a time column ``modified_at`` is None.
    ``keyspace`` is optional too: when the header has it, rows of other keyspaces are skipped. Header names
    are matched case-insensitively, ignoring surrounding blanks and a UTF-8 byte-order mark.
    """

    profile_key: str = "profile_key"
    topic: str = "topic_discriminator"
    channel: str = "channel_discriminator"
    type: str = "type"
    modified_at: str = "modified_at"
    keyspace: str = "keyspace_discriminator"


@dataclass(frozen=True)
class ConsentReportSettings:
    """How a consent report is requested, awaited and read. **[U]** parts are marked.

    * ``channel_form`` **[U]**: the research shows two body shapes for the channel, ``"discriminator"``
      (``"channel_discriminator": "<channel>"``) and ``"list"``
      (``"channels": [{"field_name": <channel_field_name>, "channel_discriminator": "<channel>"}]``).
    * ``keyspace_field`` **[U]**: body member naming the keyspace whose keys the report should carry
      (``None`` leaves it out); the research's body lists no keyspace, but a profile key means nothing
      without one.
    * ``extra_body`` **[U]**: further members merged into the body (``segments``, ``consent_list_discriminator``
      ...) for accounts that need them.
    * ``poll_url_fields`` **[U]**: JSON members of the creation answer that may hold the poll URL, tried in
      order; the ``Location`` header is the fallback.
    * ``poll_auth`` **[U]**: whether the poll URL gets the bearer token: ``"same-host"`` (only when it is
      on the API host, so the token never goes to a storage host), ``"always"`` or ``"never"``.
    * ``poll_interval`` / ``timeout``: how often a pending report is polled and how long it may stay
      pending (its URL is valid one day, §5 E1) before :class:`ConsentReportTimeoutError`.
    * ``columns``: :class:`ConsentReportColumns`.
    """

    channel_form: Literal["discriminator", "list"] = "discriminator"
    channel_field_name: str = "consent"
    keyspace_field: str | None = "keyspace_discriminator"
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    poll_url_fields: tuple[str, ...] = ("poll_url", "url", "href", "location")
    poll_auth: Literal["same-host", "always", "never"] = "same-host"
    poll_interval: float = 5.0
    timeout: float = 6 * 3600.0
    columns: ConsentReportColumns = ConsentReportColumns()


def consent_report_body(section: str, topics: Sequence[str], channel: str, keyspace: str,
                        settings: ConsentReportSettings = ConsentReportSettings()) -> dict[str, Any]:
    """The body of ``POST /audience/profiles/reports/consents`` (§5 E1; exact shape **[U]**, see
    :class:`ConsentReportSettings`)."""
    if not topics:
        raise ValueError("a consent report needs at least one topic")
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}")
    body: dict[str, Any] = {"section_discriminator": section, "topic_discriminators": list(topics)}
    if settings.channel_form == "list":
        body["channels"] = [{"field_name": settings.channel_field_name, "channel_discriminator": channel}]
    else:
        body["channel_discriminator"] = channel
    if settings.keyspace_field:
        body[settings.keyspace_field] = keyspace
    body.update(settings.extra_body)
    return body


class ConsentReportFormatError(ValueError):
    """The report's CSV does not have the columns :class:`ConsentReportColumns` names."""


class ConsentReportParser:
    """Incremental CSV → :class:`ConsentReportRow`: feed text chunks, take rows as records complete.

    Only complete records reach the ``csv`` module (a record ends at a newline outside quotes), so quoted
    fields may span lines and chunks may split anywhere. Memory is one partial record plus the rows of the
    last chunk fed.
    """

    def __init__(self, channel: str, keyspace: str,
                 columns: ConsentReportColumns = ConsentReportColumns()):
        self.channel = channel
        self.keyspace = keyspace
        self.columns = columns
        self._pending: deque[str] = deque()
        self._reader = csv.reader(_Feed(self._pending))
        self._buffer = ""
        self._record: list[str] = []
        self._quotes = 0
        self._index: dict[str, int] | None = None
        self.rows_read = 0

    def feed(self, text: str) -> list[ConsentReportRow]:
        """Rows completed by ``text``."""
        self._buffer += text
        cut = self._buffer.rfind("\n")
        if cut < 0:
            return []
        complete, self._buffer = self._buffer[:cut + 1], self._buffer[cut + 1:]
        out: list[ConsentReportRow] = []
        for line in complete.split("\n")[:-1]:
            line += "\n"
            self._record.append(line)
            self._quotes += line.count('"')
            if self._quotes % 2 == 0:
                self._emit("".join(self._record), out)
                self._record, self._quotes = [], 0
        return out

    def close(self) -> list[ConsentReportRow]:
        """The last rows (a final record without a newline); raises if a quoted field never closed."""
        out: list[ConsentReportRow] = []
        tail = "".join(self._record) + self._buffer
        self._record, self._buffer = [], ""
        if tail.count('"') % 2:
            raise ConsentReportFormatError("consent report ends inside a quoted field")
        if tail.strip():
            self._emit(tail, out)
        if self._index is None:
            raise ConsentReportFormatError("consent report has no header line")
        return out

    def _emit(self, record: str, out: list[ConsentReportRow]) -> None:
        self._pending.append(record)
        cells = next(self._reader, None)
        if not cells or not any(c.strip() for c in cells):
            return  # blank line
        if self._index is None:
            self._index = self._header(cells)
            return
        row = self._row(cells)
        if row is not None:
            out.append(row)

    def _header(self, cells: list[str]) -> dict[str, int]:
        names = {c.strip().lstrip("\ufeff").strip().lower(): i for i, c in enumerate(cells)}
        cols = self.columns
        index: dict[str, int] = {}
        for attr in ("profile_key", "topic", "channel", "type", "modified_at", "keyspace"):
            name = getattr(cols, attr).strip().lower()
            if name in names:
                index[attr] = names[name]
        missing = [getattr(cols, a) for a in ("profile_key", "topic", "type") if a not in index]
        if missing:
            raise ConsentReportFormatError(
                f"consent report lacks column(s) {', '.join(missing)}; header has "
                f"{', '.join(sorted(names))[:300]} (set the report's column names)")
        return index

    def _row(self, cells: list[str]) -> ConsentReportRow | None:
        assert self._index is not None
        idx = self._index

        def cell(attr: str) -> str | None:
            i = idx.get(attr)
            if i is None or i >= len(cells):
                return None
            value = cells[i].strip()
            return value or None

        self.rows_read += 1
        keyspace = cell("keyspace")
        if keyspace is not None and keyspace != self.keyspace:
            return None
        key, topic, kind = cell("profile_key"), cell("topic"), cell("type")
        if key is None or topic is None or kind is None:
            return None
        return ConsentReportRow(profile_key=key, topic=topic, channel=cell("channel") or self.channel,
                                type=kind.lower(), modified_at=cell("modified_at"))


class _Feed:
    """An iterator the ``csv`` reader pulls complete records from; empty between feeds (not a generator,
    so it can be refilled after reporting exhaustion)."""

    def __init__(self, pending: deque[str]):
        self._pending = pending

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> str:
        if not self._pending:
            raise StopIteration
        return self._pending.popleft()
