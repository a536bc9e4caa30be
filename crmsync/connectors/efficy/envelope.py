"""Efficy's JSON-RPC envelope: building request contexts and reading results and errors out of responses.

Pure functions, no I/O, so the rules are unit-testable on their own and shared by the client.

Why a module of its own: Efficy answers **HTTP 200 even for business errors** (research §1.4, §9.1) and
hides the error in one of several places, and its dataset results sit at a nesting depth no public SDK
hard-codes (§1.3). Every read therefore goes through :func:`find_error` first and then searches datasets
recursively.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from crmsync.connectors.errors import MalformedResponseError

log = structlog.get_logger("crmsync.connectors.efficy.envelope")

Row = dict[str, Any]


@dataclass(frozen=True)
class RpcError:
    """An error Efficy reported inside a (usually HTTP 200) body: its code and its own message."""

    message: str
    code: str | None = None
    where: str = "body"  # "exception", "top-level", "context", "function": which form carried it


def new_id() -> str:
    """A client correlation id for a context's ``#id`` (Efficy echoes it back)."""
    return uuid.uuid4().hex


def func(name: str, **params: Any) -> dict[str, Any]:
    """One ``@func`` entry. Efficy property names are lower-case and case-sensitive."""
    return {"@name": name, **params}


def context(name: str, funcs: Sequence[Mapping[str, Any]], **params: Any) -> dict[str, Any]:
    """One context (``api``/``consult``/``edit``/``search``) with a fresh ``#id``."""
    return {"@name": name, "#id": new_id(), **params, "@func": [dict(f) for f in funcs]}


# -- errors -----------------------------------------------------------------------------------------------

def _error_from_value(value: Any, holder: Mapping[str, Any], where: str) -> RpcError | None:
    """Read one ``#error`` value: a string, an Enterprise or Efficy-U object, or a ``true`` flag."""
    if value is None or value is False:
        return None
    if isinstance(value, str):
        return RpcError(value.strip() or "unspecified Efficy error", None, where)
    if isinstance(value, Mapping):
        message = (value.get("errorstring") or value.get("message") or value.get("#message")
                   or value.get("detail") or "unspecified Efficy error")
        code = value.get("errorcode", value.get("code"))
        detail = value.get("detail")
        text = str(message)
        if detail and str(detail) != text:
            text = f"{text} ({detail})"
        return RpcError(text, None if code is None else str(code), where)
    # boolean true (or any other truthy marker): the message lives next to it
    message = (holder.get("#message") or holder.get("message") or holder.get("errorstring")
               or "unspecified Efficy error")
    code = holder.get("errorcode", holder.get("code"))
    return RpcError(str(message), None if code is None else str(code), where)


def find_error(body: Any) -> RpcError | None:
    """Return the first error Efficy reported anywhere in a response body, or None.

    Checks every form the research lists (§1.4): an ``{"@name":"exception","#error":…}`` array element,
    an Efficy-U ``{"#error":{code,message,detail}}`` element, a top-level ``{"#error":…}`` or
    ``{"error":true,"code","message"}`` object, and ``#error`` on a context or on an ``@func`` entry as a
    string, an object or a ``true`` flag.
    """
    if isinstance(body, Mapping):
        if "#error" in body:
            return _error_from_value(body["#error"], body, "top-level")
        if body.get("error") is True or (isinstance(body.get("error"), str) and body.get("error")):
            flag = body["error"]
            message = body.get("message") or (flag if isinstance(flag, str) else "unspecified Efficy error")
            code = body.get("code")
            return RpcError(str(message), None if code is None else str(code), "top-level")
        return None
    if not isinstance(body, list):
        return None
    for element in body:
        if not isinstance(element, Mapping):
            continue
        where = "exception" if element.get("@name") == "exception" else "context"
        if "#error" in element:
            err = _error_from_value(element["#error"], element, where)
            if err is not None:
                return err
        funcs = element.get("@func")
        if isinstance(funcs, list):
            for f in funcs:
                if isinstance(f, Mapping) and "#error" in f:
                    err = _error_from_value(f["#error"], f, "function")
                    if err is not None:
                        return err
    return None


# -- results ----------------------------------------------------------------------------------------------

def _datasets(node: Any) -> Iterator[list[Row]]:
    """Every ``{"#class":"dataset","#data":…}`` under ``node``, depth first, in document order."""
    if isinstance(node, Mapping):
        if node.get("#class") == "dataset" and "#data" in node:
            data = node["#data"]
            if isinstance(data, Mapping):  # Efficy U bug variant: "#data": {"data": [...]}
                data = data.get("data", [])
            if isinstance(data, list):
                yield [dict(r) for r in data if isinstance(r, Mapping)]
            return
        for value in node.values():
            yield from _datasets(value)
    elif isinstance(node, list):
        for value in node:
            yield from _datasets(value)


def dataset(func_result: Mapping[str, Any]) -> list[Row]:
    """The rows of the first dataset under one ``@func`` entry (empty when it has none)."""
    for rows in _datasets(func_result):
        return rows
    return []


def function_results(body: Any, context_id: str) -> list[dict[str, Any]]:
    """The ``@func`` entries of the response context whose ``#id`` is ``context_id``.

    Falls back to positional matching only if Efficy did not echo the id (not seen, but cheap to tolerate).
    """
    contexts = [c for c in body if isinstance(c, Mapping)] if isinstance(body, list) else []
    if not contexts:  # no context at all is a broken answer, not "no rows": never read it as "not found"
        raise MalformedResponseError("efficy", "Efficy answered no context")
    match = next((c for c in contexts if c.get("#id") == context_id), None)
    if match is None:
        log.debug("efficy_context_id_not_echoed", context_id=context_id)
        match = next((c for c in contexts if c.get("@name") != "exception"), None)
    if match is None:
        return []
    funcs = match.get("@func")
    return [dict(f) for f in funcs if isinstance(f, Mapping)] if isinstance(funcs, list) else []


def scalar_result(func_result: Mapping[str, Any]) -> Any:
    """A function's scalar ``#result`` (e.g. ``currentuserfullname``)."""
    return func_result.get("#result")


def normalise_key(value: Any) -> str | None:
    """Efficy keys arrive as numbers, numeric strings or floats (SDKs parseFloat them); return ``"12345"``."""
    if type(value) is int:  # the usual key (what the steps below give it)
        return str(value)
    if type(value) is str and 0 < len(value) <= 15 and value.isascii() and value.isdigit() and \
            (value[0] != "0" or len(value) == 1):
        return value  # a canonical decimal key: float() reads it exactly (15 digits < 2**53), so it stays
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text or None
    return str(int(number)) if number.is_integer() and "_" not in text else text
