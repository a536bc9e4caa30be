"""The daemon process: one trio root nursery holding the supervisor, the HTTP listeners, the control server
and the systemd notifier.

Shutdown (SIGTERM/SIGINT, or :meth:`Daemon.stop`): STOPPING=1, stop accepting (control socket closed, HTTP
listeners closed with in-flight requests given the graceful timeout), integrations stop at their next safe
point (a full sync checkpoints its last acknowledged page), then exit 0. The whole sequence is bounded by
``shutdown_timeout`` (keep it below the unit's TimeoutStopSec); a second signal cancels at once. The store is
consistent either way: every write is one transaction in one thread hop.
"""

from __future__ import annotations

import contextlib
import os
import signal
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import trio

from crmsync import __version__
from crmsync.clock import WallClock
from crmsync.daemon.config import Config, load_config
from crmsync.daemon.control import ControlServer, listener_from_fd, open_unix_listener
from crmsync.daemon.heap import freeze_startup_heap
from crmsync.daemon.http import HttpApp, serve_http
from crmsync.daemon.metrics import Metrics
from crmsync.daemon.supervisor import Supervisor
from crmsync.daemon.systemd import Notifier, listen_fds, socket_address, watchdog_interval
from crmsync.state import Database

log = structlog.get_logger("crmsync.daemon.app")

STATUS_INTERVAL_S = 5.0

