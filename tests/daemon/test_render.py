"""Human-readable renderings (issue 10 item 5): tables, the progress line with rate and ETA, times in the
integration's time zone and labelled, the reasons of failures, and no Python dumps for any command."""

from __future__ import annotations

import io
import re
from typing import Any

from crmsync.daemon import render


def test_progress_bar_and_line_with_rate_and_eta() -> None:
    assert render.progress_bar(50, 200, width=10) == "[##........] 50/200 (25.0%)"
    assert render.progress_bar(7, None, width=4) == "[????] 7 done"
    assert render.progress_bar(300, 200, width=4).startswith("[####]")
    assert render.progress_line(50, 200, 2.5, width=10) == "[##........] 50/200 (25.0%)  2.5 records/s  ETA 1m00s"
    assert render.progress_line(7, None, 3.0, width=4) == "[????] 7 done  3.0 records/s"  # no total: no ETA
    assert render.eta_seconds(200, 200, 5.0) is None and render.eta_seconds(0, 100, 0.0) is None


def test_times_are_shown_in_the_integrations_zone_and_labelled() -> None:
    ny = render.zone("America/New_York")
    assert render.local_time("2026-10-29T06:00:00+00:00", ny) == "2026-10-29 02:00:00 EDT"
    assert render.local_time("2026-11-02T07:00:00+00:00", ny) == "2026-11-02 02:00:00 EST"
    assert render.local_time(None, ny) == "-"


def _integration(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "x", "kind": "k", "active": True, "since": "2026-01-01T00:00:00+00:00", "notes": "n",
        "timezone": "Europe/Brussels", "error": None, "full_sync_required": False,
        "full_sync": None, "full_sync_next": None, "queue_depth": 0,
        "flows": {"tags": {"schedule": "daily at 03:00", "running": False, "last_run": None,
                           "next_run": "2026-01-02T02:00:00+00:00"}},
    }
    base.update(over)
    return base


def test_integration_status_shows_progress_errors_and_times_in_its_zone() -> None:
    text = render.render_integration(_integration(
        error="RuntimeError: boom", error_trace='Traceback:\n  File "kind.py", line 3, in open\nRuntimeError: boom\n',
        full_sync_required=True, full_sync_required_reason="mappings changed",
        full_sync={"state": "running", "run_id": 4, "done": 10, "total": 40, "rate_per_s": 2.5,
                   "started_at": "2026-01-01T10:00:00+00:00"},
        queue_depth=3))
    assert "ERROR (restarting with backoff): RuntimeError: boom" in text
    assert 'File "kind.py", line 3, in open' in text  # where it broke, as Kafka Connect shows a task's trace
    assert "FULL SYNC REQUIRED: mappings changed" in text
    assert "[#######.......................] 10/40 (25.0%)  2.5 records/s  ETA 12s" in text
    assert "real-time queue: 3 waiting" in text and "daily at 03:00" in text
    assert "times in Europe/Brussels" in text
    assert "2026-01-02 03:00:00 CET" in text  # the next run, in Brussels time, labelled
    assert "since 2026-01-01 01:00:00 CET" in text


def test_status_says_why_a_run_failed_and_what_the_next_full_sync_does() -> None:
    failed = {"id": 7, "status": "failed", "started_at": "2026-01-01T10:00:00+00:00",
              "finished_at": "2026-01-01T10:00:05+00:00", "counts": {}, "error": "HTTP 400 unknown column Email"}
    one = _integration(flows={"ea_to_mc": {"schedule": "daily", "running": False, "last_run": failed,
                                           "next_run": None}},
                       full_sync={"state": "cancelled", "run_id": 3, "done": 20, "total": 50,
                                  "started_at": "2026-01-01T09:00:00+00:00",
                                  "finished_at": "2026-01-01T09:10:00+00:00"},
                       full_sync_next={"action": "resume", "reason": "the mappings are unchanged"})
    text = render.render_integration(one)
    assert "ea_to_mc run 7 failed: HTTP 400 unknown column Email" in text
    assert "next full sync: resumes from its checkpoint (the mappings are unchanged)" in text
    summary = render.render_status({"daemon": {"version": "1", "pid": 1, "uptime_s": 61, "store": "s"},
                                    "integrations": [one]})
    assert "x ea_to_mc run 7 failed: HTTP 400 unknown column Email" in summary and "up 1m01s" in summary


def test_report_lists_skips_by_reason_rows_and_filters() -> None:
    text = render.render_report({
        "integration": "x", "timezone": "UTC", "run": {"id": 9, "flow": "f", "status": "partial",
                                                      "started_at": "2026-01-01T00:00:00+00:00",
                                                      "finished_at": "2026-01-01T00:01:00+00:00", "error": None},
        "counts": {"fetched": 3, "created": 1, "updated": 0, "unchanged": 0, "rejected": 1,
                   "skipped": {"country_not_us": 1}},
        "rows": [{"seq": 1, "crm_id": "1", "messaging_id": "m1", "outcome": "rejected", "reason": None,
                  "message": "error 19: Invalid opt-in path"}],
        "rows_total": 3, "filters": {"outcome": "rejected"}, "offset": 0,
    })
    assert "skipped: country_not_us 1" in text and "error 19: Invalid opt-in path" in text
    assert "rows with outcome rejected: 3" in text
    assert "... 2 more rows" in text


