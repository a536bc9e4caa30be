"""The store's queries as plain synchronous functions of a ``sqlite3.Connection``.

They never commit: :meth:`crmsync.state.db.Database.tx` wraps a caller's function in one transaction, so several
of these compose into one atomic unit of work (for example: report rows, links and a checkpoint together).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# -- integration status ------------------------------------------------------------------------------------


def get_status(c: sqlite3.Connection, name: str) -> dict[str, Any] | None:
    row = c.execute("SELECT * FROM integration_status WHERE name = ?", (name,)).fetchone()
    return dict(row) if row else None


def list_status(c: sqlite3.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in c.execute("SELECT * FROM integration_status ORDER BY name")]


def set_active(c: sqlite3.Connection, name: str, kind: str, active: bool, now: str) -> bool:
    """Returns True when the stored state changed."""
    row = get_status(c, name)
    if row is None:
        c.execute(
            "INSERT INTO integration_status (name, kind, active, since) VALUES (?, ?, ?, ?)",
            (name, kind, int(active), now),
        )
        return True
    if bool(row["active"]) == active and row["kind"] == kind:
        return False
    c.execute(
        "UPDATE integration_status SET kind = ?, active = ?, since = ? WHERE name = ?",
        (kind, int(active), now, name),
    )
    return True


def set_full_sync_required(c: sqlite3.Connection, name: str, required: bool, reason: str | None) -> None:
    c.execute(
        "UPDATE integration_status SET full_sync_required = ?, full_sync_required_reason = ? WHERE name = ?",
        (int(required), reason if required else None, name),
    )


# -- cursors -----------------------------------------------------------------------------------------------


def get_cursor(c: sqlite3.Connection, integration: str, flow: str) -> str | None:
    row = c.execute(
        "SELECT value FROM cursors WHERE integration = ? AND flow = ?", (integration, flow)
    ).fetchone()
    return row[0] if row else None


def set_cursor(c: sqlite3.Connection, integration: str, flow: str, value: str, now: str) -> None:
    c.execute(
        "INSERT INTO cursors (integration, flow, value, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (integration, flow) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        (integration, flow, value, now),
    )


def list_cursors(c: sqlite3.Connection, integration: str) -> dict[str, dict[str, str]]:
    return {
        r["flow"]: {"value": r["value"], "updated_at": r["updated_at"]}
        for r in c.execute("SELECT * FROM cursors WHERE integration = ? ORDER BY flow", (integration,))
    }


# -- full-sync checkpoints ---------------------------------------------------------------------------------


def get_full_sync(c: sqlite3.Connection, integration: str) -> dict[str, Any] | None:
    row = c.execute("SELECT * FROM full_syncs WHERE integration = ?", (integration,)).fetchone()
    return dict(row) if row else None


def start_full_sync(c: sqlite3.Connection, integration: str, run_id: int, now: str) -> None:
    c.execute(
        "INSERT INTO full_syncs (integration, run_id, state, position, done, total, started_at, updated_at) "
        "VALUES (?, ?, 'running', NULL, 0, NULL, ?, ?) "
        "ON CONFLICT (integration) DO UPDATE SET run_id = excluded.run_id, state = 'running', position = NULL, "
        "done = 0, total = NULL, started_at = excluded.started_at, updated_at = excluded.updated_at, "
        "finished_at = NULL",
        (integration, run_id, now, now),
    )


def resume_full_sync(c: sqlite3.Connection, integration: str, run_id: int, now: str) -> None:
    c.execute(
        "UPDATE full_syncs SET run_id = ?, state = 'running', updated_at = ? WHERE integration = ?",
        (run_id, now, integration),
    )


def checkpoint_full_sync(
    c: sqlite3.Connection, integration: str, position: str | None, done: int, total: int | None, now: str
) -> None:
    c.execute(
        "UPDATE full_syncs SET position = ?, done = ?, total = COALESCE(?, total), updated_at = ? "
        "WHERE integration = ?",
        (position, done, total, now, integration),
    )


def finish_full_sync(c: sqlite3.Connection, integration: str, state: str, now: str) -> None:
    c.execute(
        "UPDATE full_syncs SET state = ?, updated_at = ?, finished_at = ? WHERE integration = ?",
        (state, now, now, integration),
    )


# -- identifier links --------------------------------------------------------------------------------------


def link_for_crm(c: sqlite3.Connection, integration: str, crm_id: str) -> str | None:
    row = c.execute(
        "SELECT messaging_id FROM links WHERE integration = ? AND crm_id = ?", (integration, crm_id)
    ).fetchone()
    return row[0] if row else None


def link_for_messaging(c: sqlite3.Connection, integration: str, messaging_id: str) -> str | None:
    row = c.execute(
        "SELECT crm_id FROM links WHERE integration = ? AND messaging_id = ?", (integration, messaging_id)
    ).fetchone()
    return row[0] if row else None


def put_link(c: sqlite3.Connection, integration: str, crm_id: str, messaging_id: str, now: str) -> None:
    """Link two records. A record is linked to at most one on the other side: older links are replaced."""
    c.execute(
        "DELETE FROM links WHERE integration = ? AND messaging_id = ? AND crm_id != ?",
        (integration, messaging_id, crm_id),
    )
    c.execute(
        "INSERT INTO links (integration, crm_id, messaging_id, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (integration, crm_id) DO UPDATE SET messaging_id = excluded.messaging_id, "
        "updated_at = excluded.updated_at",
        (integration, crm_id, messaging_id, now),
    )


def links_page(c: sqlite3.Connection, integration: str, after: str | None, limit: int) -> list[tuple[str, str]]:
    """Linked ``(crm_id, messaging_id)`` pairs after ``after``, in crm_id order: for flows that page over
    every linked record (e.g. polling the messaging side for opt-outs)."""
    rows = c.execute(
        "SELECT crm_id, messaging_id FROM links WHERE integration = ? AND crm_id > ? ORDER BY crm_id LIMIT ?",
        (integration, after or "", limit),
    ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def count_links(c: sqlite3.Connection, integration: str) -> int:
    return int(c.execute("SELECT COUNT(*) FROM links WHERE integration = ?", (integration,)).fetchone()[0])


# -- the durable real-time queue ---------------------------------------------------------------------------


@dataclass(frozen=True)
class QueuedEvent:
    seq: int
    integration: str
    received_at: str
    payload: dict[str, Any]
    attempts: int


def enqueue(
    c: sqlite3.Connection, integration: str, events: Iterable[tuple[str | None, dict[str, Any]]], now: str
) -> int:
    """Append events in order; an event whose dedupe key was already queued is dropped. Returns accepted."""
    accepted = 0
    for dedupe_key, payload in events:
        cur = c.execute(
            "INSERT OR IGNORE INTO realtime_queue (integration, received_at, dedupe_key, payload) "
            "VALUES (?, ?, ?, ?)",
            (integration, now, dedupe_key, json.dumps(payload, separators=(",", ":"), sort_keys=True)),
        )
        accepted += cur.rowcount
    return accepted


def peek_queue(c: sqlite3.Connection, integration: str, limit: int) -> list[QueuedEvent]:
    rows = c.execute(
        "SELECT seq, integration, received_at, payload, attempts FROM realtime_queue "
        "WHERE integration = ? ORDER BY seq LIMIT ?",
        (integration, limit),
    ).fetchall()
    return [QueuedEvent(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]


def ack_queue(c: sqlite3.Connection, integration: str, seqs: Sequence[int]) -> None:
    # The dedupe key must outlive the row, or a replay after processing would be queued again: keep
    # processed keys as tombstones (payload emptied) and prune them with the report retention.
    # attempts: >= 0 pending, -1 processed (tombstone), -2 dead letter (see dead_letter).
    c.executemany(
        "UPDATE realtime_queue SET payload = 'null', attempts = -1 WHERE integration = ? AND seq = ? "
        "AND dedupe_key IS NOT NULL",
        [(integration, s) for s in seqs],
    )
    c.executemany(
        "DELETE FROM realtime_queue WHERE integration = ? AND seq = ? AND dedupe_key IS NULL",
        [(integration, s) for s in seqs],
    )


def fail_queue(c: sqlite3.Connection, integration: str, seq: int, error: str, now: str | None = None) -> None:
    c.execute(
        "UPDATE realtime_queue SET attempts = attempts + 1, last_error = ?, "
        "first_failed_at = COALESCE(first_failed_at, ?), last_failed_at = COALESCE(?, last_failed_at) "
        "WHERE integration = ? AND seq = ?",
        (error[:1000], now, now, integration, seq),
    )


def dead_letter(c: sqlite3.Connection, integration: str, seq: int, error: str, now: str | None = None) -> None:
    """Set an event aside that failed for a non-transient reason too often: kept (never deleted), counted
    in status, skipped by the consumer so the queue moves on. A full sync reconciles what it was about."""
    c.execute(
        "UPDATE realtime_queue SET attempts = -2, last_error = ?, first_failed_at = COALESCE(first_failed_at, ?), "
        "last_failed_at = COALESCE(?, last_failed_at) WHERE integration = ? AND seq = ?",
        (error[:1000], now, now, integration, seq),
    )


def count_dead_letters(c: sqlite3.Connection, integration: str) -> int:
    return int(c.execute(
        "SELECT COUNT(*) FROM realtime_queue WHERE integration = ? AND attempts = -2", (integration,)
    ).fetchone()[0])


def queue_depth(c: sqlite3.Connection, integration: str) -> int:
    return int(
        c.execute(
            "SELECT COUNT(*) FROM realtime_queue WHERE integration = ? AND attempts >= 0", (integration,)
        ).fetchone()[0]
    )


def pending_counts(c: sqlite3.Connection) -> dict[str, int]:
    """Events waiting per integration: loaded once at start into the in-memory depth counter."""
    rows = c.execute(
        "SELECT integration, COUNT(*) FROM realtime_queue WHERE attempts >= 0 GROUP BY integration"
    ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def peek_pending(c: sqlite3.Connection, integration: str, limit: int) -> list[QueuedEvent]:
    rows = c.execute(
        "SELECT seq, integration, received_at, payload, attempts FROM realtime_queue "
        "WHERE integration = ? AND attempts >= 0 ORDER BY seq LIMIT ?",
        (integration, limit),
    ).fetchall()
    return [QueuedEvent(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]


# -- webhook replay digests -------------------------------------------------------------------------------


def seen_digest(c: sqlite3.Connection, integration: str, digest: str, since: float) -> bool:
    """True when a body with this digest was accepted at or after ``since`` (unix time): a replay."""
    row = c.execute(
        "SELECT received_at FROM webhook_digests WHERE integration = ? AND digest = ?", (integration, digest)
    ).fetchone()
    return row is not None and float(row[0]) >= since


def remember_digest(c: sqlite3.Connection, integration: str, digest: str, now: float) -> None:
    c.execute(
        "INSERT INTO webhook_digests (integration, digest, received_at) VALUES (?, ?, ?) "
        "ON CONFLICT (integration, digest) DO UPDATE SET received_at = excluded.received_at",
        (integration, digest, now),
    )


def prune_digests(c: sqlite3.Connection, before: float) -> int:
    return c.execute("DELETE FROM webhook_digests WHERE received_at < ?", (before,)).rowcount


# -- fingerprints ------------------------------------------------------------------------------------------


def get_fingerprint(c: sqlite3.Connection, integration: str, record_key: str) -> tuple[str, str | None] | None:
    row = c.execute(
        "SELECT fingerprint, source_version FROM fingerprints WHERE integration = ? AND record_key = ?",
        (integration, record_key),
    ).fetchone()
    return (row[0], row[1]) if row else None


def put_fingerprint(
    c: sqlite3.Connection, integration: str, record_key: str, fingerprint: str, source_version: str | None,
    now: str,
) -> None:
    c.execute(
        "INSERT INTO fingerprints (integration, record_key, fingerprint, source_version, updated_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (integration, record_key) DO UPDATE SET "
        "fingerprint = excluded.fingerprint, source_version = excluded.source_version, "
        "updated_at = excluded.updated_at",
        (integration, record_key, fingerprint, source_version, now),
    )


def delete_fingerprint(c: sqlite3.Connection, integration: str, record_key: str) -> None:
    c.execute("DELETE FROM fingerprints WHERE integration = ? AND record_key = ?", (integration, record_key))


# -- runs and report rows ----------------------------------------------------------------------------------


def start_run(c: sqlite3.Connection, integration: str, flow: str, trigger: str, now: str) -> int:
    cur = c.execute(
        "INSERT INTO runs (integration, flow, status, trigger, started_at) VALUES (?, ?, 'running', ?, ?)",
        (integration, flow, trigger, now),
    )
    return int(cur.lastrowid or 0)


def finish_run(
    c: sqlite3.Connection, run_id: int, status: str, counts: dict[str, Any], error: str | None, now: str
) -> None:
    c.execute(
        "UPDATE runs SET status = ?, counts = ?, error = ?, finished_at = ? WHERE id = ?",
        (status, json.dumps(counts, sort_keys=True), error, now, run_id),
    )


def update_run_counts(c: sqlite3.Connection, run_id: int, counts: dict[str, Any]) -> None:
    c.execute("UPDATE runs SET counts = ? WHERE id = ?", (json.dumps(counts, sort_keys=True), run_id))


def interrupt_running_runs(c: sqlite3.Connection, now: str) -> int:
    """Runs left 'running' by a previous process that died: they did not finish."""
    cur = c.execute(
        "UPDATE runs SET status = 'cancelled', error = 'interrupted: the daemon stopped during the run', "
        "finished_at = ? WHERE status = 'running'",
        (now,),
    )
    return cur.rowcount


def _run_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["counts"] = json.loads(d["counts"] or "{}")
    return d


def get_run(c: sqlite3.Connection, run_id: int) -> dict[str, Any] | None:
    row = c.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    return _run_dict(row) if row else None


def list_runs(
    c: sqlite3.Connection, integration: str, limit: int = 50, flow: str | None = None
) -> list[dict[str, Any]]:
    if flow:
        rows = c.execute(
            "SELECT * FROM runs WHERE integration = ? AND flow = ? ORDER BY id DESC LIMIT ?",
            (integration, flow, limit),
        )
    else:
        rows = c.execute("SELECT * FROM runs WHERE integration = ? ORDER BY id DESC LIMIT ?", (integration, limit))
    return [_run_dict(r) for r in rows]


def last_run(c: sqlite3.Connection, integration: str, flow: str, status: str | None = None) -> dict[str, Any] | None:
    """The flow's newest real run (dry runs, trigger ``dry_run``, changed nothing and are left out)."""
    if status:
        row = c.execute(
            "SELECT * FROM runs WHERE integration = ? AND flow = ? AND status = ? AND trigger != 'dry_run' "
            "ORDER BY id DESC LIMIT 1",
            (integration, flow, status),
        ).fetchone()
    else:
        row = c.execute(
            "SELECT * FROM runs WHERE integration = ? AND flow = ? AND trigger != 'dry_run' ORDER BY id DESC "
            "LIMIT 1", (integration, flow)
        ).fetchone()
    return _run_dict(row) if row else None