class Daemon:
    def __init__(self, config: Config, *, clock: WallClock | None = None, handle_signals: bool = True,
                 config_path: str | None = None, db_inline: bool = False,
                 transports: dict[str, Any] | None = None, settle_gc: bool = False):
        self.config = config
        self.settle_gc = settle_gc  # the daemon's own process only (crmsync run), not tests sharing a process
        self.clock = clock or WallClock()
        self.handle_signals = handle_signals
        self.config_path = config_path or config.source
        self.db_inline = db_inline  # tests under MockClock only (see Database)
        self.transports = transports or {}  # tests: in-process simulators per system
        self.metrics = Metrics(now=lambda: self.clock.now().timestamp())
        self.db: Database | None = None
        self.supervisor: Supervisor | None = None
        self.ready = trio.Event()
        self.stopped = trio.Event()
        self._stop_requested = trio.Event()
        self._http_shutdown = trio.Event()
        self.webhook_url: str | None = None
        self.metrics_url: str | None = None
        self.control_path: str | None = None
        self.http_apps: list[HttpApp] = []
        self.notifier = Notifier({})  # the real one is made in run(), where NOTIFY_SOCKET is read
        self._own_control_socket = False

    def stop(self) -> None:
        self._stop_requested.set()

    async def reload(self) -> dict[str, Any]:
        """Re-read the config file; an invalid file raises ConfigError and the running config stays."""
        assert self.supervisor is not None
        if not self.config_path:
            return {"reloaded": False, "reason": "this daemon was not started from a config file"}
        # systemd shows the unit "reloading" until READY=1, whether the reload came by SIGHUP or the socket
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
            result = await self.supervisor.reload(new)
        finally:
            self.notifier.notify("READY=1", f"STATUS={self.status_line()}")  # the updater may repeat it once
        self.config = self.supervisor.config
        log.info("config_reloaded", **result)
        return {"reloaded": True, **result}

    def status_line(self) -> str:
        """systemd's STATUS=: what the daemon is doing, in one line (`systemctl status crmsync`)."""
        sup = self.supervisor
        if sup is None:
            return "starting"
        active = len(sup.runtimes)
        parts = [f"{active} active integration{'s' if active != 1 else ''}"]
        running = []
        for name, runtime in sorted(sup.runtimes.items()):
            for flow in sorted(set(runtime.running_flows().values())):
                progress = runtime.full_sync_progress if flow == "full_sync" else None
                if progress:
                    total = progress.get("total")
                    running.append(f"{name} full sync {progress['done']}/{total if total else '?'}")
                elif flow != "realtime":
                    running.append(f"{name} {flow}")
        if running:
            parts.append("running: " + ", ".join(running))
        if sup.errors:
            parts.append("in error: " + ", ".join(sorted(sup.errors)))
        return "; ".join(parts)

    async def run(self, *, task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        notifier = self.notifier = Notifier()
        systemd_fds = listen_fds()
        notifier.notify("STATUS=opening the store (and applying any migration)")
        self.db = await Database.open(cfg.daemon.database_path, inline=self.db_inline)
        try:
            self.supervisor = Supervisor(cfg, self.db, self.metrics, self.clock, transports=self.transports)
            async with trio.open_nursery() as root:
                sig_scope = trio.CancelScope()
                if self.handle_signals:
                    root.start_soon(self._signals, root.cancel_scope, sig_scope)
                sup_scope = trio.CancelScope()
                await root.start(self._run_supervisor, sup_scope)
                # control socket: systemd's if handed over, else our own
                control_fd = systemd_fds.get("control") or next(iter(systemd_fds.values()), None)
                if control_fd is not None:
                    listener = listener_from_fd(control_fd)
                    self.control_path = socket_address(control_fd)  # the path clients use, not "fd:3"
                else:
                    listener = await open_unix_listener(Path(cfg.daemon.control_socket), cfg.daemon.control_socket_mode)
                    self.control_path = str(cfg.daemon.control_socket)
                    self._own_control_socket = True
                self.supervisor.listen["control"] = self.control_path
                control = ControlServer(self.supervisor, cfg.daemon.control_idle_timeout.total_seconds(), self.reload,
                                        send_timeout=cfg.daemon.control_send_timeout.total_seconds(),
                                        max_clients=cfg.daemon.control_max_clients)
                ctl_scope = trio.CancelScope()
                grace = cfg.http.graceful_timeout.total_seconds()
                request_timeout = cfg.http.request_timeout.total_seconds()
                serve = partial(serve_http, max_connections=cfg.http.max_connections)
                if cfg.http.metrics_listen:
                    hooks = HttpApp(self.supervisor, self.metrics, cfg.http.max_body_bytes, serve_metrics=False,
                                    request_timeout=request_timeout)
                    mets = HttpApp(self.supervisor, self.metrics, cfg.http.max_body_bytes, serve_webhooks=False,
                                   request_timeout=request_timeout)
                    self.http_apps = [hooks, mets]
                    self.webhook_url = await root.start(serve, hooks, cfg.http.webhook_listen, grace,
                                                        self._http_shutdown)
                    self.metrics_url = await root.start(serve, mets, cfg.http.metrics_listen, grace,
                                                        self._http_shutdown)
                else:
                    both = HttpApp(self.supervisor, self.metrics, cfg.http.max_body_bytes,
                                   request_timeout=request_timeout)
                    self.http_apps = [both]
                    self.webhook_url = await root.start(serve, both, cfg.http.webhook_listen, grace,
                                                        self._http_shutdown)
                    self.metrics_url = self.webhook_url
                self.supervisor.listen.update(
                    webhooks=self.webhook_url, metrics=self.metrics_url, control=self.control_path)
                # serve the control socket last, so that status always knows every address
                root.start_soon(self._serve_control, control, listener, ctl_scope)
                wd_scope = trio.CancelScope()
                interval = watchdog_interval()
                if interval:
                    root.start_soon(self._watchdog, notifier, interval, wd_scope)
                status = self.status_line()
                notifier.notify("READY=1", f"STATUS={status}")
                st_scope = trio.CancelScope()
                if notifier.enabled:
                    root.start_soon(self._status_updates, notifier, st_scope, status)
                log.info("ready", version=__version__, pid=os.getpid(), webhooks=self.webhook_url,
                         metrics=self.metrics_url, control=self.control_path, store=str(self.db.path),
                         integrations=sorted(self.supervisor.kinds))
                if self.settle_gc:
                    freeze_startup_heap()  # crmsync.daemon.heap says why
                self.ready.set()
                task_status.started(self)

                await self._stop_requested.wait()
                # -- ordered, bounded shutdown ------------------------------------------------------------
                st_scope.cancel()
                notifier.notify("STOPPING=1", "STATUS=stopping: integrations finish at their next safe point")
                log.info("stopping")
                bound = cfg.daemon.shutdown_timeout.total_seconds()
                root.cancel_scope.deadline = trio.current_time() + bound
                ctl_scope.cancel()
                for app in self.http_apps:
                    app.accepting = False
                self._http_shutdown.set()
                with trio.move_on_after(max(1.0, bound - 2)):
                    await self.supervisor.shutdown(grace=max(1.0, bound - 5))
                sup_scope.cancel()
                wd_scope.cancel()
                sig_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.db.aclose()
            notifier.close()
            if self.control_path and self._own_control_socket:
                with contextlib.suppress(OSError):
                    os.unlink(self.control_path)
            self.stopped.set()
            log.info("stopped")

    async def _run_supervisor(self, scope: trio.CancelScope, *,
                              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self.supervisor is not None
        with scope:
            await self.supervisor.run(task_status=task_status)

    async def _serve_control(self, control: ControlServer, listener: trio.SocketListener,
                             scope: trio.CancelScope) -> None:
        with scope:
            await control.serve(listener)

    async def _status_updates(self, notifier: Notifier, scope: trio.CancelScope, last: str) -> None:
        """Keep STATUS= current: checked every few seconds, sent only when it changed."""
        with scope:
            while True:
                line = self.status_line()
                if line != last:
                    notifier.notify(f"STATUS={line}")
                    last = line
                await trio.sleep(STATUS_INTERVAL_S)

    async def _watchdog(self, notifier: Notifier, interval: float, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                notifier.notify("WATCHDOG=1")
                await trio.sleep(interval)

    async def _signals(self, root: trio.CancelScope, scope: trio.CancelScope) -> None:
        with scope, trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    try:
                        await self.reload()
                    except Exception as exc:
                        log.error("reload_refused", error=str(exc))
                    continue
                if self._stop_requested.is_set():
                    log.warning("second_signal_cancelling_now", signal=signal.Signals(signum).name)
                    root.cancel()  # transactions are atomic: cancelling now leaves the store consistent
                    return
                log.info("signal", signal=signal.Signals(signum).name)
                self.stop()
