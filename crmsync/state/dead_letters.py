"""Dead letters of the real-time queue (rows with ``attempts = -2``): list, requeue, drop. Plain sqlite3."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

DEAD = -2
TOMBSTONE = -1


def list_dead(c: sqlite3.Connection, integration: str, limit: int = 1000, offset: int = 0) -> list[dict[str, Any]]:
    rows = c.execute(
        "SELECT seq, received_at, payload, last_error, first_failed_at, last_failed_at FROM realtime_queue "
        "WHERE integration = ? AND attempts = ? ORDER BY seq LIMIT ? OFFSET ?",
        (integration, DEAD, limit, offset),
    ).fetchall()
    return [{"id": r["seq"], "received_at": r["received_at"], "payload": json.loads(r["payload"]),
             "error": r["last_error"], "first_attempt_at": r["first_failed_at"],
             "last_attempt_at": r["last_failed_at"]} for r in rows]


def oldest_dead(c: sqlite3.Connection, integration: str) -> str | None:
    row = c.execute("SELECT MIN(received_at) FROM realtime_queue WHERE integration = ? AND attempts = ?",
                    (integration, DEAD)).fetchone()
    return row[0] if row else None


def dead_ids(c: sqlite3.Connection, integration: str) -> list[int]:
    return [r[0] for r in c.execute(
        "SELECT seq FROM realtime_queue WHERE integration = ? AND attempts = ? ORDER BY seq", (integration, DEAD))]


def requeue(c: sqlite3.Connection, integration: str, ids: Sequence[int], now: str) -> list[dict[str, int]]:
    """Move dead letters to the end of the queue (a new sequence number, attempts reset), in id order.

    The row moves with its dedupe key, so a replay of the same webhook is still recognised. Returns
    ``[{"id": old, "new_id": new}]``; ids that are not dead letters of this integration are left out."""
    moved = []
    for seq in sorted(set(ids)):
        row = c.execute(
            "SELECT received_at, dedupe_key, payload FROM realtime_queue WHERE integration = ? AND seq = ? "
            "AND attempts = ?", (integration, seq, DEAD)).fetchone()
        if row is None:
            continue
        c.execute("DELETE FROM realtime_queue WHERE integration = ? AND seq = ?", (integration, seq))
        cur = c.execute(
            "INSERT INTO realtime_queue (integration, received_at, dedupe_key, payload) VALUES (?, ?, ?, ?)",
            (integration, row["received_at"], row["dedupe_key"], row["payload"]))
        moved.append({"id": seq, "new_id": int(cur.lastrowid or 0)})
    return moved


def drop(c: sqlite3.Connection, integration: str, ids: Sequence[int]) -> list[dict[str, Any]]:
    """Remove dead letters; returns what was removed (for the log). A deduplicated event stays as a processed
    tombstone, so a replay of the same webhook is not queued again (pruned with the report retention)."""
    dropped = []
    for seq in sorted(set(ids)):
        row = c.execute(
            "SELECT seq, dedupe_key, payload, last_error FROM realtime_queue WHERE integration = ? AND seq = ? "
            "AND attempts = ?", (integration, seq, DEAD)).fetchone()
        if row is None:
            continue
        if row["dedupe_key"] is None:
            c.execute("DELETE FROM realtime_queue WHERE integration = ? AND seq = ?", (integration, seq))
        else:
            c.execute("UPDATE realtime_queue SET payload = 'null', attempts = ? WHERE integration = ? AND seq = ?",
                      (TOMBSTONE, integration, seq))
        dropped.append({"id": seq, "error": row["last_error"], "payload": json.loads(row["payload"])})
    return dropped