def _no_python(text: str) -> None:
    assert not re.search(r"[{}\[\]]|\bTrue\b|\bFalse\b|\bNone\b|': ", text), text


def test_every_command_has_a_rendering_without_python_dumps() -> None:
    results: dict[str, dict[str, Any]] = {
        "activate": {"integration": "x", "active": True, "changed": True},
        "deactivate": {"integration": "x", "active": False, "changed": False},
        "full_sync": {"integration": "x", "run_id": 5, "flow": "full_sync", "resumed": True,
                      "reason": "the mappings are unchanged"},
        "cancel": {"integration": "x", "cancelled": [{"run_id": 5, "flow": "full_sync"}],
                   "full_sync_next": {"action": "resume", "reason": "unchanged"}},
        "reload": {"added": [], "removed": ["old"], "changed": ["x"], "unchanged": [],
                   "restart_required_for": ["http"]},
        "run_flow": {"integration": "x", "flow": "once", "run_id": 6},
        "pause": {"integration": "x", "paused": True, "since": "2026-01-01T00:00:00+00:00", "changed": True},
        "resume": {"integration": "x", "paused": False, "changed": False},
        "requeue": {"integration": "x", "requeued": [{"id": 3, "new_id": 9}], "not_found": [4]},
        "drop": {"integration": "x", "dropped": [5], "not_found": []},
        "dead_letters": {"integration": "x", "total": 0, "oldest": None, "dead_letters": []},
        "help": {"commands": [{"name": "runs", "help": "recent runs", "mutating": False, "args": [
            {"name": "limit", "type": "integer", "required": False, "help": "runs to list", "default": 20,
             "minimum": 1, "maximum": 1000}]}], "error_codes": {"bad_request": "bad"}},
    }
    texts = {cmd: render.render(cmd, result) for cmd, result in results.items()}
    for text in texts.values():
        _no_python(text)
    assert texts["activate"] == "x: activated" and texts["deactivate"] == "x: already inactive"
    assert "full sync resumed from its checkpoint (run 5)" in texts["full_sync"]
    assert "cancelled full_sync (run 5)" in texts["cancel"] and "next full sync resumes" in texts["cancel"]
    assert "removed: old" in texts["reload"] and "not applied until crmsync restarts: http" in texts["reload"]
    assert "limit (integer 1..1000, default 20): runs to list" in texts["help"]
    assert texts["requeue"] == "x: requeued 1 dead letter(s): 3; not found: 4"
    assert texts["drop"] == "x: dropped 1 dead letter(s): 5" and texts["resume"].endswith("(no change)")
    run = {"id": 6, "flow": "once", "status": "failed", "started_at": "2026-01-01T00:00:00+00:00",
           "finished_at": "2026-01-01T00:00:03+00:00", "counts": {"fetched": 1, "skipped": {}}, "error": "boom"}
    end = render.render("run_flow", {"integration": "x", "flow": "once", "run_id": 6, "run": run, "timezone": "UTC"})
    assert "x: run 6 (once) failed after 3s" in end and "error: boom" in end
    _no_python(end)
    # a command with no rendering of its own yet: fields, not a dump
    generic = render.render("some_new_command", {"integration": "x", "requeued": 3, "seqs": [1, 2, 3], "done": True,
                                        "events": [{"seq": 1, "error": "x"}]})
    _no_python(generic)
    assert re.search(r"^requeued +3$", generic, re.M) and re.search(r"^seqs +1, 2, 3$", generic, re.M)


def test_live_progress_display_shows_done_rate_and_eta() -> None:
    out = io.StringIO()
    with render.ProgressDisplay("a", live=True, out=out) as display:
        display.update(10, 100, 2.0)
        display.update(50, 100, 2.5)
    text = out.getvalue()
    assert "a: full sync" in text and "50/100" in text and "50%" in text
    assert "2.5 records/s" in text and "ETA 20s" in text


def test_plain_progress_display_prints_a_line_when_it_moved() -> None:
    out = io.StringIO()
    with render.ProgressDisplay("a", live=False, out=out, plain_every_s=0.0) as display:
        display.update(10, 100, 2.0)
        display.update(10, 100, 2.0)  # no progress: no new line
        display.update(100, 100, None, final=True)
    assert out.getvalue().splitlines() == [
        "a: full sync [###...........................] 10/100 (10.0%)  2.0 records/s  ETA 45s",
        "a: full sync [##############################] 100/100 (100.0%)",
    ]
