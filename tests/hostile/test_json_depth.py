"""``jsonlimits.depth_exceeds`` walks every API answer; its level-by-level walk must say exactly what the
original item-by-item walk said (nesting beyond the bound refused, everything else accepted)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crmsync import jsonlimits
from crmsync.jsonlimits import JsonInputError, depth_exceeds


def reference_depth_exceeds(value: Any, max_depth: int) -> bool:
    """The previous implementation (one stack entry per child), kept as the reference model."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def nested(depth: int, *, kind: str = "list") -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4),
    max_leaves=60,
)


@settings(max_examples=300, deadline=None)
@given(json_values, st.integers(min_value=0, max_value=8))
def test_depth_matches_the_reference_walk(value: Any, max_depth: int) -> None:
    assert depth_exceeds(value, max_depth) is reference_depth_exceeds(value, max_depth)


@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize("depth", [1, 2, 5, 32, 33, 64, 65])
def test_bound_is_exact_at_every_depth(kind: str, depth: int) -> None:
    value = nested(depth, kind=kind)
    assert not depth_exceeds(value, depth)
    assert depth_exceeds(value, depth - 1)


def test_scalars_and_empty_containers() -> None:
    assert not depth_exceeds(1, 0)
    assert not depth_exceeds("x", 0)
    assert depth_exceeds([], 0)
    assert not depth_exceeds([], 1)
    assert depth_exceeds([[], {}], 1)
    assert not depth_exceeds([[], {}, 3], 2)


def test_one_deep_branch_among_wide_shallow_ones_is_refused() -> None:
    page = {"result": [{"K": str(i), "p": [{"id": i}]} for i in range(500)]}
    assert not depth_exceeds(page, 5)
    assert depth_exceeds(page, 4)
    page["result"][250]["p"][0]["id"] = nested(40)  # type: ignore[index]
    assert depth_exceeds(page, 32)
    with pytest.raises(JsonInputError):
        jsonlimits.loads(json.dumps(page))
    assert jsonlimits.loads(json.dumps(page), max_depth=64) == page
