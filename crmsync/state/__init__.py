"""The SQLite store: schema and migrations (:mod:`.migrations`), the one-hop-per-transaction connection
(:mod:`.db`) and the queries for cursors, links, the real-time queue, fingerprints, runs and reports
(:mod:`.queries`)."""

from crmsync.state.db import Database as Database
from crmsync.state.queries import QueuedEvent as QueuedEvent
from crmsync.state.queries import ReportRow as ReportRow