@dataclass(frozen=True)
class ReportRow:
    outcome: str  # created | updated | unchanged | rejected | skipped
    crm_id: str | None = None
    messaging_id: str | None = None
    reason: str | None = None
    message: str | None = None


def add_report_rows(c: sqlite3.Connection, run_id: int, rows: Sequence[ReportRow], now: str) -> None:
    start = c.execute("SELECT COALESCE(MAX(seq), 0) FROM report_rows WHERE run_id = ?", (run_id,)).fetchone()[0]
    c.executemany(
        "INSERT INTO report_rows (run_id, seq, crm_id, messaging_id, outcome, reason, message, at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (run_id, start + i + 1, r.crm_id, r.messaging_id, r.outcome, r.reason, r.message, now)
            for i, r in enumerate(rows)
        ],
    )


def _report_filter(outcome: str | None, record: str | None) -> tuple[str, list[Any]]:
    where, params = "", []
    if outcome is not None:
        where += " AND outcome = ?"
        params.append(outcome)
    if record is not None:
        where += " AND (crm_id = ? OR messaging_id = ?)"
        params += [record, record]
    return where, params


def report_rows(
    c: sqlite3.Connection, run_id: int, limit: int, offset: int = 0, *, outcome: str | None = None,
    record: str | None = None,
) -> list[dict[str, Any]]:
    """A run's report rows in order; only those of ``outcome`` and of ``record`` (either id) when given."""
    where, params = _report_filter(outcome, record)
    return [
        dict(r)
        for r in c.execute(
            "SELECT seq, crm_id, messaging_id, outcome, reason, message, at FROM report_rows "
            f"WHERE run_id = ?{where} ORDER BY seq LIMIT ? OFFSET ?",
            (run_id, *params, limit, offset),
        )
    ]


