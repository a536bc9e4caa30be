"""An Efficy answer read as it arrives, its dataset rows reduced to contact ids one by one.

Why: a saved query (api ``query``, ``recordCount: 0``) has no paging (research §1.7, §1.8) and answers every
column of every member in one JSON body: 100,000 members are tens of megabytes of text and several times that
as parsed objects, when only the contact ids are wanted. :class:`AnswerStream` takes the body chunk by chunk
and keeps, besides one chunk and one row, only:

* the answer's *frame*: everything outside dataset rows (contexts, ``@func`` entries, ``#error`` objects,
  ``#class``...), parsed as usual, so that :func:`~.envelope.find_error` and
  :func:`~.envelope.function_results` read it exactly as they read a whole answer;
* in place of each array under a ``#data`` key (and under ``data`` in the Efficy U variant
  ``"#data": {"data": [...]}``), a :class:`ContactIds`: the ids of its rows, in order, packed as integers.

The same bounds as a whole answer's parse (:func:`crmsync.jsonlimits.loads`): UTF-8 only, nesting at most
``max_depth`` (rows included), no NaN/Infinity or out-of-range numbers, no trailing data. Two more, since
memory must not follow the answer: one value (a row, or a string of the frame) at most ``max_value_chars``,
the frame at most ``max_frame_chars``. Anything else, a body that ends early included, is a
:class:`~crmsync.jsonlimits.JsonInputError` at the latest when the body ends: never a shorter list.

One difference from reading the whole answer, for answers Efficy does not send: an array under ``#data`` is
always read as rows, so a dataset nested *inside a row* of a ``#data`` array whose holder is not a dataset is
not found (:func:`~.envelope.dataset` would find it).
"""

from __future__ import annotations

import codecs
import re
from array import array
from collections.abc import Generator, Iterator, Mapping
from typing import Any

from crmsync import jsonlimits
from crmsync.connectors.efficy.envelope import normalise_key
from crmsync.jsonlimits import JsonInputError

#: one row (or one string of the frame) longer than this is refused: a row is a few hundred characters
MAX_VALUE_CHARS = 4 * 2 ** 20
#: everything outside the rows (Efficy echoes the small request back around its results)
MAX_FRAME_CHARS = 4 * 2 ** 20

_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's four (RFC 8259 §2), as json.loads skips them
_INT64 = 2 ** 63
_NUMBER_GOES_ON = frozenset("0123456789.eE+-")
_AFTER_ROW = re.compile(r"[ \t\n\r]*([,\]])[ \t\n\r]*")
# a pending value is decoded again only once this many times as much text has arrived: a long row split over
# many small chunks costs linear time, not quadratic
_GROWTH = 2

Step = Generator[None, None, Any]  # a parse step: yields when it needs more text, returns its value


class ContactIds:
    """Contact ids in answer order, repeats kept, held as 64-bit integers while every id is a canonical
    non-negative integer (``"12345"``, as :func:`~.envelope.normalise_key` writes Efficy's keys), as strings
    from the first id that is not. Iterating gives the ids as strings."""

    __slots__ = ("_ints", "_texts")

    def __init__(self) -> None:
        self._ints: array[int] | None = array("q")
        self._texts: list[str] | None = None

    def append(self, contact_id: str) -> None:
        ints = self._ints
        if ints is not None:
            if contact_id.isdigit() and contact_id.isascii() and (contact_id[0] != "0" or len(contact_id) == 1):
                number = int(contact_id)
                if number < _INT64:
                    ints.append(number)
                    return
            self._texts = [str(n) for n in ints]
            self._ints = None
        assert self._texts is not None
        self._texts.append(contact_id)

    def __len__(self) -> int:
        return len(self._ints) if self._ints is not None else len(self._texts or ())

    def __iter__(self) -> Iterator[str]:
        if self._ints is not None:
            return map(str, self._ints)
        return iter(self._texts or ())

    def unique(self) -> list[str]:
        """The ids without repeats, each where it first came."""
        return list(dict.fromkeys(self))


def row_contact_id(row: Mapping[str, Any], id_field: str) -> str | None:
    """A row's contact id: the column named ``id_field`` (upper case) in any case, the last such column if
    the row repeats it in several cases, normalised; None without one."""
    value = None
    for key, item in row.items():
        if str(key).upper() == id_field:
            value = item
    return normalise_key(value)


class _RowIds:
    """:func:`row_contact_id` for rows that mostly share their columns: which column holds the id is worked
    out once per column list (a few kept: a hostile answer's varied columns fall back to the plain loop)."""

    __slots__ = ("_column_of", "id_field")

    def __init__(self, id_field: str):
        self.id_field = id_field
        self._column_of: dict[tuple[str, ...], str | None] = {}

    def __call__(self, row: dict[str, Any]) -> str | None:
        columns = tuple(row)
        try:
            column = self._column_of[columns]
        except KeyError:
            if len(self._column_of) >= 16:
                return row_contact_id(row, self.id_field)
            column = None
            for key in columns:
                if key.upper() == self.id_field:
                    column = key
            self._column_of[columns] = column
        return None if column is None else normalise_key(row[column])


