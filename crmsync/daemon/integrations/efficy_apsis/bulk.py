"""What one planned contact becomes in the bulk-import files, and the batch that carries it.

The plan stage of the full sync (:mod:`.full_sync`) asks :func:`import_row` where a contact's write goes:

* the **main file** (opt-in type, ``resubscribe_if_opted_out = false``): every written contact, with all its
  mapped attributes, the opt-ins to write and, when tags travel in imports, its tag changes;
* the **re-subscription file** (opt-in type, ``resubscribe_if_opted_out = true``): opt-ins the rules let
  win over an opt-out APSIS holds (learnt up front from the consent report), exactly as the per-profile path
  writes them over that opt-out;
* the **opt-out file**: opt-outs to write.

Each (profile, slot) is marked in one file only, so the three files commute and may run at the same time.
A consent on a channel whose address is empty is left out (:func:`addressed`: an import drops it, and
issue 7 item 8 says it is not written). What an import cannot express becomes post-import calls per
profile: tag patches when tags do not travel in imports, ``null`` for an attribute crmsync set before (an
import cannot clear one unless ``clear_existing_attributes`` is on).

Rows are appended to streamed files and their acknowledgement data to a spooled ledger, so a batch of
200,000 rows costs disk, not memory.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import trio

from crmsync.connectors.apsis import ApsisProfile, ConsentKey
from crmsync.connectors.apsis.imports import ImportFileWriter, ImportLayout
from crmsync.connectors.apsis.records import Consent
from crmsync.daemon.integrations.efficy_apsis.rules import OPT_IN, OPT_OUT, OptOutRecord, Plan

MAIN, RESUBSCRIBE, OPTOUT = 0, 1, 2
ROW_RESERVE = 1_000_000  # bytes kept free in every file of a batch for the next row
FILE_NAMES = ("opt-in", "re-subscribe", "opt-out")
_MAIN_ONLY = (MAIN,)


class ReportedConsents:
    """Answers ``get_consents`` from the consent report read up front (opt-outs only), so the per-profile
    rule that resolves opt-ins against APSIS (``writer.check_apsis_optouts``) runs unchanged, without a read
    per profile. A profile the report does not list has no opt-out on the mapped slots."""

    def __init__(self, by_key: Mapping[str, list[Consent]]):
        self._by_key = by_key

    async def get_consents(self, key: str, **_: Any) -> list[Consent]:
        return list(self._by_key.get(key, ()))


def with_query_membership(desired: ApsisProfile, query_tags: frozenset[str], member_of: frozenset[str]
                          ) -> ApsisProfile:
    """The profile with its query tags as the queries say now (read at the start of a bulk full sync), so
    they travel in the import instead of one tag patch per member in the ``tags`` flow afterwards."""
    tags = (desired.tags - query_tags) | (member_of & query_tags)
    if tags == desired.tags:
        return desired
    return ApsisProfile.owning(desired.key, desired.attributes, desired.consents, tags)


@dataclass(frozen=True)
class ImportRow:
    """Where one contact's write goes (see the module docstring)."""

    main_slots: tuple[ConsentKey, ...]
    resubscribe_slots: tuple[ConsentKey, ...]
    optout_slots: tuple[ConsentKey, ...]
    add_tags: tuple[str, ...]
    remove_tags: tuple[str, ...]
    post_add_tags: tuple[str, ...]  # tag changes sent per profile after the import (tags not in imports)
    post_remove_tags: tuple[str, ...]
    post_clear: tuple[str, ...]  # attributes to null per profile after the import
    post_optouts: tuple[ConsentKey, ...] = ()  # opt-outs without an address, written per profile


def addressed(desired: ApsisProfile, current: ApsisProfile | None, address_attributes: Mapping[str, str]
              ) -> tuple[ApsisProfile, tuple[ConsentKey, ...]]:
    """The profile without consents on channels whose address is empty: an import drops them (research §7),
    and a consent without its address is not written (issue 7 item 8: no SMS consent without a mobile).
    What is fingerprinted is what is sent, so such a consent goes out once the address appears.

    One exception, since an opt-out always travels: an opt-out on a slot where crmsync last sent an opt-in
    is kept, and returned as a slot to write per profile after the import (the import cannot carry it).
    """
    attributes = desired.attributes
    for ck in desired.consents:
        if not attributes.get(address_attributes.get(ck.channel, "")):
            break
    else:  # every consent has its address (the usual profile): the loop below would keep them all
        return desired, ()
    keep: dict[ConsentKey, str] = {}
    per_profile: list[ConsentKey] = []
    for ck, kind in desired.consents.items():
        if desired.attributes.get(address_attributes.get(ck.channel, "")):
            keep[ck] = kind
        elif kind == OPT_OUT and current is not None and current.consents.get(ck) == OPT_IN:
            keep[ck] = kind
            per_profile.append(ck)
    if len(keep) == len(desired.consents):
        return desired, tuple(per_profile)
    return ApsisProfile.owning(desired.key, desired.attributes, keep, desired.tags), tuple(per_profile)