def count_report_rows(
    c: sqlite3.Connection, run_id: int, *, outcome: str | None = None, record: str | None = None
) -> int:
    where, params = _report_filter(outcome, record)
    return int(c.execute(f"SELECT COUNT(*) FROM report_rows WHERE run_id = ?{where}", (run_id, *params)).fetchone()[0])


def prune(c: sqlite3.Connection, integration: str, flow: str, older_than: str, keep_runs: int) -> int:
    """Bounded retention for one (integration, flow): keep the newest ``keep_runs`` runs with their report
    rows, and of those drop the ones finished before ``older_than`` too, except the very latest run (status
    shows it). Also drops processed-event tombstones older than ``older_than``. Returns runs deleted."""
    newest = c.execute(
        "SELECT id FROM runs WHERE integration = ? AND flow = ? ORDER BY id DESC LIMIT 1", (integration, flow)
    ).fetchone()
    if newest is None:
        return 0
    cutoff = c.execute(
        "SELECT id FROM runs WHERE integration = ? AND flow = ? ORDER BY id DESC LIMIT 1 OFFSET ?",
        (integration, flow, keep_runs - 1),
    ).fetchone()
    doomed = c.execute(
        "SELECT id FROM runs WHERE integration = ? AND flow = ? AND id != ? AND finished_at IS NOT NULL "
        "AND (finished_at < ? OR id < ?)",
        (integration, flow, newest[0], older_than, cutoff[0] if cutoff else -1),
    ).fetchall()
    ids = [(r[0],) for r in doomed]
    c.executemany("DELETE FROM report_rows WHERE run_id = ?", ids)
    c.executemany("DELETE FROM runs WHERE id = ?", ids)
    c.execute(
        "DELETE FROM realtime_queue WHERE integration = ? AND attempts = -1 AND received_at < ?",
        (integration, older_than),
    )
    return len(ids)