def first_ids(node: Any) -> ContactIds | None:
    """The ids of the first dataset under ``node``, depth first, in document order, as
    :func:`~.envelope.dataset` finds its rows in a whole answer; None when there is none."""
    if isinstance(node, Mapping):
        if node.get("#class") == "dataset" and "#data" in node:
            data = node["#data"]
            if isinstance(data, Mapping):  # Efficy U bug variant: "#data": {"data": [...]}
                if "data" not in data:
                    return ContactIds()
                data = data["data"]
            return data if isinstance(data, ContactIds) else None
        for value in node.values():
            found = first_ids(value)
            if found is not None:
                return found
    elif isinstance(node, list):
        for value in node:
            found = first_ids(value)
            if found is not None:
                return found
    return None


class AnswerStream:
    """Feed an answer's bytes with :meth:`feed`, then :meth:`close` for its frame (see the module doc).

    ``id_field`` is the contact id column, upper case. Raises :class:`JsonInputError` (a ``ValueError``)
    from :meth:`feed` or :meth:`close` as soon as the answer is known to be malformed or out of bounds.
    """

    def __init__(self, id_field: str, *, max_depth: int = jsonlimits.MAX_DEPTH,
                 max_value_chars: int = MAX_VALUE_CHARS, max_frame_chars: int = MAX_FRAME_CHARS):
        self.id_field = id_field.upper()
        self.max_depth = max_depth
        self.max_value_chars = max_value_chars
        self.max_frame_chars = max_frame_chars
        self.rows = 0  # rows read (objects or not)
        self._utf8 = codecs.getincrementaldecoder("utf-8")("strict")
        self._decoder = jsonlimits.bounded_decoder()
        self._buf = ""
        self._pos = 0
        self._start = 0  # where the value _whole() returned last began
        self._done = False
        self._frame_chars = 0
        self._parse = self._document()
        self._frame: Any = None
        self._finished = False
        self._failed = False
        next(self._parse)  # runs until it needs the first text

    def feed(self, data: bytes) -> None:
        try:
            text = self._utf8.decode(data)
        except UnicodeDecodeError as exc:
            raise JsonInputError(f"not UTF-8: {exc.reason}") from None
        if text:
            self._buf = self._buf[self._pos:] + text if self._pos else self._buf + text
            self._pos = 0
            self._step()

    def close(self) -> Any:
        """The answer's frame, once the whole body has arrived and was well formed."""
        try:
            text = self._utf8.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise JsonInputError(f"not UTF-8: {exc.reason}") from None
        self._buf = self._buf[self._pos:] + text
        self._pos = 0
        self._done = True
        self._step()
        if not self._finished:  # unreachable: at the end of the text every step completes or raises
            raise JsonInputError("the answer ended early")
        return self._frame

    def _step(self) -> None:
        if self._failed:
            raise JsonInputError("the answer was found malformed already")
        if self._finished:
            raise JsonInputError("extra data after the answer")
        try:
            self._parse.send(None)
        except StopIteration as stop:
            self._finished = True
            self._frame = stop.value
        except BaseException:
            self._failed = True
            raise

    # -- the parse: each step yields when the text so far is not enough ----------------------------------

    def _document(self) -> Step:
        yield  # started by __init__, before any text
        frame = yield from self._value(0, in_data=False)
        while True:  # only whitespace may follow
            yield from self._peek()
            if self._pos < len(self._buf):
                raise JsonInputError(f"extra data at character {self._pos}")
            if self._done:
                return frame
            yield

    def _peek(self) -> Step:
        """Skip whitespace; returns the next character, "" at the end of the answer."""
        while True:
            self._pos = _WHITESPACE.match(self._buf, self._pos).end()  # type: ignore[union-attr]
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if self._done:
                return ""
            yield

    def _value(self, depth: int, *, in_data: bool) -> Step:
        char = yield from self._peek()
        if char == "{":
            return (yield from self._object(depth + 1, in_data=in_data))
        if char == "[":
            return (yield from self._array(depth + 1))
        value = yield from self._whole()
        self._count_frame(self._pos - self._start)
        return value

    def _open(self, depth: int) -> None:
        if depth > self.max_depth:
            raise JsonInputError(f"JSON nested deeper than {self.max_depth} levels")
        self._pos += 1
        self._count_frame(1)

    def _count_frame(self, chars: int) -> None:
        self._frame_chars += chars
        if self._frame_chars > self.max_frame_chars:
            raise JsonInputError(f"more than {self.max_frame_chars} characters outside the rows")

    def _object(self, depth: int, *, in_data: bool) -> Step:
        self._open(depth)
        obj: dict[str, Any] = {}
        char = yield from self._peek()
        if char == "}":
            self._pos += 1
            return obj
        while True:
            if char != '"':
                raise JsonInputError(f"expecting a property name at character {self._pos}")
            key = yield from self._value(depth, in_data=False)
            if (yield from self._peek()) != ":":
                raise JsonInputError(f"expecting ':' at character {self._pos}")
            self._pos += 1
            char = yield from self._peek()
            if char == "[" and (key == "#data" or (in_data and key == "data")):
                obj[key] = yield from self._rows(depth + 1)
            else:
                obj[key] = yield from self._value(depth, in_data=key == "#data")
            char = yield from self._peek()
            self._pos += 1
            if char == "}":
                return obj
            if char != ",":
                raise JsonInputError(f"expecting ',' or '}}' at character {self._pos - 1}")
            self._count_frame(1)
            char = yield from self._peek()

    def _array(self, depth: int) -> Step:
        self._open(depth)
        items: list[Any] = []
        char = yield from self._peek()
        if char == "]":
            self._pos += 1
            return items
        while True:
            items.append((yield from self._value(depth, in_data=False)))
            char = yield from self._peek()
            self._pos += 1
            if char == "]":
                return items
            if char != ",":
                raise JsonInputError(f"expecting ',' or ']' at character {self._pos - 1}")
            self._count_frame(1)

    def _rows(self, depth: int) -> Step:
        """A dataset's rows: each decoded whole, its id kept, the row dropped."""
        self._open(depth)
        ids = ContactIds()
        room = self.max_depth - depth  # how deep a row may nest
        id_of = _RowIds(self.id_field)
        decode = self._decoder.raw_decode
        char = yield from self._peek()
        if char == "]":
            self._pos += 1
            return ids
        while True:
            # the common case without a step of its own: the whole row, and what follows it, in the text
            buf, start = self._buf, self._pos
            try:
                row, end = decode(buf, start)
            except (ValueError, RecursionError):  # cut by the chunk, or malformed: _whole() tells which
                end = -1
            if 0 <= end < len(buf) and (type(row) is dict or buf[end] not in _NUMBER_GOES_ON) \
                    and end - start <= self.max_value_chars:
                self._pos = end
            else:
                row = yield from self._whole()
                buf, start = self._buf, self._start
            self.rows += 1
            # a nested container is rare in a row: look for one before walking the row for its depth
            if (room < 1 or buf.find("{", start + 1, self._pos) >= 0 or buf.find("[", start + 1, self._pos) >= 0) \
                    and jsonlimits.depth_exceeds(row, room):
                raise JsonInputError(f"JSON nested deeper than {self.max_depth} levels")
            if type(row) is dict:
                contact_id = id_of(row)
                if contact_id is not None:
                    ids.append(contact_id)
            after = _AFTER_ROW.match(buf, self._pos)
            if after is not None and after.end() < len(buf):
                self._pos = after.end()
                if after[1] == "]":
                    return ids
                continue
            char = yield from self._peek()
            self._pos += 1
            if char == "]":
                return ids
            if char != ",":
                raise JsonInputError(f"expecting ',' or ']' at character {self._pos - 1}")
            yield from self._peek()

    def _whole(self) -> Step:
        """One complete value at the position, decoded by the standard library's C scanner; waits for more
        text while the value may continue past the text so far."""
        tried = 0  # the pending text's length at the last attempt that needed more
        while True:
            pending = len(self._buf) - self._pos
            if self._done or pending >= _GROWTH * tried:
                try:
                    value, end = self._decoder.raw_decode(self._buf, self._pos)
                except RecursionError:
                    raise JsonInputError(f"JSON nested deeper than {self.max_depth} levels") from None
                except JsonInputError:
                    raise
                except ValueError as exc:  # JSONDecodeError, or a number past the int digit limit
                    if self._done:
                        raise JsonInputError(str(exc)) from None
                else:
                    # a number may go on past the text so far (12|34, 1|.5, 1|e9), and a number's prefix is
                    # a number: it is whole only once a character that cannot continue it follows
                    if self._done or (end < len(self._buf) and (
                            self._buf[end] not in _NUMBER_GOES_ON or type(value) not in (int, float))):
                        if end - self._pos > self.max_value_chars:
                            raise JsonInputError(f"a value longer than {self.max_value_chars} characters")
                        self._start, self._pos = self._pos, end  # feed() moves text while a step waits
                        return value
                tried = max(pending, 1)
            if pending > self.max_value_chars:
                raise JsonInputError(f"a value longer than {self.max_value_chars} characters")
            yield
