"""The issue 11 commands from the command line: human output, --json, --csv, exit codes, --help."""

from __future__ import annotations

import csv
import io
import json
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

from crmsync.clock import WallClock
from crmsync.daemon import cli
from crmsync.daemon.control import ControlServer, open_unix_listener
from crmsync.state import Database
from crmsync.state import consent_history as ch
from tests.conftest import fake_config, start_supervisor

COMMANDS = ["pause", "resume", "dead-letters", "requeue", "drop", "consent-history"]


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    assert "--json" in capsys.readouterr().out


def _run_cli(argv: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = cli.main(argv)
    return code, buf.getvalue()


async def test_commands_over_a_real_socket(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "t.db")
    config = fake_config(tmp_path, {"a": {}})
    sock = str(tmp_path / "ctl.sock")
    entries = [ch.ConsentChange("everyaction", "sms", "opt-out", "everyaction_edit", False, f"2026-01-0{i}T00:00:00",
                                crm_id="42", messaging_id="m42", old_status="opt-in", run_id=i)
               for i in range(1, 4)]
    await db.tx(ch.add, "a", entries)
    await db.tx(ch.add, "a", [ch.ConsentChange("mobilecommons", "sms", "opt-in", "mobilecommons_keyword", False,
                                               "2026-01-05T00:00:00", crm_id="7", messaging_id="m7")])
    # the daemon's log lines would land on the redirected stdout: capture them instead
    with structlog.testing.capture_logs():
        async with trio.open_nursery() as nursery:
            supervisor = await start_supervisor(nursery, config, db, WallClock())

            async def reload() -> dict[str, Any]:
                return {}

            nursery.start_soon(ControlServer(supervisor, 300, reload).serve, await open_unix_listener(Path(sock)))

            def drive() -> dict[str, Any]:
                out: dict[str, Any] = {}
                out["pause"] = _run_cli(["pause", "a", "--socket", sock])
                out["status"] = _run_cli(["status", "a", "--socket", sock])
                out["resume"] = _run_cli(["resume", "a", "--socket", sock, "--json"])
                out["history"] = _run_cli(["consent-history", "a", "m42", "--socket", sock])
                out["history_json"] = _run_cli(["consent-history", "a", "42", "--socket", sock, "--json"])
                out["csv"] = _run_cli(["consent-history", "a", "--csv", "--socket", sock])
                out["dead"] = _run_cli(["dead-letters", "a", "--socket", sock])
                out["requeue_usage"] = _run_cli(["requeue", "a", "--socket", sock])
                out["drop_unknown"] = _run_cli(["drop", "a", "5", "--socket", sock])
                out["unknown"] = _run_cli(["pause", "zz", "--socket", sock])
                out["dry_unsupported"] = _run_cli(["run-flow", "a", "once", "--dry-run", "--socket", sock, "--json"])
                return out

            out = await trio.to_thread.run_sync(drive)
            nursery.cancel_scope.cancel()
    await db.aclose()
    assert out["pause"][0] == 0
    assert "PAUSED since" in out["status"][1]
    assert out["resume"][0] == 0 and json.loads(out["resume"][1])["paused"] is False
    code, text = out["history"]
    assert code == 0 and "everyaction_edit" not in text and "EveryAction edit" in text and text.count("opt-in ->") == 3
    data = json.loads(out["history_json"][1])
    assert [e["run_id"] for e in data["entries"]] == [1, 2, 3]
    rows = list(csv.DictReader(io.StringIO(out["csv"][1])))
    assert [r["crm_id"] for r in rows] == ["42", "42", "42", "7"]  # the whole trail, oldest first
    assert rows[-1]["source_label"] == "Mobile Commons keyword"
    assert out["dead"] == (0, "a: no dead letters\n")
    assert out["requeue_usage"][0] == cli.EXIT_USAGE
    assert out["drop_unknown"][0] == cli.EXIT_REFUSED
    assert out["unknown"][0] == cli.EXIT_REFUSED
    code, text = out["dry_unsupported"]  # the fake kind declares no API clients: nothing to wrap, refused
    assert code == cli.EXIT_REFUSED and json.loads(text)["error"]["code"] == "unsupported"


@pytest.mark.parametrize("command", [["run-flow", "NAME", "FLOW"], ["full-sync", "NAME"]])
def test_dry_run_option_is_offered(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main([command[0], "--help"])
    assert "--dry-run" in capsys.readouterr().out


def test_retention_of_the_consent_history_is_its_own(tmp_path: Path) -> None:
    db = Database.open_sync(tmp_path / "t.db")
    db.tx_sync(ch.add, "a", [ch.ConsentChange("apsis", "t/email", "opt-out", "apsis_unsubscribe_link", False,
                                              seen) for seen in ("2026-01-01T00:00:00", "2026-03-01T00:00:00")])
    assert db.tx_sync(ch.prune, "a", "2026-02-01T00:00:00") == 1
    assert [e["seen_at"] for e in db.tx_sync(ch.trail, "a")] == ["2026-03-01T00:00:00"]
    db.close()
