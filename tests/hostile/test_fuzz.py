"""Hypothesis fuzzing of every parser of outside input (issue 9): webhook bodies, control lines and the four
APIs' answers. Each asserts only that the documented exception types escape (and, where the contract says
more, what an accepted input must look like). HYPOTHESIS_PROFILE=nightly runs the long search."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import httpx
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmsync.connectors.errors import ApiError
from crmsync.connectors.everyaction.records import parse_contacts_csv
from crmsync.daemon.control import ControlServer
from crmsync.daemon.integrations.base import WebhookRejected
from crmsync.daemon.integrations.efficy_apsis.realtime import parse_body
from crmsync.state import Database
from tests.conftest import fake_config, start_supervisor
from tests.hostile import test_corpus_upstream as upstream
from tests.hostile.corpus import Answer

FUZZ = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], deadline=None)

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10 ** 30), max_value=10 ** 30),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
                    st.sampled_from(["42", "-7", "1.5", "0", "١٢", "\u202e1", "../x", "1" * 40, "updated", "Update"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)), max_leaves=25)


def nested(depth: int, core: str = "1") -> str:
    return "[" * depth + core + "]" * depth


raw_json = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
    st.integers(min_value=0, max_value=6000).map(lambda d: nested(d).encode()),
    st.sampled_from([b"NaN", b"1e999", b"[1e999]", b"-Infinity", b"\xef\xbb\xbf[]", b'"\\ud800"']),
)

# -- webhook bodies -----------------------------------------------------------------------------------------

contract_items = st.lists(st.fixed_dictionaries(
    {"record_id": json_values, "operation": st.one_of(st.sampled_from(["created", "updated", "deleted"]), scalars)},
    optional={"consent_base_id": json_values, "has_consented": json_values}), max_size=4)
native_bodies = st.fixed_dictionaries({"records": st.lists(st.fixed_dictionaries(
    {"table": st.one_of(st.just(11000), scalars), "key": json_values,
     "operation": st.one_of(st.sampled_from(["Create", "Update", "Delete"]), scalars)},
    optional={"date": scalars}), max_size=4)}, optional={"database": scalars, "version": scalars})
webhook_bodies = st.one_of(raw_json, contract_items.map(lambda v: json.dumps(v).encode()),
                           native_bodies.map(lambda v: json.dumps(v).encode()))
CONTACT_KEY = re.compile(r"[1-9][0-9]{0,17}")


@FUZZ
@given(webhook_bodies)
def test_fuzz_webhook_bodies_only_rejected_escapes(body: bytes) -> None:
    try:
        events = parse_body(body)
    except WebhookRejected:
        return
    for event in events:  # whatever is accepted names a contact by a sane key
        assert CONTACT_KEY.fullmatch(event.payload["contact_id"]), event.payload


# -- control lines --------------------------------------------------------------------------------------------

DOCUMENTED_CODES = {"bad_json", "bad_request", "unknown_command", "unknown_integration", "unknown_flow",
                    "unknown_run", "not_active", "not_running", "already_running", "unsupported", "invalid_config",
                    "line_too_long", "idle_timeout", "too_many_clients", "internal_error", "flow_error", "no_runs"}
commands = st.sampled_from(["hello", "status", "activate", "deactivate", "full_sync", "cancel", "run_flow", "runs",
                            "report", "reload", "nope", ""])
requests = st.fixed_dictionaries({"cmd": st.one_of(commands, scalars)}, optional={
    "id": json_values, "args": st.one_of(st.dictionaries(st.sampled_from(
        ["integration", "name", "flow", "limit", "offset", "run_id", "run", "wait", "x"]), json_values, max_size=4),
        json_values)})
control_lines = st.one_of(requests.map(lambda r: json.dumps(r).encode()), raw_json)


@settings(FUZZ, max_examples=max(25, settings.default.max_examples // 4))  # a daemon per example: costlier
@given(st.lists(control_lines, min_size=1, max_size=8))
def test_fuzz_control_lines_always_get_a_documented_reply(lines: list[bytes]) -> None:
    async def run() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            db = await Database.open(Path(tmp) / "t.db", inline=True)
            try:
                async with trio.open_nursery() as nursery:
                    from crmsync.clock import WallClock

                    supervisor = await start_supervisor(nursery, fake_config(Path(tmp), {"a": {}}), db, WallClock())

                    async def reload() -> dict[str, Any]:
                        return {}

                    server = ControlServer(supervisor, idle_timeout=300, reload_config=reload)
                    for line in lines:
                        reply = await server.dispatch_line(line)
                        json.dumps(reply)  # it can be sent
                        assert isinstance(reply["ok"], bool)
                        if not reply["ok"]:
                            assert reply["error"]["code"] in DOCUMENTED_CODES, reply
                    nursery.cancel_scope.cancel()
            finally:
                await db.aclose()

    trio.run(run)


# -- the four APIs' answers --------------------------------------------------------------------------------------

statuses = st.sampled_from([200, 200, 200, 201, 204, 400, 401, 403, 404, 409, 422, 429, 500, 502, 503])
shaped = {
    "ea": st.fixed_dictionaries({}, optional={"vanId": json_values, "firstName": json_values, "emails": json_values,
                                              "phones": json_values, "addresses": json_values,
                                              "errors": json_values}).map(lambda v: json.dumps(v).encode()),
    "efficy": st.lists(st.fixed_dictionaries({}, optional={
        "#id": scalars, "@name": st.one_of(st.just("consult"), st.just("exception"), scalars),
        "@func": st.lists(st.fixed_dictionaries({}, optional={"#result": json_values, "#error": json_values,
                                                              "@name": scalars}), max_size=3),
        "#error": json_values}), max_size=3).map(lambda v: json.dumps(v).encode()),
    "apsis": st.fixed_dictionaries({}, optional={"items": json_values, "title": json_values, "detail": json_values,
                                                 "status": json_values}).map(lambda v: json.dumps(v).encode()),
    "mc": st.builds(lambda success, tag, inner, text: (
        f'<response success="{success}"><{tag}>{inner}</{tag}>{text}</response>').encode(),
        st.sampled_from(["true", "false", "", "yes"]), st.sampled_from(["profile", "error", "x"]),
        st.text(alphabet="<>/&;abc =\"'", max_size=40), st.text(max_size=20)),
    "ea-csv": st.text(max_size=400).map(lambda t: ("VanID,DateModified\n" + t).encode()),
}


def _answers(system: str) -> Any:
    return st.builds(lambda status, body: Answer("fuzz", status, "application/json", body, "ApiError"),
                     statuses, st.one_of(raw_json, shaped[system]))


async def _call(system: str, answer: Answer) -> None:
    make, call = upstream.SYSTEMS[system]
    client = make(upstream._transport(answer))
    try:
        await call(client)
    except ApiError:
        pass
    finally:
        await client.aclose()


@FUZZ
@given(_answers("ea"))
def test_fuzz_everyaction_json_answers(answer: Answer) -> None:
    trio.run(_call, "ea", answer)


@FUZZ
@given(_answers("ea-csv"))
def test_fuzz_everyaction_export_csv_answers(answer: Answer) -> None:
    trio.run(_call, "ea-csv", answer)


@FUZZ
@given(st.text(max_size=600))
def test_fuzz_everyaction_csv_parser(text: str) -> None:
    try:
        parse_contacts_csv(text)
    except ApiError:
        pass


@FUZZ
@given(_answers("mc"))
def test_fuzz_mobilecommons_xml_answers(answer: Answer) -> None:
    trio.run(_call, "mc", answer)


@FUZZ
@given(_answers("efficy"))
def test_fuzz_efficy_jsonrpc_answers(answer: Answer) -> None:
    trio.run(_call, "efficy", answer)


# the saved query's answer, read as a stream (issue 8): datasets whose rows are anything
shaped["efficy-query"] = st.lists(st.fixed_dictionaries({}, optional={
    "#id": scalars, "@name": st.one_of(st.just("api"), st.just("exception"), scalars),
    "@func": st.lists(st.fixed_dictionaries({}, optional={
        "#result": st.fixed_dictionaries({"#class": st.one_of(st.just("dataset"), scalars)}, optional={
            "#data": st.one_of(st.lists(st.one_of(json_values, st.fixed_dictionaries(
                {}, optional={"K_CONTACT": json_values, "k_contact": json_values}))), json_values)}),
        "#error": json_values, "@name": scalars}), max_size=3),
    "#error": json_values}), max_size=3).map(lambda v: json.dumps(v).encode())


@FUZZ
@given(_answers("efficy-query"))
def test_fuzz_efficy_query_answers_read_as_a_stream(answer: Answer) -> None:
    trio.run(_call, "efficy-query", answer)


@FUZZ
@given(_answers("apsis"))
def test_fuzz_apsis_json_answers(answer: Answer) -> None:
    trio.run(_call, "apsis", answer)


def test_fuzz_transport_is_the_hostile_answer() -> None:
    """The fuzzers' transport really serves the generated answer (so they exercise the parsers)."""
    answer = Answer("x", 418, "text/plain", b"teapot", "ApiError")
    response = httpx.Client(transport=upstream._transport(answer)).get("https://t.test/x")
    assert response.status_code == 418 and response.content == b"teapot"
