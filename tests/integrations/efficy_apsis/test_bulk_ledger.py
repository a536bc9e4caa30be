"""The bulk full sync's ledger gives back, in order, exactly the entries the plan stage put in (it was a JSON
line per entry; it is now pickled chunks): what the acknowledge stage records depends on it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from crmsync.connectors.apsis.records import CHANNEL_EMAIL, CHANNEL_SMS, ConsentKey
from crmsync.daemon.integrations.efficy_apsis.bulk import Ledger, LedgerEntry
from crmsync.daemon.integrations.efficy_apsis.rules import OptOutRecord

NEWS = ConsentKey("topics.news", CHANNEL_EMAIL)
SMS = ConsentKey("topics.sms", CHANNEL_SMS)


def entry(i: int) -> LedgerEntry:
    at = datetime(2026, 1, 1, 12, i % 60, tzinfo=UTC)
    record = OptOutRecord(str(i), "P1", NEWS, at if i % 2 else None, None if i % 3 else at, at)
    return LedgerEntry(
        str(i), "created" if i % 2 else "updated", (0,) if i % 5 else (0, 2),
        '{"attributes":{"x":"é ' + str(i) + '"},"consents":[],"tags":[]}',
        at.isoformat() if i % 7 else None,
        put_optouts=(record,) if i % 11 == 0 else (), drop_optouts=(record,) if i % 13 == 0 else (),
        post_add_tags=("tags.vip",) if i % 4 == 0 else (), post_remove_tags=("tags.old",) if i % 6 == 0 else (),
        post_clear=("attributes.mobile",) if i % 9 == 0 else (), post_optouts=(SMS,) if i % 17 == 0 else ())


@pytest.mark.parametrize("count", [0, 1, Ledger.CHUNK - 1, Ledger.CHUNK, 2 * Ledger.CHUNK + 7])
@pytest.mark.parametrize("spool_bytes", [10, 10_000_000])  # on disk from the first chunk, or in memory
def test_entries_come_back_equal_and_in_order(count: int, spool_bytes: int) -> None:
    ledger = Ledger(spool_bytes)
    entries = [entry(i) for i in range(count)]
    for e in entries:
        ledger.append(e)
    assert list(ledger) == entries
    assert list(ledger) == entries  # read twice: the write stage, then the acknowledge stage
    assert [e.has_post for e in ledger] == [e.has_post for e in entries]
    ledger.close()
