"""The CLI against a running daemon, as an operator sees it (issue 10 items 5 to 7): designed output for every
command, `status NAME --watch` attached to a running full sync, the reasons of failures, `crmsync help`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from crmsync.daemon import cli
from tests.daemon.cli_harness import running_daemon
from tests.fake_kind import world


@pytest.fixture(autouse=True)
def _fast_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "WATCH_POLL_S", 0.05, raising=False)


def _no_python(text: str) -> None:
    assert not re.search(r"[{}]|\bTrue\b|\bFalse\b|\bNone\b|': ", text), text


def test_control_commands_print_designed_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with running_daemon(tmp_path, {"a": {"records": 30, "page_size": 10}}) as daemon:
        outputs = {}
        for argv in (["activate", "a"], ["full-sync", "a", "--watch"], ["run-flow", "a", "once", "--wait"],
                     ["runs", "a"], ["report", "a", "--flow", "full_sync"], ["reload"], ["deactivate", "a"],
                     ["status"], ["status", "a"]):
            assert daemon.cli(*argv) == 0, argv
            captured = capsys.readouterr()
            outputs[" ".join(argv)] = captured.out
            _no_python(captured.out)
            _no_python(captured.err)
    assert outputs["activate a"] == "a: activated\n"
    watch = outputs["full-sync a --watch"]
    assert "a: full sync started from the beginning (run 1)" in watch
    assert re.search(r"a: run 1 \(full_sync\) success after \d+s, finished 20\d\d-\d\d-\d\d \d\d:\d\d:\d\d E[DS]T",
                     watch), watch
    assert "fetched 30, created 30" in watch and "report: crmsync report a 1" in watch
    assert "a: run 2 (once) success" in outputs["run-flow a once --wait"]
    assert "runs, newest first (times in America/New_York)" in outputs["runs a"]
    assert "Synchronization report: a, run 1 (full_sync), success" in outputs["report a --flow full_sync"]
    assert "config reloaded" in outputs["reload"] and "restarted (changed): a" in outputs["reload"]
    assert outputs["deactivate a"] == "a: deactivated (its state is kept)\n"
    assert "times in America/New_York" in outputs["status a"]
    assert "next full sync: starts from the beginning (the last full sync completed)" in outputs["status a"]


def test_status_watch_attaches_to_a_running_full_sync(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with running_daemon(tmp_path, {"a": {"records": 60, "page_size": 10}}) as daemon:
        world("a").source.page_delay = 0.1
        assert daemon.cli("activate", "a") == 0
        assert daemon.cli("full-sync", "a") == 0
        capsys.readouterr()
        assert daemon.cli("status", "a", "--watch") == 0
        captured = capsys.readouterr()
    assert "a (fake): ACTIVE" in captured.out  # the status first
    assert re.search(r"a: full sync \[[#.]+\] \d+/60 \(\d+\.\d%\)", captured.err), captured.err  # progress
    assert "a: full sync [##############################] 60/60 (100.0%)" in captured.err  # the final line
    assert "a: run 1 (full_sync) success" in captured.out


def test_status_watch_without_a_running_full_sync_just_shows_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_daemon(tmp_path, {"a": {"records": 3}}) as daemon:
        assert daemon.cli("status", "a", "--watch") == 0
        captured = capsys.readouterr()
    assert "a (fake): inactive" in captured.out and "no full sync is running for a" in captured.err


def test_status_shows_why_a_run_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with running_daemon(tmp_path, {"a": {"records": 3}}) as daemon:
        assert daemon.cli("activate", "a") == 0
        world("a").flow_result = "failed"
        assert daemon.cli("run-flow", "a", "once", "--wait") == 5
        assert "error: the fake API refused the export: HTTP 400 unknown column Email" in capsys.readouterr().out
        assert daemon.cli("status") == 0
        assert "a once run 1 failed: the fake API refused the export" in capsys.readouterr().out
        assert daemon.cli("status", "a") == 0
        assert "once run 1 failed: the fake API refused the export" in capsys.readouterr().out


def test_status_shows_why_an_integration_failed_with_its_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_daemon(tmp_path, {"a": {"records": 3, "fail_open": 100}}) as daemon:
        assert daemon.cli("activate", "a") == 0
        capsys.readouterr()
        assert daemon.cli("status", "a") == 0
        out = capsys.readouterr().out
        assert daemon.cli("status", "a", "--json") == 0
        status = json.loads(capsys.readouterr().out)
    assert "ERROR (restarting with backoff): RuntimeError: client construction failed" in out
    assert 'fake_kind.py", line' in out and "in open" in out  # where it broke
    assert "RuntimeError: client construction failed" in status["error_trace"]


def test_help_lists_commands_with_argument_types(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with running_daemon(tmp_path, {"a": {"records": 3}}) as daemon:
        assert daemon.cli("help") == 0
        text = capsys.readouterr().out
        assert daemon.cli("help", "report") == 0
        one = capsys.readouterr().out
    assert "runs: recent runs of an integration, newest first" in text
    assert "limit (integer 1..1000, default 20): runs to list" in text
    assert "outcome (one of created, updated, unchanged, rejected, skipped, optional)" in one
    assert "error codes:" in text and "no_runs:" in text
    assert one.startswith("report:") and "runs:" not in one
    # no daemon: this crmsync's own table, said so on stderr
    assert cli.main(["help", "--socket", str(tmp_path / "none.sock")]) == 0
    captured = capsys.readouterr()
    assert "daemon not reachable" in captured.err and "limit (integer 1..1000, default 20)" in captured.out