# -- small per-integration values --------------------------------------------------------------------------


def kv_get(c: sqlite3.Connection, integration: str, key: str) -> str | None:
    row = c.execute("SELECT value FROM kv WHERE integration = ? AND key = ?", (integration, key)).fetchone()
    return row[0] if row else None


def kv_delete(c: sqlite3.Connection, integration: str, key: str) -> None:
    c.execute("DELETE FROM kv WHERE integration = ? AND key = ?", (integration, key))


def kv_set(c: sqlite3.Connection, integration: str, key: str, value: str) -> None:
    c.execute(
        "INSERT INTO kv (integration, key, value) VALUES (?, ?, ?) "
        "ON CONFLICT (integration, key) DO UPDATE SET value = excluded.value",
        (integration, key, value),
    )


# -- monitoring: what the metrics restore at start and read at each scrape ---------------------------------

LAST_SUCCESS_KEY = "monitoring.last_success."  # + flow; kept in kv because report retention prunes old runs


def record_last_success(c: sqlite3.Connection, integration: str, flow: str, finished_at: str) -> None:
    kv_set(c, integration, LAST_SUCCESS_KEY + flow, finished_at)


def flow_health(c: sqlite3.Connection, integration: str, flow: str) -> tuple[str | None, int]:
    """(finish time of the last success or partial run, failed runs in a row since then, latest first)."""
    last = kv_get(c, integration, LAST_SUCCESS_KEY + flow)
    if last is None:
        row = c.execute(
            "SELECT MAX(finished_at) FROM runs WHERE integration = ? AND flow = ? "
            "AND status IN ('success', 'partial')", (integration, flow),
        ).fetchone()
        last = row[0] if row else None
    failures = 0
    for (status,) in c.execute(
        "SELECT status FROM runs WHERE integration = ? AND flow = ? AND status != 'running' ORDER BY id DESC",
        (integration, flow),
    ):
        if status == "cancelled":  # a cancel neither breaks nor extends a streak (as the live gauge)
            continue
        if status != "failed":
            break
        failures += 1
    return last, failures


def queue_summary(c: sqlite3.Connection, integration: str) -> tuple[int, str | None, int]:
    """(pending events, receive time of the oldest pending one, dead letters): three lookups in the partial
    indexes, whatever the number of processed-event tombstones."""
    depth = c.execute("SELECT COUNT(*) FROM realtime_queue WHERE integration = ? AND attempts >= 0",
                      (integration,)).fetchone()[0]
    oldest = c.execute("SELECT received_at FROM realtime_queue WHERE integration = ? AND attempts >= 0 "
                       "ORDER BY seq LIMIT 1", (integration,)).fetchone()
    dead = c.execute("SELECT COUNT(*) FROM realtime_queue WHERE integration = ? AND attempts = -2",
                     (integration,)).fetchone()[0]
    return int(depth), oldest[0] if oldest else None, int(dead)
