"""The SQLite connection: stdlib sqlite3 driven through ``trio.to_thread``, one hop per transaction.

Why not aiosqlite: it is asyncio-only (trio would need trio-asyncio), and under cancellation it lets a COMMIT
land after the caller was told it was cancelled (measured in ``shared/research/trio_daemon.md`` section 1).
Here every unit of work is a plain function ``fn(conn, ...)`` run inside ``BEGIN IMMEDIATE .. COMMIT`` in a
single worker-thread hop, behind a ``CapacityLimiter(1)`` (one writer). A cancel either lands before the
transaction starts, interrupts the running statement (the progress handler polls trio, and SQLite rolls the
transaction back), or waits for the COMMIT to finish, so the store is never left half-written.

Durability: WAL with ``synchronous = FULL``, so every COMMIT is fsynced before it returns. A webhook's 202
(and a cursor moved past an acknowledged write) promises more than surviving a process crash: it must survive
a power loss, which ``NORMAL`` does not guarantee for the last commits. Callers batch many records per
transaction (webhook group commit, report flushes), which keeps the fsyncs affordable.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio

from crmsync.state.migrations import migrate

T = TypeVar("T")
log = logging.getLogger("crmsync.state.db")

BUSY_TIMEOUT_MS = 5000
PROGRESS_EVERY_OPS = 10_000


class Database:
    """One writer connection. Use :meth:`tx` for writes and reads alike (reads are cheap in WAL).

    ``inline=True`` runs each transaction on the trio thread instead of a worker thread. It exists for tests
    under ``MockClock(autojump_threshold=0)``: trio counts a task waiting on a worker thread as idle, so the
    mock clock would jump hours ahead in the middle of a transaction. Same transaction functions, same
    atomicity; never used by the daemon in production.
    """

    def __init__(self, conn: sqlite3.Connection, path: str, *, inline: bool = False):
        self._conn = conn
        self._limiter = trio.CapacityLimiter(1)
        self.path = path
        self.inline = inline
        self._closed = False
        # plain counters, for tests and benchmarks that check how work is batched
        self.transactions = 0  # transactions run (committed or rolled back)
        self.thread_hops = 0  # worker-thread hops taken by :meth:`tx`

    @classmethod
    async def open(cls, path: str | Path, *, inline: bool = False, durable: bool = True) -> Database:
        """``durable=False`` (throwaway stores: tests, scratch copies) skips the fsync of each commit: a commit
        then survives a process crash but not a power loss. The daemon's store is always durable."""
        path = str(path)
        if inline:
            return cls(_connect(path, durable), path, inline=True)
        conn = await trio.to_thread.run_sync(partial(_connect, path, durable))
        return cls(conn, path)

    @classmethod
    def open_sync(cls, path: str | Path) -> Database:
        """For synchronous callers (CLI tools, tests outside trio)."""
        return cls(_connect(str(path)), str(path))

    async def tx(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` as one transaction in one thread hop; returns its result."""
        if self.inline:
            await trio.lowlevel.checkpoint()
            return self._run(fn, args, cancellable=False)
        self.thread_hops += 1
        return await trio.to_thread.run_sync(self._tx_sync, fn, args, limiter=self._limiter)

    def tx_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return self._run(fn, args, cancellable=False)

    def _tx_sync(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        return self._run(fn, args, cancellable=True)

    def _run(self, fn: Callable[..., T], args: tuple[Any, ...], *, cancellable: bool) -> T:
        if self._closed:
            raise RuntimeError("database is closed")
        c = self._conn
        if cancellable:
            c.set_progress_handler(_abort_if_cancelled, PROGRESS_EVERY_OPS)
        try:
            self.transactions += 1
            c.execute("BEGIN IMMEDIATE")
            try:
                result = fn(c, *args)
                c.execute("COMMIT")
                return result
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if cancellable and "interrupted" in str(exc):
                trio.from_thread.check_cancelled()  # re-raises trio.Cancelled in the caller
            raise
        finally:
            if cancellable:
                c.set_progress_handler(None, 0)

    async def aclose(self) -> None:
        if self.inline:
            self.close()
        elif not self._closed:
            await trio.to_thread.run_sync(self.close, limiter=self._limiter)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._conn.close()


def _abort_if_cancelled() -> int:
    try:
        trio.from_thread.check_cancelled()
    except trio.Cancelled:
        return 1
    except RuntimeError:  # not in a trio worker thread (sync use)
        return 0
    return 0


def _connect(path: str, durable: bool = True) -> sqlite3.Connection:
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    # WAL + FULL: each COMMIT is fsynced, so it survives a power loss, not only a process crash (see above)
    conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
    conn.execute("PRAGMA foreign_keys = ON")
    migrate(conn)
    return conn
