"""Issue 10 item 4: "Exit codes tell the outcome. `run-flow ... --wait` exits 0 after a failed run today,
`full-sync --watch` exits 0 after a cancel: make success 0, partial and failed and cancelled distinct non-zero
codes, documented, so cron and CI can use them." The existing codes (1 refused, 2 usage, 3 unreachable) stay."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from crmsync.daemon import cli
from tests.daemon.cli_harness import RunningDaemon, running_daemon
from tests.fake_kind import world

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _fast_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "WATCH_POLL_S", 0.05, raising=False)


def _cancel_when_running(daemon: RunningDaemon, flow: str) -> None:
    """In the daemon's loop: wait until ``flow`` runs, then cancel it (as another operator would)."""
    async def canceller() -> None:
        runtime = daemon.supervisor.runtimes["a"]
        while flow not in runtime.running_flows().values():  # noqa: ASYNC110 (no event marks a run's start)
            await trio.sleep(0.01)
        await daemon.supervisor.cancel("a")

    async def start() -> None:
        assert daemon.supervisor._nursery is not None
        daemon.supervisor._nursery.start_soon(canceller)

    daemon.call(start)


def test_run_flow_wait_exit_code_tells_the_outcome(tmp_path: Path) -> None:
    codes = {}
    with running_daemon(tmp_path, {"a": {"records": 3}}) as daemon:
        assert daemon.cli("activate", "a") == 0
        for result in ("success", "partial", "failed"):
            world("a").flow_result = result
            codes[result] = daemon.cli("run-flow", "a", "once", "--wait")
        world("a").flow_result = "success"
        world("a").flow_delay = 1000.0
        _cancel_when_running(daemon, "once")
        codes["cancelled"] = daemon.cli("run-flow", "a", "once", "--wait")
    assert codes == {"success": 0, "partial": 4, "failed": 5, "cancelled": 6}
    assert len({*codes.values(), 1, 2, 3}) == 7  # distinct from refused, usage and unreachable


def test_full_sync_watch_exits_non_zero_after_a_cancel(tmp_path: Path) -> None:
    with running_daemon(tmp_path, {"a": {"records": 40, "page_size": 10}}) as daemon:
        assert daemon.cli("activate", "a") == 0
        assert daemon.cli("full-sync", "a", "--watch") == 0  # completes: success
        world("a").source.page_delay = 1000.0
        _cancel_when_running(daemon, "full_sync")
        assert daemon.cli("full-sync", "a", "--watch", "--from-start") == 6


def test_refused_usage_and_unreachable_keep_their_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with running_daemon(tmp_path, {"a": {"records": 3}}) as daemon:
        assert daemon.cli("run-flow", "a", "once", "--wait") == 1  # not active: refused
        assert "not_active" in capsys.readouterr().err
        with pytest.raises(SystemExit) as usage:
            daemon.cli("runs", "a", "--limit", "0")
        assert usage.value.code == 2
        assert "--limit: must be an integer 1..1000, not '0'" in capsys.readouterr().err
        with pytest.raises(SystemExit) as usage:
            daemon.cli("report", "a", "--offset", "-1")
        assert usage.value.code == 2
    assert cli.main(["status", "--socket", str(tmp_path / "nobody.sock")]) == 3


def test_exit_codes_are_documented() -> None:
    docs = (ROOT / "docs" / "cli.md").read_text()
    for code, meaning in [(0, "success"), (1, "refused"), (2, "usage"), (3, "unreachable"), (4, "partial"),
                          (5, "failed"), (6, "cancelled")]:
        assert f"| {code} | {meaning}" in docs, (code, meaning)
    assert "| 4 | partial" in (ROOT / "README.md").read_text()
