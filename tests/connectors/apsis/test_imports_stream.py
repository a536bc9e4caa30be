"""Streamed import files (rows on a spooled file, sized by the caps), tags in imports ([U] settings), the
simulator's per-call latency and time-based import processing."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from crmsync.connectors.apsis.client import ApsisClient
from crmsync.connectors.apsis.imports import ImportFileWriter, ImportLayout, TagImportSettings, csv_fast_line
from crmsync.connectors.apsis.records import ATTR_CRMID, ATTR_EMAIL, CHANNEL_EMAIL, ConsentKey
from crmsync.connectors.apsis.simulator import ApsisSimulator

NEWS = ConsentKey("usercreated.topics.newsletter-a1b2c3", CHANNEL_EMAIL)
VIP = "usercreated.tags.vip-ab12cd"
PROSPECT = "usercreated.tags.prospect-ef34gh"
LAYOUT = ImportLayout("opt-in", False, (ATTR_CRMID, ATTR_EMAIL), (NEWS,), (PROSPECT, VIP))


def test_a_file_refuses_the_row_that_would_pass_its_byte_or_row_cap() -> None:
    header = len(",".join(LAYOUT.header())) + 1
    writer = ImportFileWriter(LAYOUT, max_bytes=header + 60, max_rows=10, spool_bytes=10)
    assert writer.add("1", {ATTR_CRMID: "1", ATTR_EMAIL: "a@x.be"}, [NEWS], [VIP])
    assert not writer.add("2", {ATTR_CRMID: "2", ATTR_EMAIL: "b" * 40 + "@x.be"}, [NEWS])
    assert writer.rows == 1 and writer.bytes <= header + 60
    text = writer.file().read().decode()
    assert text.splitlines()[1] == "1,1,a@x.be,1,,1"  # slot applied; Prospect left alone; VIP added
    writer.close()
    capped = ImportFileWriter(LAYOUT, max_bytes=10**6, max_rows=1)
    assert capped.add("1", {}) and not capped.add("2", {})
    capped.close()


async def test_streamed_import_with_tags_and_resubscription(
        autojump_clock: MockClock, make_client: Callable[..., ApsisClient], sim: ApsisSimulator) -> None:
    client = make_client()
    sim.add_profile("1", consents={NEWS: "opt-out"}, tags=[PROSPECT])
    sim.add_profile("2", consents={NEWS: "opt-out"})
    versions = await client.attribute_versions()
    writer = ImportFileWriter(LAYOUT, max_bytes=10**6, max_rows=100)
    writer.add("1", {ATTR_CRMID: "1", ATTR_EMAIL: "a@x.be"}, [NEWS], [VIP], [PROSPECT])
    writer.add("3", {ATTR_CRMID: "3", ATTR_EMAIL: "c@x.be"}, [NEWS])
    await client.run_import_stream(LAYOUT.request(versions), writer.file(), rows=writer.rows)
    writer.close()
    assert sim.tags_of("1") == {VIP} and sim.consents_of("1")[NEWS] == "opt-out"  # not re-subscribed
    assert sim.consents_of("3")[NEWS] == "opt-in"
    resub = ImportLayout("opt-in", True, (ATTR_EMAIL,), (NEWS,))
    request = resub.request(versions)
    assert request["consent_mappings"][0]["consents"][0]["resubscribe_if_opted_out"] is True
    again = ImportFileWriter(resub, max_bytes=10**6, max_rows=100)
    again.add("2", {ATTR_EMAIL: "b@x.be"}, [NEWS])
    await client.run_import_stream(request, again.file(), rows=again.rows)
    again.close()
    assert sim.consents_of("2")[NEWS] == "opt-in"


async def test_tag_mapping_key_is_a_setting_and_unknown_tags_are_refused(
        autojump_clock: MockClock, make_client: Callable[..., ApsisClient], sim: ApsisSimulator) -> None:
    from crmsync.connectors.errors import FatalApiError

    client = make_client()
    versions = await client.attribute_versions()
    other = ImportLayout("opt-in", False, (ATTR_CRMID,), (), ("usercreated.tags.nope",),
                         tag_settings=TagImportSettings(mapping_key="tag_mappings"))
    writer = ImportFileWriter(other, max_bytes=10**6, max_rows=10)
    writer.add("9", {ATTR_CRMID: "9"}, (), ("usercreated.tags.nope",))
    with pytest.raises(FatalApiError, match="Unknown tag"):
        await client.run_import_stream(other.request(versions), writer.file(), rows=1)
    writer.close()


async def test_latency_and_time_based_import_processing(
        autojump_clock: MockClock, make_client: Callable[..., ApsisClient], clock: object) -> None:
    sim = ApsisSimulator(clock, client_id="crmsync", client_secret="s3cr3t-value-never-logged",  # type: ignore[arg-type]
                         latency=0.02, import_rows_per_second=10.0)
    client = make_client(sim, import_poll_first=0.25, import_poll_interval=8.0)
    start = trio.current_time()
    await client.list_keyspaces()
    assert trio.current_time() - start >= 0.04  # token + one call, 20 ms each
    versions = await client.attribute_versions()
    writer = ImportFileWriter(LAYOUT, max_bytes=10**6, max_rows=100)
    for i in range(50):
        writer.add(str(i), {ATTR_CRMID: str(i), ATTR_EMAIL: f"{i}@x.be"}, [NEWS])
    start = trio.current_time()
    await client.run_import_stream(LAYOUT.request(versions), writer.file(), rows=writer.rows)
    elapsed = trio.current_time() - start
    writer.close()
    assert 5.0 <= elapsed < 16.0  # 50 rows at 10 rows/s, polls backing off from 0.25 s
    polls = [p for m, p in sim.requests if m == "GET" and "/imports/" in p]
    assert len(polls) <= 6
    assert len(sim.profiles()) == 50


async def test_imports_left_unfinished_by_a_dead_process_delay_but_do_not_fail_the_next_one(
        autojump_clock: MockClock, make_client: Callable[..., ApsisClient], clock: object) -> None:
    sim = ApsisSimulator(clock, client_id="crmsync", client_secret="s3cr3t-value-never-logged",  # type: ignore[arg-type]
                         upload_url_lifetime=120.0)
    client = make_client(sim, import_poll_interval=5.0)
    versions = await client.attribute_versions()
    request = LAYOUT.request(versions)
    for _ in range(3):  # created, never uploaded: they hold APSIS's 3 slots until their upload URL expires
        await client._send_json("POST", "/v2/audience/sections/com.apsis1.sections.default/imports", request)
    writer = ImportFileWriter(LAYOUT, max_bytes=10**6, max_rows=10)
    writer.add("1", {ATTR_CRMID: "1", ATTR_EMAIL: "a@x.be"}, [NEWS])
    start = trio.current_time()
    result = await client.run_import_stream(request, writer.file(), rows=1)
    writer.close()
    assert result.status == "completed" and sim.consents_of("1")[NEWS] == "opt-in"
    assert trio.current_time() - start >= 120  # waited for the slots, never gave up
    assert sim.rate_limited > 0


# -- the unquoted fast path writes what csv.writer writes ------------------------------------------------

_cells = st.lists(st.text(alphabet=st.sampled_from([*'ab ,"\r\n\t;é1\'', "\u2028", "\x00"]), max_size=6),
                  min_size=0, max_size=6)


@settings(max_examples=500, deadline=None)
@given(_cells)
def test_fast_csv_line_is_the_csv_writers_line_or_declines(values: list[str]) -> None:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    fast = csv_fast_line(values)
    if fast is not None:
        assert fast == buf.getvalue().encode("utf-8")
    elif values and not any(ch in "".join(values) for ch in ',"\r\n') and (len(values) > 1 or values[0]):
        raise AssertionError(f"declined a line that needs no quoting: {values!r}")


# -- a file's rows are the layout's cells (the reference: the module docstring's column layout) ----------

SMS = ConsentKey("usercreated.topics.offers-d4e5f6", "com.apsis1.channels.sms")
_ROW_LAYOUT = ImportLayout("opt-in", False, (ATTR_CRMID, ATTR_EMAIL, "mobile"), (NEWS, SMS), (PROSPECT, VIP))
_attribute_values = st.none() | st.booleans() | st.integers(-5, 5) | st.text(
    alphabet=st.sampled_from([*'ab ,"\n1é']), max_size=5)
_rows = st.tuples(
    st.text(alphabet="0123456789", min_size=1, max_size=4),
    st.dictionaries(st.sampled_from([ATTR_CRMID, ATTR_EMAIL, "mobile", "other"]), _attribute_values),
    st.lists(st.sampled_from([NEWS, SMS]), unique=True),
    st.sets(st.sampled_from([PROSPECT, VIP])), st.sets(st.sampled_from([PROSPECT, VIP])))


def _reference_cells(key: str, attributes: dict[str, object], slots: list[ConsentKey], add: set[str],
                     remove: set[str]) -> list[str]:
    def cell(value: object) -> str:
        return "" if value is None else ("true" if value else "false") if isinstance(value, bool) else str(value)

    tags = _ROW_LAYOUT.tag_settings
    return ([key] + [cell(attributes.get(a)) for a in _ROW_LAYOUT.attributes]
            + ["1" if ck in slots else "0" for ck in _ROW_LAYOUT.slots]
            + [tags.add_cell if t in add else tags.remove_cell if t in remove else "" for t in _ROW_LAYOUT.tags])


@settings(max_examples=200, deadline=None)
@given(st.lists(_rows, max_size=5))
def test_a_files_rows_are_the_layouts_cells(rows: list[tuple[str, dict[str, object], list[ConsentKey],
                                                             set[str], set[str]]]) -> None:
    writer = ImportFileWriter(_ROW_LAYOUT, max_bytes=10**6, max_rows=100)
    expected = io.StringIO()
    out = csv.writer(expected, lineterminator="\n")
    out.writerow(_ROW_LAYOUT.header())
    for key, attributes, slots, add, remove in rows:
        assert writer.add(key, attributes, slots, sorted(add), sorted(remove - add))
        out.writerow(_reference_cells(key, attributes, slots, add, remove - add))
    assert writer.file().read() == expected.getvalue().encode("utf-8")
    writer.close()
