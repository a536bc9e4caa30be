"""A daemon (supervisor + control socket, the fake kind) in a background thread, for driving ``crmsync``'s
control commands in-process: ``cli.main([...])`` runs its own trio loop in the test's thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import structlog.testing
import trio

from crmsync.clock import WallClock
from crmsync.daemon import cli
from crmsync.daemon.control import ControlServer, open_unix_listener
from crmsync.daemon.metrics import Metrics
from crmsync.daemon.supervisor import Supervisor
from crmsync.state import Database
from tests.conftest import fake_config


@dataclass
class RunningDaemon:
    socket: Path
    supervisor: Supervisor
    token: trio.lowlevel.TrioToken
    reload_result: dict[str, Any] = field(default_factory=dict)

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``await fn(*args)`` in the daemon's loop (e.g. ``supervisor.activate``)."""
        return trio.from_thread.run(fn, *args, trio_token=self.token)

    def cli(self, *argv: str) -> int:
        return cli.main([*argv, "--socket", str(self.socket)])


@contextmanager
def running_daemon(tmp_path: Path, integrations: dict[str, dict[str, Any]]) -> Iterator[RunningDaemon]:
    config = fake_config(tmp_path, integrations)
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        db = await Database.open(tmp_path / "cli.db")
        try:
            supervisor = Supervisor(config, db, Metrics(), WallClock())
            async with trio.open_nursery() as nursery:
                await nursery.start(supervisor.run)
                result: dict[str, Any] = {"added": [], "removed": [], "changed": ["a"], "unchanged": [],
                                          "restart_required_for": ["http"]}

                async def reload() -> dict[str, Any]:
                    return result

                server = ControlServer(supervisor, idle_timeout=300, reload_config=reload)
                path = tmp_path / "ctl.sock"
                nursery.start_soon(server.serve, await open_unix_listener(path, 0o660))
                holder["daemon"] = RunningDaemon(path, supervisor, trio.lowlevel.current_trio_token(), result)
                holder["cancel"] = nursery.cancel_scope
                started.set()
        finally:
            await db.aclose()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # surfaced to the test below
            holder["error"] = exc
            started.set()

    # the daemon's log would land on the same stdout as the CLI's output: keep it aside
    with structlog.testing.capture_logs():
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        started.wait(30)
        if "error" in holder:
            raise holder["error"]
        daemon: RunningDaemon = holder["daemon"]
        try:
            yield daemon
        finally:
            trio.from_thread.run_sync(holder["cancel"].cancel, trio_token=daemon.token)
            thread.join(30)