def import_row(desired: ApsisProfile, current: ApsisProfile | None, seen: ApsisProfile | None,
               reported: Sequence[Consent], *, managed_tags: frozenset[str], tags_in_import: bool,
               clear_in_import: bool, per_profile_optouts: Sequence[ConsentKey] = ()) -> ImportRow:
    """Place one write (an :func:`addressed` profile) in the import files.

    ``current`` is the last payload crmsync sent (None: never); ``seen`` is that view with the consents the
    opt-out check saw in APSIS (what ``check_apsis_optouts`` returns), which decides what is written.
    """
    opted_out = {c.key for c in reported if c.type == OPT_OUT} if reported else _NO_SLOTS
    main: list[ConsentKey] = []
    resub: list[ConsentKey] = []
    outs: list[ConsentKey] = []
    seen_consents = seen.consents if seen is not None else None
    items: Iterable[tuple[ConsentKey, str]] = desired.consents.items()
    if len(desired.consents) > 1:
        items = sorted(items, key=_slot_order)
    for ck, kind in items:
        if (seen_consents is not None and seen_consents.get(ck) == kind) or ck in per_profile_optouts:
            continue
        if kind == OPT_OUT:
            outs.append(ck)
        elif ck in opted_out:
            resub.append(ck)
        else:
            main.append(ck)
    have = current.tags if current is not None else frozenset()
    add = desired.tags - have
    remove = (managed_tags - desired.tags) if current is None else (have & managed_tags) - desired.tags
    clear: tuple[str, ...] = ()
    if not clear_in_import and current is not None:
        clear = tuple(sorted(a for a, v in desired.attributes.items()
                             if v is None and current.attributes.get(a) is not None))
    adding = tuple(sorted(add)) if add else ()
    removing = tuple(sorted(remove)) if remove else ()
    in_file_add, in_file_remove = (adding, removing) if tags_in_import else ((), ())
    post_add, post_remove = ((), ()) if tags_in_import else (adding, removing)
    # ImportRow(...) without the frozen dataclass's per-field __init__ (one row per written contact)
    row = object.__new__(ImportRow)
    row.__dict__.update(main_slots=tuple(main), resubscribe_slots=tuple(resub), optout_slots=tuple(outs),
                        add_tags=in_file_add, remove_tags=in_file_remove, post_add_tags=post_add,
                        post_remove_tags=post_remove, post_clear=clear, post_optouts=tuple(per_profile_optouts))
    return row


_NO_SLOTS: frozenset[ConsentKey] = frozenset()


def _slot_order(item: tuple[ConsentKey, str]) -> tuple[str, str]:
    return item[0].topic, item[0].channel


@dataclass(slots=True)
class LedgerEntry:
    """What the acknowledge stage needs of one imported contact (a tuple in the batch's ledger)."""

    contact_id: str
    outcome: str
    files: tuple[int, ...]
    fingerprint: str
    version: str | None
    put_optouts: tuple[OptOutRecord, ...] = ()
    drop_optouts: tuple[OptOutRecord, ...] = ()
    post_add_tags: tuple[str, ...] = ()
    post_remove_tags: tuple[str, ...] = ()
    post_clear: tuple[str, ...] = ()
    post_optouts: tuple[ConsentKey, ...] = ()

    def as_tuple(self) -> tuple[Any, ...]:
        return (self.contact_id, self.outcome, self.files, self.fingerprint, self.version, self.put_optouts,
                self.drop_optouts, self.post_add_tags, self.post_remove_tags, self.post_clear, self.post_optouts)

    @property
    def has_post(self) -> bool:
        return bool(self.post_add_tags or self.post_remove_tags or self.post_clear or self.post_optouts)


class Ledger:
    """A batch's ledger entries, in order: pickled a chunk at a time to a spooled temporary file (memory up
    to ``spool_bytes``, disk beyond), so a batch of 200,000 rows costs disk, not memory.

    Pickle, not JSON: the file is this process's own scratch (written and read back by the same sync, never
    shared), and one ``pickle.dumps`` of a chunk of plain tuples costs far less than a JSON line per entry."""

    CHUNK = 1000

    def __init__(self, spool_bytes: int):
        self._file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=spool_bytes)
        self._pending: list[tuple[Any, ...]] = []

    def append(self, entry: LedgerEntry) -> None:
        self._pending.append(entry.as_tuple())
        if len(self._pending) >= self.CHUNK:
            self._spill()

    def _spill(self) -> None:
        if self._pending:
            self._file.seek(0, 2)
            self._file.write(pickle.dumps(self._pending, protocol=pickle.HIGHEST_PROTOCOL))
            self._pending = []

    def __iter__(self) -> Iterator[LedgerEntry]:
        self._spill()
        self._file.seek(0)
        while True:
            try:
                chunk = pickle.load(self._file)
            except EOFError:
                return
            for fields in chunk:
                yield LedgerEntry(*fields)

    def close(self) -> None:
        self._file.close()
        self._pending = []


