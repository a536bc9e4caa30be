"""Arguments on the control socket (issue 9 item 7, issue 10 items 6 and 7): every argument is checked against
the command's schema, unknown ones are refused, `help` lists each command with its arguments and types, every
error code the daemon answers is in the documented list."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import trio

from crmsync.daemon.commands import COMMANDS, ERROR_CODES
from crmsync.daemon.control import ControlClient, ControlServer, open_unix_listener
from crmsync.state import queries as q
from crmsync.state.queries import ReportRow
from tests.conftest import fake_config, start_supervisor
from tests.fake_kind import world

ROOT = Path(__file__).resolve().parents[2]


async def _serve(tmp_path: Path, db: Any, sim_clock: Any, nursery: trio.Nursery) -> tuple[Path, Any]:
    config = fake_config(tmp_path, {"a": {"records": 30, "page_size": 10}})
    supervisor = await start_supervisor(nursery, config, db, sim_clock)

    async def reload() -> dict[str, Any]:
        return {"added": [], "removed": [], "changed": [], "unchanged": ["a"], "restart_required_for": []}

    server = ControlServer(supervisor, idle_timeout=300, reload_config=reload)
    path = tmp_path / "ctl.sock"
    nursery.start_soon(server.serve, await open_unix_listener(path, 0o660))
    return path, supervisor


def _error(reply: dict[str, Any]) -> tuple[str, str]:
    assert reply["ok"] is False, reply
    return reply["error"]["code"], reply["error"]["message"]


async def test_a_huge_run_id_is_a_bad_request_not_an_internal_error(tmp_path: Path, db: Any, sim_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        path, _ = await _serve(tmp_path, db, sim_clock, nursery)
        async with ControlClient(path) as c:
            code, message = _error(await c.call("report", integration="a", run_id=10**30))
            assert code == "bad_request" and "run_id" in message
        nursery.cancel_scope.cancel()


async def test_a_bad_argument_type_names_the_argument_and_the_type(tmp_path: Path, db: Any, sim_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        path, _ = await _serve(tmp_path, db, sim_clock, nursery)
        async with ControlClient(path) as c:
            for reply, arg, expected in [
                (await c.call("runs", integration="a", limit="x"), "limit", "integer"),
                (await c.call("report", integration="a", offset=[1]), "offset", "integer"),
                (await c.call("report", integration="a", run_id=True), "run_id", "integer"),
                (await c.call("run_flow", integration="a", flow="once", wait="yes"), "wait", "true or false"),
                (await c.call("status", integration=5), "integration", "string"),
                (await c.call("report", integration="a", outcome="bogus"), "outcome", "rejected"),
            ]:
                code, message = _error(reply)
                assert code == "bad_request" and f"args.{arg}" in message and expected in message, message
                assert "invalid literal" not in message and "Error" not in message
        nursery.cancel_scope.cancel()


async def test_unknown_arguments_are_refused(tmp_path: Path, db: Any, sim_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        path, _ = await _serve(tmp_path, db, sim_clock, nursery)
        async with ControlClient(path) as c:
            code, message = _error(await c.call("runs", integration="a", limt=5))
            assert code == "bad_request" and "'limt'" in message and "limit" in message
            code, message = _error(await c.call("reload", force=True))
            assert code == "bad_request" and "'force'" in message
            code, _ = _error(await c.call("activate", integration="a", flow="x"))
            assert code == "bad_request"
            assert (await c.call("status"))["ok"]  # the daemon carries on
        nursery.cancel_scope.cancel()


async def test_limits_offsets_and_flows_are_checked(tmp_path: Path, db: Any, sim_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        path, _ = await _serve(tmp_path, db, sim_clock, nursery)
        async with ControlClient(path) as c:
            assert (await c.call("activate", integration="a"))["ok"]
            assert (await c.call("run_flow", integration="a", flow="once", wait=True))["ok"]
            assert _error(await c.call("runs", integration="a", limit=0))[0] == "bad_request"
            assert _error(await c.call("report", integration="a", limit=0))[0] == "bad_request"
            assert _error(await c.call("report", integration="a", offset=-1))[0] == "bad_request"
            code, message = _error(await c.call("runs", integration="a", flow="nope"))
            assert code == "unknown_flow" and "once" in message
            assert _error(await c.call("report", integration="a", flow="nope"))[0] == "unknown_flow"
            assert _error(await c.call("cancel", integration="a", flow="nope"))[0] == "unknown_flow"
            assert _error(await c.call("report", integration="a", flow="nightly"))[0] == "no_runs"
        nursery.cancel_scope.cancel()


async def test_report_picks_the_latest_run_of_a_flow_and_filters_rows(
    tmp_path: Path, db: Any, sim_clock: Any
) -> None:
    async with trio.open_nursery() as nursery:
        path, _ = await _serve(tmp_path, db, sim_clock, nursery)
        now = sim_clock.now().isoformat()

        def older_run(c: Any) -> int:  # an earlier run of another flow, with rejected and skipped rows
            rid = q.start_run(c, "a", "nightly", "schedule", now)
            q.add_report_rows(c, rid, [ReportRow("created", "1", "m1"), ReportRow("rejected", "2", "m2", None,
                                       "error 19: Invalid opt-in path"), ReportRow("skipped", "3", None,
                                       "country_not_us"), ReportRow("rejected", "4", "m4", None, "bad phone")], now)
            q.finish_run(c, rid, "partial", {"fetched": 4, "rejected": 2}, None, now)
            return rid

        nightly = await db.tx(older_run)
        async with ControlClient(path) as c:
            assert (await c.call("activate", integration="a"))["ok"]
            latest = (await c.call("run_flow", integration="a", flow="once", wait=True))["result"]["run_id"]
            assert (await c.call("report", integration="a"))["result"]["run"]["id"] == latest
            report = (await c.call("report", integration="a", flow="nightly"))["result"]
            assert report["run"]["id"] == nightly and report["rows_total"] == 4
            rejected = (await c.call("report", integration="a", flow="nightly", outcome="rejected"))["result"]
            assert [r["crm_id"] for r in rejected["rows"]] == ["2", "4"] and rejected["rows_total"] == 2
            one = (await c.call("report", integration="a", run_id=nightly, record="m4"))["result"]
            assert [r["crm_id"] for r in one["rows"]] == ["4"]
            assert _error(await c.call("report", integration="a", run_id=nightly, flow="once"))[0] == "unknown_run"
        nursery.cancel_scope.cancel()


async def test_cancel_with_a_flow_cancels_only_that_flow(
    autojump_clock: Any, tmp_path: Path, db: Any, sim_clock: Any
) -> None:
    w = world("a")
    w.source.page_delay = 10.0
    w.flow_delay = 1000.0
    async with trio.open_nursery() as nursery:
        path, _ = await _serve(tmp_path, db, sim_clock, nursery)
        async with ControlClient(path) as c:
            assert (await c.call("activate", integration="a"))["ok"]
            assert (await c.call("full_sync", integration="a"))["ok"]
            once = (await c.call("run_flow", integration="a", flow="once"))["result"]["run_id"]
            await trio.sleep(5)
            reply = await c.call("cancel", integration="a", flow="once")
            assert reply["ok"] and reply["result"]["cancelled"] == [{"run_id": once, "flow": "once"}]
            status = (await c.call("status", integration="a"))["result"]
            assert status["full_sync"]["state"] == "running"  # untouched
            assert _error(await c.call("cancel", integration="a", flow="once"))[0] == "not_running"
            await trio.sleep(20)  # a page acknowledged: a checkpoint to resume from
            reply = await c.call("cancel", integration="a", flow="full_sync")
            assert [x["flow"] for x in reply["result"]["cancelled"]] == ["full_sync"]
            assert reply["result"]["full_sync_next"]["action"] == "resume"
        nursery.cancel_scope.cancel()


async def test_help_lists_each_command_with_its_arguments_and_types(tmp_path: Path, db: Any, sim_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        path, _ = await _serve(tmp_path, db, sim_clock, nursery)
        async with ControlClient(path) as c:
            listed = (await c.call("help"))["result"]
            by_name = {cmd["name"]: cmd for cmd in listed["commands"]}
            assert set(by_name) == set((await c.call("hello"))["result"]["commands"])
            assert {"status", "activate", "deactivate", "full_sync", "cancel", "run_flow", "runs", "report",
                    "reload", "help"} <= set(by_name)
            limit = next(a for a in by_name["runs"]["args"] if a["name"] == "limit")
            assert limit == {"name": "limit", "type": "integer", "required": False, "help": "runs to list",
                             "default": 20, "minimum": 1, "maximum": 1000}
            for cmd in listed["commands"]:
                assert cmd["help"]
                for arg in cmd["args"]:
                    assert arg["type"] in ("string", "integer", "boolean", "integer_list") and arg["help"]
            one = (await c.call("help", command="run_flow"))["result"]["commands"]
            assert [x["name"] for x in one] == ["run_flow"]
            assert _error(await c.call("help", command="nope"))[0] == "unknown_command"
            assert listed["error_codes"] == ERROR_CODES
        nursery.cancel_scope.cancel()


def test_every_error_code_the_daemon_answers_is_documented() -> None:
    """Scan the code for every code it can answer; each is in ERROR_CODES, docs/cli.md and the README."""
    answered: set[str] = set()
    for source in (ROOT / "crmsync" / "daemon").rglob("*.py"):
        text = source.read_text()
        answered |= set(re.findall(r'CommandError\(\s*"([a-z_]+)"', text))
        answered |= set(re.findall(r'_error\(\s*[a-z]+,\s*"([a-z_]+)"', text))
        answered |= set(re.findall(r'"code":\s*"([a-z_]+)"', text))
    assert {"no_runs", "bad_request", "unknown_flow", "internal_error", "idle_timeout"} <= answered
    assert answered <= set(ERROR_CODES), answered - set(ERROR_CODES)
    docs = (ROOT / "docs" / "cli.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for code in ERROR_CODES:
        assert f"`{code}`" in docs, f"{code} missing from docs/cli.md"
        assert f"`{code}`" in readme, f"{code} missing from README.md"


def test_the_command_table_is_complete() -> None:
    """Each command reaches a handler: a ControlServer cmd_* method or the Supervisor method of its name."""
    from crmsync.daemon.supervisor import Supervisor

    for name, command in COMMANDS.items():
        assert hasattr(ControlServer, f"cmd_{name}") or hasattr(Supervisor, name), name
        assert command.help


async def test_a_new_command_is_one_declarative_entry(
    tmp_path: Path, db: Any, sim_clock: Any, monkeypatch: Any
) -> None:
    """A new command arrives as table entries: validation, help, dispatch to the
    Supervisor method of the same name, and the CLI sub-command all follow from the entry."""
    from crmsync.daemon import cli, render
    from crmsync.daemon.commands import INTEGRATION, Arg, Command
    from crmsync.daemon.supervisor import Supervisor

    monkeypatch.setitem(COMMANDS, "snooze", Command("snooze", "snooze a flow", args=(
        INTEGRATION, Arg("flow", "string", "the flow to snooze", required=True, positional=True, metavar="FLOW"),
        Arg("minutes", "integer", "for how long", default=60, minimum=1, maximum=1440)), mutating=True))

    async def snooze(self: Supervisor, name: str, flow: str, minutes: int) -> dict[str, Any]:
        self._kind(name)
        return {"integration": name, "flow": flow, "snoozed_for_minutes": minutes}

    monkeypatch.setattr(Supervisor, "snooze", snooze, raising=False)
    async with trio.open_nursery() as nursery:
        path, _ = await _serve(tmp_path, db, sim_clock, nursery)
        async with ControlClient(path) as c:
            reply = await c.call("snooze", integration="a", flow="once")
            assert reply["result"] == {"integration": "a", "flow": "once", "snoozed_for_minutes": 60}
            assert _error(await c.call("snooze", integration="a", flow="once", minutes=0))[0] == "bad_request"
            assert _error(await c.call("snooze", integration="a"))[0] == "bad_request"  # flow is required
            names = [x["name"] for x in (await c.call("help"))["result"]["commands"]]
            assert "snooze" in names
        nursery.cancel_scope.cancel()
    parsed = cli.build_parser().parse_args(["snooze", "a", "once", "--minutes", "5"])
    assert cli._call_args(COMMANDS["snooze"], parsed) == {"integration": "a", "flow": "once", "minutes": 5}
    assert "snoozed for minutes  60" in render.render("snooze", reply["result"])
