"""The streamed read of a saved query's answer (issue 8 item 1: the members read "without holding the whole
answer"): for any answer and any split into chunks it gives the ids, and the errors, that reading the whole
answer gives (``jsonlimits.loads`` with the API depth bound, ``envelope.find_error``/``function_results``/
``dataset``); a body cut short, malformed or out of bounds is an error, never a shorter list."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmsync import jsonlimits
from crmsync.connectors.efficy import envelope
from crmsync.connectors.efficy.answer_stream import AnswerStream, ContactIds, first_ids
from crmsync.connectors.http import MAX_ANSWER_DEPTH

ID = "K_CONTACT"
CTX = "ctx-0001"


def whole(body: bytes) -> tuple[Any, list[str] | None]:
    """Today's whole-answer reading: the error found, else the ids (run_query's loop, repeats kept)."""
    doc = jsonlimits.loads(body, max_depth=MAX_ANSWER_DEPTH)
    error = envelope.find_error(doc)
    if error is not None or not isinstance(doc, list):
        return error, None
    results = envelope.function_results(doc, CTX)
    ids = []
    for row in envelope.dataset(results[0]) if results else []:
        cid = envelope.normalise_key({str(k).upper(): v for k, v in row.items()}.get(ID))
        if cid is not None:
            ids.append(cid)
    return None, ids


def streamed(chunks: list[bytes], **bounds: int) -> tuple[Any, list[str] | None]:
    reader = AnswerStream(ID, max_depth=MAX_ANSWER_DEPTH, **bounds)
    for chunk in chunks:
        reader.feed(chunk)
    frame = reader.close()
    error = envelope.find_error(frame)
    if error is not None or not isinstance(frame, list):
        return error, None
    results = envelope.function_results(frame, CTX)
    found = first_ids(results[0]) if results else None
    return None, list(found) if found is not None else []


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts})
    return [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]


# -- generated answers --------------------------------------------------------------------------------------

key_values = st.one_of(
    st.integers(min_value=-5, max_value=2 ** 70), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["12", " 0042 ", "1e3", "12.5", "abc", "", "1_000", "٣", "-7", "007", "9" * 25]),
    st.text(max_size=6), st.none(), st.booleans())
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8),
                    st.floats(allow_nan=False, allow_infinity=False))
nested = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=3), inner, max_size=3), max_leaves=6)


@st.composite
def rows(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(nested)  # a row that is not an object: ignored by both readings
    row: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from([ID, "k_contact", "K_Contact", "NAME", "EMAIL1", "#data"]),
                              max_size=4)):
        row[name] = draw(key_values) if name.upper() == ID else draw(nested)
    return row


@st.composite
def datasets(draw: st.DrawFn) -> dict[str, Any]:
    data: Any = draw(st.lists(rows(), max_size=6))
    if draw(st.integers(0, 5)) == 0:
        data = {"data": data}  # Efficy U's bug variant
    items = [("#class", "dataset"), ("#data", data)]
    if draw(st.booleans()):
        items.reverse()  # key order is not promised
    return dict(items)


@st.composite
def func_results(draw: st.DrawFn) -> dict[str, Any]:
    result: Any = draw(datasets())
    for _ in range(draw(st.integers(0, 2))):  # the nesting under the function is not promised either
        result = {draw(st.sampled_from(["#result", "x", "data"])): result}
    func: dict[str, Any] = {"@name": "query", "key": 5, "#result": result}
    if draw(st.integers(0, 6)) == 0:
        func["#error"] = draw(st.sampled_from(["Query 5 not found", {"errorcode": 1020, "errorstring": "gone"},
                                              True, False, None]))
    if draw(st.booleans()):
        func["more"] = draw(datasets())  # a second dataset: the first one counts
    return func


@st.composite
def answers(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from([{"#error": "Please Logon to Database"}, {"error": True, "message": "x"},
                                     {"a": 1}, None, "x", 5]))
    context: dict[str, Any] = {"#id": draw(st.sampled_from([CTX, CTX, "other"])), "@name": "api",
                               "@func": draw(st.lists(func_results(), min_size=0, max_size=2))}
    if draw(st.integers(0, 6)) == 0:
        context["#error"] = "Invalid User"
    body: list[Any] = [context]
    if draw(st.integers(0, 4)) == 0:
        body.insert(draw(st.integers(0, 1)), {"@name": "exception", "#error": {"errorstring": "boom"}})
    if draw(st.integers(0, 4)) == 0:
        body.append({"#id": "x", "@name": "api", "@func": [draw(func_results())]})
    return body


def encode(doc: Any, indent: int | None) -> bytes:
    return json.dumps(doc, indent=indent, ensure_ascii=False).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answers(), st.sampled_from([None, 0, 2]), st.lists(st.integers(min_value=0), max_size=12))
def test_streamed_ids_and_errors_are_the_whole_answers_for_any_chunks(doc: Any, indent: int | None,
                                                                      cuts: list[int]) -> None:
    body = encode(doc, indent)
    try:
        expected = whole(body)
    except Exception as exc:  # only MalformedResponseError ("no context") may come from the envelope
        with pytest.raises(type(exc)):
            streamed(split(body, cuts))
        return
    assert streamed(split(body, cuts)) == expected


@settings(max_examples=200, deadline=None)
@given(answers(), st.data())
def test_a_body_cut_short_is_an_error_never_fewer_ids(doc: Any, data: st.DataObject) -> None:
    body = encode(doc, None)
    cut = data.draw(st.integers(0, len(body) - 1))
    cuts = data.draw(st.lists(st.integers(min_value=0), max_size=6))
    with pytest.raises(jsonlimits.JsonInputError):
        streamed(split(body[:cut], cuts))


MUTATIONS = st.sampled_from([b"", b"[", b"]", b"{", b"}", b",", b":", b'"', b"\\", b"NaN", b"1e999", b"\xe9",
                             b"\xc3", b"-", b"0", b"tru", b" ", b"\x00"])


@settings(max_examples=300, deadline=None)
@given(answers(), st.data())
def test_a_damaged_body_is_refused_exactly_when_the_whole_parse_refuses_it(doc: Any, data: st.DataObject) -> None:
    body = bytearray(encode(doc, None))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(body)))
        span = data.draw(st.integers(0, 2))
        body[at:at + span] = data.draw(MUTATIONS)
    cuts = data.draw(st.lists(st.integers(min_value=0), max_size=8))
    try:
        jsonlimits.loads(bytes(body), max_depth=MAX_ANSWER_DEPTH)
    except ValueError:
        with pytest.raises(jsonlimits.JsonInputError):
            streamed(split(bytes(body), cuts))
        return
    reader = AnswerStream(ID, max_depth=MAX_ANSWER_DEPTH)
    for chunk in split(bytes(body), cuts):
        reader.feed(chunk)
    reader.close()  # accepted by both


# -- hostile answers, one by one ----------------------------------------------------------------------------

def query_answer(rows_text: str) -> bytes:
    return (f'[{{"#id": "{CTX}", "@name": "api", "@func": [{{"@name": "query", "key": 5, '
            f'"#result": {{"#class": "dataset", "#data": [{rows_text}]}}}}]}}]').encode()


def test_a_row_past_the_value_bound_is_refused_whatever_the_chunks() -> None:
    body = query_answer('{"K_CONTACT": 1}, {"K_CONTACT": 2, "NOTE": "' + "x" * 5000 + '"}')
    for size in (1, 7, 64, len(body)):
        with pytest.raises(jsonlimits.JsonInputError, match="longer than 4096"):
            streamed([body[i:i + size] for i in range(0, len(body), size)], max_value_chars=4096)
    assert streamed([body], max_value_chars=8192) == (None, ["1", "2"])


def test_text_outside_the_rows_past_the_frame_bound_is_refused() -> None:
    body = ('[{"#id": "' + CTX + '", "pad": [' + ",".join(["1"] * 3000) + '], "@func": []}]').encode()
    with pytest.raises(jsonlimits.JsonInputError, match="outside the rows"):
        streamed([body[i:i + 100] for i in range(0, len(body), 100)], max_frame_chars=4096)


@pytest.mark.parametrize("rows_text", [
    '{"K_CONTACT": 1, "X": ' + "[" * 60 + "]" * 60 + "}",  # the row alone is shallow enough, not under #data
    "[" * 59 + "]" * 59,
])
def test_rows_count_toward_the_answer_depth(rows_text: str) -> None:
    body = query_answer(rows_text)
    with pytest.raises(ValueError, match="deeper"):
        jsonlimits.loads(body, max_depth=MAX_ANSWER_DEPTH)
    with pytest.raises(jsonlimits.JsonInputError, match="deeper"):
        streamed([body[i:i + 5] for i in range(0, len(body), 5)])


@pytest.mark.parametrize("rows_text", ['{"K_CONTACT": NaN}', '{"K_CONTACT": 1e999}', '{"K_CONTACT": Infinity}',
                                       '{"K_CONTACT": 1,}', '{"K_CONTACT" 1}', "{'K_CONTACT': 1}",
                                       '{"K_CONTACT": 1} {"K_CONTACT": 2}', '{"K_CONTACT": 1},',
                                       '{"K_CONTACT": "a\x01b"}', '{"K_CONTACT": ' + "9" * 5000 + "}"])
def test_a_malformed_row_is_refused(rows_text: str) -> None:
    body = query_answer(rows_text)
    with pytest.raises(ValueError):
        jsonlimits.loads(body, max_depth=MAX_ANSWER_DEPTH)
    for size in (1, 3, len(body)):
        with pytest.raises(jsonlimits.JsonInputError):
            streamed([body[i:i + size] for i in range(0, len(body), size)])


def test_utf8_split_between_chunks_is_read_and_latin1_is_refused() -> None:
    body = query_answer('{"K_CONTACT": "é1"}, {"K_CONTACT": 2}')
    assert streamed([body[i:i + 1] for i in range(len(body))]) == (None, ["é1", "2"])
    with pytest.raises(jsonlimits.JsonInputError, match="UTF-8"):
        streamed([body.replace("é".encode(), b"\xe9")])
    cut = body.index("é".encode()) + 1  # the body ends inside a character
    with pytest.raises(jsonlimits.JsonInputError):
        streamed([body[:cut]])


def test_a_number_split_between_chunks_is_read_whole() -> None:
    body = query_answer('{"K_CONTACT": 123456}')
    at = body.index(b"123456") + 3
    assert streamed([body[:at], body[at:]]) == (None, ["123456"])
    for bare, value in ((b"[1234]", 1234), (b"[1.5]", 1.5), (b"[1e3]", 1e3), (b"[-2E-1]", -0.2)):
        for at in range(1, len(bare)):  # a number's prefix is a number: "1" then ".5" is 1.5, not 1
            reader = AnswerStream(ID)
            reader.feed(bare[:at])
            reader.feed(bare[at:])
            assert reader.close() == [value]


def test_contact_ids_keep_order_and_repeats_and_fall_back_to_text() -> None:
    ids = ContactIds()
    for cid in ["30", "7", "30", "0", "9" * 19]:
        ids.append(cid)
    assert list(ids) == ["30", "7", "30", "0", "9" * 19] and len(ids) == 5
    for cid in ["007", "x-1", "7"]:
        ids.append(cid)
    assert list(ids) == ["30", "7", "30", "0", "9" * 19, "007", "x-1", "7"]
    assert ids.unique() == ["30", "7", "0", "9" * 19, "007", "x-1"]


@settings(max_examples=150, deadline=None)
@given(st.integers(50, 66), st.sampled_from(["[", '{"a":']), st.integers(0, 30), st.data())
def test_depth_is_bounded_as_the_whole_parse_bounds_it_wherever_the_chunks_fall(
        levels: int, opener: str, padding: int, data: st.DataObject) -> None:
    closer = "]" if opener == "[" else "}"
    deep = opener * levels + "1" + closer * levels
    row = '{"K_CONTACT": 7, "PAD": "' + "p" * padding + '", "X": ' + deep + "}"
    body = query_answer('{"K_CONTACT": 1}, ' + row)
    cuts = data.draw(st.lists(st.integers(min_value=0), max_size=10))
    try:
        expected = whole(body)
    except ValueError:
        with pytest.raises(jsonlimits.JsonInputError, match="deeper"):
            streamed(split(body, cuts))
        return
    assert streamed(split(body, cuts)) == expected