@dataclass(eq=False)
class ImportBatch:
    """A run of contacts (in Efficy order) acknowledged together: up to three import files, the ledger of
    their rows, and the pages' other writes the batch must wait for before the checkpoint passes it.

    ``end_key`` is the last contact key the batch accounts for; ``exhausted`` says no contact follows.
    """

    seq: int
    layouts: Sequence[ImportLayout]
    max_bytes: int
    max_rows: int
    spool_bytes: int
    contacts: int = 0
    rows: int = 0
    end_key: int | None = None
    exhausted: bool = False
    writers: list[ImportFileWriter | None] = field(default_factory=list)
    ledger: Ledger | None = None
    waits: list[trio.Event] = field(default_factory=list)
    written: trio.Event = field(default_factory=trio.Event)
    file_errors: dict[int, str] = field(default_factory=dict)  # file index -> APSIS's message
    post_errors: dict[str, str] = field(default_factory=dict)  # contact id -> APSIS's message
    total: int | None = None
    posts: int = 0  # rows with per-profile calls after the import (their ledger is read only when some are)

    def __post_init__(self) -> None:
        self.writers = [None] * len(self.layouts)

    def _writer(self, index: int) -> ImportFileWriter:
        writer = self.writers[index]
        if writer is None:
            writer = self.writers[index] = ImportFileWriter(self.layouts[index], max_bytes=self.max_bytes,
                                                            max_rows=self.max_rows,
                                                            spool_bytes=self.spool_bytes)
        return writer

    def fits(self) -> bool:
        return self.rows < self.max_rows

    def add(self, key: str, desired: ApsisProfile, row: ImportRow, entry: LedgerEntry) -> bool:
        """Append one contact to the files it needs; False (nothing written) when a file is full."""
        if not row.resubscribe_slots and not row.optout_slots:  # the usual row: the main file alone
            return self._add_main(key, desired, row, entry)
        needed: list[tuple[int, tuple[ConsentKey, ...]]] = [(MAIN, row.main_slots)]
        if row.resubscribe_slots:
            needed.append((RESUBSCRIBE, row.resubscribe_slots))
        if row.optout_slots:
            needed.append((OPTOUT, row.optout_slots))
        writers = [self._writer(i) for i, _ in needed]
        # a contact goes in whole or not at all: every file it needs keeps room for a row of any sane size
        reserve = min(ROW_RESERVE, self.max_bytes // 4)
        if any(w.rows >= w.max_rows or w.bytes + reserve > w.max_bytes for w in writers) and self.rows:
            return False
        done: list[int] = []
        for (index, slots), writer in zip(needed, writers, strict=True):
            extra = (row.add_tags, row.remove_tags) if index == MAIN else ((), ())
            if not writer.add(key, desired.attributes, slots, *extra):
                if done:  # a single row larger than the reserve: a CSV line cannot be taken back
                    raise ValueError(f"contact {key}: one import row is larger than {reserve} bytes")
                return False
            done.append(index)
        entry.files = tuple(done)
        self._accepted(entry)
        return True

    def _add_main(self, key: str, desired: ApsisProfile, row: ImportRow, entry: LedgerEntry) -> bool:
        """:meth:`add` of a row that goes in the main file only (the same checks, one file)."""
        writer = self.writers[MAIN]
        if writer is None:
            writer = self._writer(MAIN)
        if self.rows and (writer.rows >= writer.max_rows or
                          writer.bytes + min(ROW_RESERVE, self.max_bytes // 4) > writer.max_bytes):
            return False
        if not writer.add(key, desired.attributes, row.main_slots, row.add_tags, row.remove_tags):
            return False
        entry.files = _MAIN_ONLY
        self._accepted(entry)
        return True

    def _accepted(self, entry: LedgerEntry) -> None:
        if self.ledger is None:
            self.ledger = Ledger(self.spool_bytes)
        self.ledger.append(entry)
        self.rows += 1
        self.posts += entry.has_post

    def entries(self) -> Iterator[LedgerEntry]:
        if self.ledger is not None:
            yield from self.ledger

    def close(self) -> None:
        """Free the files (idempotent)."""
        for writer in self.writers:
            if writer is not None:
                writer.close()
        if self.ledger is not None:
            self.ledger.close()


def plan_outcome(plan: Plan) -> str:
    return "created" if plan.current is None else "updated"


__all__ = [
    "FILE_NAMES",
    "MAIN",
    "OPTOUT",
    "OPT_IN",
    "RESUBSCRIBE",
    "ImportBatch",
    "ImportRow",
    "Ledger",
    "LedgerEntry",
    "ReportedConsents",
    "import_row",
    "plan_outcome",
    "with_query_membership",
]
