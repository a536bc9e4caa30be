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
    # 3: webhook replay window: digests of accepted signed bodies, pruned once older than the window
    """
    CREATE TABLE IF NOT EXISTS webhook_digests (
        integration TEXT NOT NULL,
        digest TEXT NOT NULL,            -- SHA-256 of the raw signed body, hex
        received_at REAL NOT NULL,       -- unix time of the accepted delivery
        PRIMARY KEY (integration, digest)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS webhook_digests_by_time ON webhook_digests (received_at);
    """,
    # 4: /metrics reads queue depth, oldest age and dead letters at every scrape: partial indexes keep
    # that independent of the processed-event tombstones the queue keeps for the retention period
    """
    CREATE INDEX realtime_queue_pending ON realtime_queue (integration, seq) WHERE attempts >= 0;
    CREATE INDEX realtime_queue_dead_letters ON realtime_queue (integration) WHERE attempts = -2;
    """,
    # 5: dead letters handled (issue 11): when a queued event was first and last tried and failed
    """
    ALTER TABLE realtime_queue ADD COLUMN first_failed_at TEXT;
    ALTER TABLE realtime_queue ADD COLUMN last_failed_at TEXT;
    """,
    # 6: consent history (issue 11): every consent change crmsync makes or observes; an audit trail with its own
    # retention (daemon.consent_history_retention_days, default: kept). No foreign key to runs: runs are pruned.
    """
    CREATE TABLE consent_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        integration TEXT NOT NULL,
        system TEXT NOT NULL,            -- where the status changed: everyaction, mobilecommons, efficy, apsis
        crm_id TEXT,                     -- the person in the CRM (VAN ID, K_CONTACT)
        messaging_id TEXT,               -- the person in the messaging platform (profile id, profile key)
        subject TEXT NOT NULL,           -- what the consent is for: "sms", "topic/channel", "crm_profile:ID"
        old_status TEXT,                 -- NULL: not known before
        new_status TEXT NOT NULL,
        source TEXT NOT NULL,            -- where the change came from (see crmsync/state/consent_history.py)
        by_crmsync INTEGER NOT NULL,     -- 1: crmsync wrote it; 0: crmsync observed it
        changed_at TEXT,                 -- when it happened at the source (NULL: unknown)
        changed_after TEXT,              -- when only an interval is known: it happened after this
        seen_at TEXT NOT NULL,           -- when crmsync saw (or made) it
        run_id INTEGER,
        detail TEXT
    );
    CREATE INDEX consent_history_by_crm ON consent_history (integration, crm_id, id);
    CREATE INDEX consent_history_by_messaging ON consent_history (integration, messaging_id, id);
    """,
    # 7: efficy_apsis: what crmsync has seen of each (contact, CRM Profile) link. Without the link's own change
    # time, this interval is all that can show a link is newer than an APSIS opt-out (issue 7, item 7).
    """
    CREATE TABLE link_observations (
        integration TEXT NOT NULL,
        contact_id TEXT NOT NULL,        -- Efficy K_CONTACT
        profile_id TEXT NOT NULL,        -- Efficy K_PROFILE (CRM Profile)
        present_since TEXT,              -- first seen present, in the current run of sightings; NULL: absent
        absent_at TEXT,                  -- last seen absent; NULL: never seen absent
        PRIMARY KEY (integration, contact_id, profile_id)
    );
    """,
    # 8: efficy_apsis bulk full sync: APSIS opt-outs read up front from the consent report (one streamed report
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
    # 9: everyaction_mobilecommons: Mobile Commons opt-ins that mc_to_ea could not sync yet because of the
    # matched EveryAction record's data (no email, ...); ea_to_mc counts the record's changes in ``marked``,
    # and mc_to_ea re-examines an opt-in whose ``marked`` moved past what it last ``examined``
    """
    CREATE TABLE IF NOT EXISTS ea_mc_waiting_opt_ins (
        integration TEXT NOT NULL,
        profile_id TEXT NOT NULL,          -- Mobile Commons profile id
        phone TEXT NOT NULL,               -- the profile's mobile number, E.164
        van_id TEXT,                       -- the matched EveryAction record; NULL: none matched yet
        reason TEXT NOT NULL,              -- why it could not sync (a report reason)
        since TEXT NOT NULL,               -- first skipped
        marked INTEGER NOT NULL DEFAULT 0, -- changes of the record (or of a record with this phone) seen
        examined INTEGER NOT NULL DEFAULT 0,  -- ``marked`` as it was when mc_to_ea last read the record
        PRIMARY KEY (integration, profile_id)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS ea_mc_waiting_opt_ins_van ON ea_mc_waiting_opt_ins (integration, van_id);
    CREATE INDEX IF NOT EXISTS ea_mc_waiting_opt_ins_phone ON ea_mc_waiting_opt_ins (integration, phone);
    """,
    # efficy_apsis tags flow: the contacts crmsync tagged from a query or CRM Profile, one row each (until now
    # one JSON list per tag in kv ``tag_members:{tag}``, read and written whole: moved here, then dropped);
    # and each run's candidates (the members just read, then those tagged before), walked in chunks in the
    # flow's order (id length, id) so a run holds one chunk, not every member
    """
    CREATE TABLE IF NOT EXISTS efficy_tagged_members (
        integration TEXT NOT NULL,
        tag TEXT NOT NULL,
        contact_id TEXT NOT NULL,
        PRIMARY KEY (integration, tag, contact_id)
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO efficy_tagged_members (integration, tag, contact_id)
        SELECT kv.integration, substr(kv.key, 13), CAST(member.value AS TEXT)
        FROM kv, json_each(kv.value) AS member
        WHERE substr(kv.key, 1, 12) = 'tag_members:' AND json_valid(kv.value);
    DELETE FROM kv WHERE substr(key, 1, 12) = 'tag_members:' AND json_valid(value);
    CREATE TABLE IF NOT EXISTS efficy_tag_candidates (
        run_id INTEGER NOT NULL,
        integration TEXT NOT NULL,
        tag TEXT NOT NULL,
        id_length INTEGER NOT NULL,
        contact_id TEXT NOT NULL,
        member INTEGER NOT NULL,         -- 1: in the query / holds the profile now; 0: only tagged before
        PRIMARY KEY (run_id, integration, tag, id_length, contact_id)
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
