"""Numbered schema migrations, applied at start-up in order; ``PRAGMA user_version`` records the last one.

Add a migration by appending to :data:`MIGRATIONS`; never edit one that has shipped.
"""

from __future__ import annotations

import logging
import sqlite3

log = logging.getLogger("crmsync.state.migrations")

MIGRATIONS: list[str] = [
    # 1: the initial schema
    """
    CREATE TABLE integration_status (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        active INTEGER NOT NULL DEFAULT 0,
        since TEXT NOT NULL,
        full_sync_required INTEGER NOT NULL DEFAULT 0,
        full_sync_required_reason TEXT
    );
    CREATE TABLE cursors (
        integration TEXT NOT NULL,
        flow TEXT NOT NULL,
        value TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (integration, flow)
    );
    CREATE TABLE full_syncs (
        integration TEXT PRIMARY KEY,
        run_id INTEGER NOT NULL,
        state TEXT NOT NULL,             -- running | cancelled | completed | failed
        position TEXT,                   -- opaque resume position, after the last acknowledged batch
        done INTEGER NOT NULL DEFAULT 0,
        total INTEGER,
        started_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        finished_at TEXT
    );
    CREATE TABLE links (
        integration TEXT NOT NULL,
        crm_id TEXT NOT NULL,            -- EveryAction VAN ID, Efficy K_CONTACT
        messaging_id TEXT NOT NULL,      -- Mobile Commons profile id, APSIS profile key
        updated_at TEXT NOT NULL,
        PRIMARY KEY (integration, crm_id),
        UNIQUE (integration, messaging_id)
    );
    CREATE TABLE realtime_queue (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        integration TEXT NOT NULL,
        received_at TEXT NOT NULL,
        dedupe_key TEXT,
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    );
    CREATE INDEX realtime_queue_by_integration ON realtime_queue (integration, seq);
    CREATE TABLE fingerprints (
        integration TEXT NOT NULL,
        record_key TEXT NOT NULL,        -- the destination record, e.g. "apsis:profile:123"
        fingerprint TEXT NOT NULL,
        source_version TEXT,             -- the source's change time of what was written (stale-write guard)
        updated_at TEXT NOT NULL,
        PRIMARY KEY (integration, record_key)
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        integration TEXT NOT NULL,
        flow TEXT NOT NULL,
        status TEXT NOT NULL,            -- running | success | partial | failed | cancelled
        trigger TEXT NOT NULL DEFAULT 'schedule',
        started_at TEXT NOT NULL,
        finished_at TEXT,
        counts TEXT NOT NULL DEFAULT '{}',
        error TEXT
    );
    CREATE INDEX runs_by_integration ON runs (integration, id);
    CREATE TABLE report_rows (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        crm_id TEXT,
        messaging_id TEXT,
        outcome TEXT NOT NULL,           -- created | updated | unchanged | rejected | skipped
        reason TEXT,
        message TEXT,
        at TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    );
    CREATE TABLE kv (
        integration TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (integration, key)
    );
    """,
    # 2: replays of the same webhook event are accepted once (invariant 3)
    """
    CREATE UNIQUE INDEX realtime_queue_dedupe ON realtime_queue (integration, dedupe_key)
        WHERE dedupe_key IS NOT NULL;
    """,
    # efficy_apsis bulk full sync: APSIS opt-outs read up front from the consent report (one streamed report
    # per channel), looked up page by page instead of held in memory or read profile by profile;
    """
    CREATE TABLE IF NOT EXISTS apsis_reported_optouts (
        integration TEXT NOT NULL,
        profile_key TEXT NOT NULL,
        topic TEXT NOT NULL,
        channel TEXT NOT NULL,
        modified_at TEXT,
        PRIMARY KEY (integration, profile_key, topic, channel)
    ) WITHOUT ROWID;
    -- and the members of the tag queries, read once per full sync, so query tags travel in the imports
    CREATE TABLE IF NOT EXISTS efficy_query_members (
        integration TEXT NOT NULL,
        tag TEXT NOT NULL,
        contact_id TEXT NOT NULL,
        PRIMARY KEY (integration, contact_id, tag)
    ) WITHOUT ROWID;
    """,
]


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations, each in its own transaction; returns the schema version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise RuntimeError(
            f"database schema version {version} is newer than this crmsync ({len(MIGRATIONS)}); upgrade crmsync"
        )
    for number in range(version + 1, len(MIGRATIONS) + 1):
        script = MIGRATIONS[number - 1]
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("applied migration %d", number)
    return len(MIGRATIONS)


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT implicitly; split instead so each migration is one transaction.
    out, buf = [], []
    for line in script.splitlines():
        buf.append(line.split("--", 1)[0])
        joined = "\n".join(buf).strip()
        if joined.endswith(";") and sqlite3.complete_statement(joined):
            out.append(joined)
            buf = []
    rest = "\n".join(buf).strip()
    if rest:
        out.append(rest)
    return out
