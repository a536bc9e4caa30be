"""The installed-style CLI (``python -m crmsync``) against the daemon as a subprocess: the exit codes a cron
job or CI relies on, help over the socket, and human output without Python dumps."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.e2e.test_daemon_process import _cli, daemon  # noqa: F401 (the fixture)


def test_a_script_drives_the_daemon_by_exit_codes(daemon: Any) -> None:  # noqa: F811
    _, _, sock, _ = daemon
    s = ("--socket", str(sock))
    assert _cli("run-flow", "demo", "once", "--wait", *s).returncode == 1  # not active: refused
    activated = _cli("activate", "demo", *s)
    assert activated.returncode == 0 and activated.stdout == "demo: activated\n"
    waited = _cli("run-flow", "demo", "once", "--wait", *s)
    assert waited.returncode == 0 and re.search(r"demo: run \d+ \(once\) success", waited.stdout), waited
    watched = _cli("full-sync", "demo", "--watch", *s)
    assert watched.returncode == 0, watched.stderr
    assert "(full_sync) success" in watched.stdout and "25/25 (100.0%)" in watched.stderr
    assert _cli("runs", "demo", "--limit", "0", *s).returncode == 2
    assert _cli("report", "demo", "--flow", "nope", *s).returncode == 1
    helped = _cli("help", *s)
    assert helped.returncode == 0 and "run_flow: run one flow now" in helped.stdout and helped.stderr == ""
    listed = json.loads(_cli("help", "--json", *s).stdout)
    assert {c["name"] for c in listed["commands"]} >= {"status", "report", "cancel", "help"}
    for argv in (("status",), ("status", "demo"), ("deactivate", "demo"), ("reload",)):
        out = _cli(*argv, *s).stdout
        assert not re.search(r"[{}]|\bTrue\b|\bFalse\b|\bNone\b", out), (argv, out)
    assert _cli("status", "--socket", str(sock) + ".missing").returncode == 3
