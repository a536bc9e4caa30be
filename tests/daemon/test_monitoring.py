"""Issue 10, item 3: the shipped alerts and dashboard read metrics the daemon really exposes, the rules pass
``promtool`` (check and unit tests), and a live scrape passes ``promtool check metrics``.

promtool comes with Debian's ``prometheus`` package; CI installs it and sets CRMSYNC_REQUIRE_PROMTOOL=1 so
that these checks cannot be skipped there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import trio
import yaml

from crmsync.daemon.app import Daemon
from tests.conftest import fake_config

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and os.environ.get("CRMSYNC_REQUIRE_PROMTOOL") != "1",
    reason="promtool is not installed (apt-get install prometheus)",
)
METRIC_NAME = re.compile(r"\b((?:crmsync|process)_[a-z_]+)\b")


async def live_scrape(tmp_path: Path) -> str:
    daemon = Daemon(fake_config(tmp_path, {"a": {}}), handle_signals=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        assert daemon.supervisor is not None
        await daemon.supervisor.activate("a")
        await daemon.supervisor.run_flow("a", "once", wait=True)
        async with httpx.AsyncClient(timeout=10) as http:
            text = (await http.get(f"{daemon.metrics_url}/metrics")).text
        daemon.stop()
    return text


def exposed_samples(text: str) -> set[str]:
    """Every sample name the scrape declares (a family may have no sample yet, e.g. before any API call)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names.update(name + suffix for suffix in ("_bucket", "_count", "_sum"))
    return names


async def test_alerts_and_dashboard_read_exposed_metrics(tmp_path: Path) -> None:
    exposed = exposed_samples(await live_scrape(tmp_path))
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    missing = {n for e in exprs for n in METRIC_NAME.findall(e)} - exposed
    assert not missing, f"alerts or dashboard use metrics the daemon does not expose: {sorted(missing)}"
    alert_names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    # the list: failed runs, consecutive failures, stale last success, queue depth and age, dead
    # letters, rate-limit waits, full sync stalled or required, integration in error
    for needed in ("CrmsyncRunFailed", "CrmsyncConsecutiveFailures", "CrmsyncDailyFlowStale",
                   "CrmsyncRealtimeQueueBacklog", "CrmsyncRealtimeQueueStale", "CrmsyncDeadLetters",
                   "CrmsyncRateLimited", "CrmsyncFullSyncStalled", "CrmsyncFullSyncRequired",
                   "CrmsyncIntegrationError"):
        assert needed in alert_names


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    tests = yaml.safe_load((MONITORING / "alerts_test.yml").read_text())
    fired = {case["alertname"] for t in tests["tests"] for case in t["alert_rule_test"] if case["exp_alerts"]}
    assert {r["alert"] for g in rules["groups"] for r in g["rules"]} <= fired


@needs_promtool
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    assert PROMTOOL is not None, "CI must install promtool (Debian package prometheus)"
    check = subprocess.run([PROMTOOL, "check", "rules", "alerts.yml"], cwd=MONITORING, capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=MONITORING, capture_output=True,
                          text=True, timeout=120)
    assert unit.returncode == 0, unit.stdout + unit.stderr


@needs_promtool
async def test_promtool_check_metrics_on_a_live_scrape(tmp_path: Path) -> None:
    assert PROMTOOL is not None, "CI must install promtool (Debian package prometheus)"
    text = await live_scrape(tmp_path)
    result = await trio.run_process([PROMTOOL, "check", "metrics"], stdin=text.encode(), capture_stdout=True,
                                    capture_stderr=True, check=False)
    output = (result.stdout + result.stderr).decode()
    assert result.returncode == 0 and not output.strip(), output
