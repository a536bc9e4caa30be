"""JSON from outside (control lines, webhook bodies, API answers), parsed with bounds.

``json.loads`` recurses once per nesting level, so a line of 5,000 ``[`` raises :class:`RecursionError`, which
is not a :class:`ValueError` and escapes every ``except ValueError`` around a parse. :func:`loads` turns that,
too-deep nesting and the non-JSON constants ``NaN``/``Infinity`` into :class:`JsonInputError` (a
``ValueError``), so every caller's existing "bad JSON" path handles them.
"""

from __future__ import annotations

import json
from itertools import chain
from typing import Any

MAX_DEPTH = 32  # control requests and webhook bodies need 4 or 5 levels
_CONTAINERS = (dict, list)


class JsonInputError(ValueError):
    """Not JSON, or JSON outside the bounds (nesting, constants)."""


def _refuse_constant(name: str) -> Any:
    raise JsonInputError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise JsonInputError(f"number {text[:40]} is out of range")
    return value


def loads(data: str | bytes | bytearray, *, max_depth: int = MAX_DEPTH, constants: bool = False) -> Any:
    """Parse ``data``; :class:`JsonInputError` for anything malformed, too deep or (unless ``constants``)
    holding NaN/Infinity or a number too large for a float (``1e999``). Bytes must be UTF-8.
    Never raises anything but a ``ValueError``."""
    try:
        if isinstance(data, bytes | bytearray):
            # UTF-8 only (RFC 8259 8.1): json.loads would otherwise guess UTF-16/32 from the first bytes
            data = bytes(data).decode("utf-8")
        value = (json.loads(data) if constants else
                 json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float))
    except RecursionError:
        raise JsonInputError(f"JSON nested deeper than {max_depth} levels") from None
    except JsonInputError:
        raise
    except (ValueError, TypeError) as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise JsonInputError(str(exc)) from None
    if depth_exceeds(value, max_depth):
        raise JsonInputError(f"JSON nested deeper than {max_depth} levels")
    return value


def depth_exceeds(value: Any, max_depth: int) -> bool:
    """True when ``value`` nests lists/objects more than ``max_depth`` deep (iterative: no recursion).

    Walked level by level, keeping only the containers of each level: every API answer passes through
    here, and most of its values are scalars, dropped by one C-level comprehension per level."""
    level = [value] if isinstance(value, _CONTAINERS) else []
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            return True
        level = [child for child in chain.from_iterable(
            item.values() if isinstance(item, dict) else item for item in level) if isinstance(child, _CONTAINERS)]
    return False


def bounded_decoder() -> json.JSONDecoder:
    """A decoder refusing what :func:`loads` refuses among values (NaN/Infinity, numbers too large for a
    float), for parsing piece by piece with ``raw_decode``; nesting is the caller's to bound."""
    return json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
