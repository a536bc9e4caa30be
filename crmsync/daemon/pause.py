"""Pause without forgetting: ``pause NAME`` / ``resume NAME``, next to activate/deactivate.

Deactivating an integration stops it (the seed's "shut off the data sync"); pausing keeps it active but holds
it: timers do not fire (a slot that falls due while paused fires once on resume), the real-time consumer takes
nothing from the queue, and a running full sync stops at its next page boundary (checkpointed). Webhooks are
still accepted and durably queued, so nothing is lost; on resume the queue drains in arrival order. The paused
state is kept in the store (``kv`` key ``paused``, value: since when), so it survives restarts.
"""

from __future__ import annotations

import sqlite3

import trio

from crmsync.state import queries as q

KEY = "paused"


def paused_since(c: sqlite3.Connection, integration: str) -> str | None:
    return q.kv_get(c, integration, KEY)


def set_paused(c: sqlite3.Connection, integration: str, since: str | None) -> bool:
    """Pause (``since`` set) or resume (None); True when the stored state changed."""
    was = q.kv_get(c, integration, KEY)
    if since is None:
        q.kv_delete(c, integration, KEY)
        return was is not None
    if was is None:
        q.kv_set(c, integration, KEY, since)
        return True
    return False


class PauseGate:
    """Open while running, shut while paused; holders wait at :meth:`wait_open`."""

    def __init__(self) -> None:
        self._open = trio.Event()
        self._open.set()

    @property
    def paused(self) -> bool:
        return not self._open.is_set()

    def pause(self) -> None:
        if self._open.is_set():
            self._open = trio.Event()

    def resume(self) -> None:
        self._open.set()

    async def wait_open(self) -> None:
        await self._open.wait()
