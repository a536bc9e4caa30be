"""Human-readable renderings: tables, the full-sync progress bar, errors, reports."""

from __future__ import annotations

from crmsync.daemon import render


def test_progress_bar() -> None:
    assert render.progress_bar(50, 200, width=10) == "[##........] 50/200 (25.0%)"
    assert render.progress_bar(7, None, width=4) == "[????] 7 done"
    assert render.progress_bar(300, 200, width=4).startswith("[####]")


def test_integration_status_shows_progress_and_errors() -> None:
    text = render.render_integration({
        "name": "x", "kind": "k", "active": True, "since": "2026-01-01T00:00:00+00:00", "notes": "n",
        "error": "RuntimeError: boom", "full_sync_required": True, "full_sync_required_reason": "mappings changed",
        "full_sync": {"state": "running", "run_id": 4, "done": 10, "total": 40, "rate_per_s": 2.5},
        "queue_depth": 3, "flows": {"tags": {"schedule": "daily at 03:00", "running": False, "last_run": None,
                                             "next_run": "2026-01-02T03:00:00+00:00"}},
    })
    assert "ERROR (restarting with backoff): RuntimeError: boom" in text
    assert "FULL SYNC REQUIRED: mappings changed" in text
    assert "[#######.......................] 10/40 (25.0%)  2.5/s" in text
    assert "real-time queue: 3 waiting" in text and "daily at 03:00" in text


def test_report_lists_skips_by_reason_and_rows() -> None:
    text = render.render_report({
        "integration": "x", "run": {"id": 9, "flow": "f", "status": "partial", "started_at": "a",
                                    "finished_at": "b", "error": None},
        "counts": {"fetched": 3, "created": 1, "updated": 0, "unchanged": 0, "rejected": 1,
                   "skipped": {"country_not_us": 1}},
        "rows": [{"seq": 1, "crm_id": "1", "messaging_id": "m1", "outcome": "rejected", "reason": None,
                  "message": "error 19: Invalid opt-in path"}],
        "rows_total": 3,
    })
    assert "skipped: country_not_us 1" in text and "error 19: Invalid opt-in path" in text
    assert "... 2 more rows" in text
