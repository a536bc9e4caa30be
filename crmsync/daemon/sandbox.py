"""``crmsync sandbox``: simulators of every system on loopback, demo data, and the daemon against them.

Each integration kind contributes its part (:meth:`IntegrationKind.sandbox`): it starts its simulators,
seeds demo data and returns its config section. The sandbox writes the resulting config to
``STATE_DIR/config.toml`` (so you can read and reuse it), activates every integration, starts the daemon,
kicks off a first run of each flow so that reports exist at once, and prints where everything is. Daemon
logs go to ``STATE_DIR/daemon.log`` to keep the terminal readable. Without ``--state-dir`` that folder is
temporary and removed on exit, with the secrets the simulators generated in it.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import structlog
import trio

from crmsync.clock import WallClock
from crmsync.daemon.config import dump_toml, load_config
from crmsync.daemon.integrations import registry
from crmsync.daemon.integrations.base import SandboxPart
from crmsync.daemon.logging import configure_logging
from crmsync.daemon.runtime import FULL_SYNC_FLOW
from crmsync.state import Database
from crmsync.state import queries as q

log = structlog.get_logger("crmsync.daemon.sandbox")

SANDBOX_NAMES = {"everyaction_mobilecommons": "ea-mc", "efficy_apsis": "efficy-apsis"}


def run_sandbox(*, contacts: int, state_dir: str | None, port: int = 0, log_level: str = "info",
                log_format: str = "json") -> int:
    """Run until SIGTERM/SIGINT. Without ``state_dir`` everything lives in a fresh temporary folder (store,
    config, the simulators' generated secrets, the log), removed on the way out however the sandbox ends;
    with ``state_dir`` the folder is the user's and stays."""
    temporary = state_dir is None
    directory = Path(tempfile.mkdtemp(prefix="crmsync-sandbox-")) if state_dir is None else Path(state_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with (directory / "daemon.log").open("a", encoding="utf-8", buffering=1) as log_file:
            configure_logging(log_level, stream=log_file, fmt=log_format)
            trio.run(sandbox_main, directory, contacts, port)
    finally:
        logging.getLogger().handlers[:] = []  # the log file is closed (and maybe deleted)
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)
            print(f"crmsync sandbox: removed {directory}", file=sys.stderr)
    return 0


async def sandbox_main(directory: Path, contacts: int, port: int = 0, *, out: Any = None,
                       task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
    from crmsync.daemon.app import Daemon

    out = out or sys.stdout
    clock = WallClock()
    secrets_dir = directory / "secrets"
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    async with trio.open_nursery() as nursery:
        parts: dict[str, SandboxPart] = {}
        for kind in registry.all_kinds():
            name = SANDBOX_NAMES.get(kind.kind, kind.kind.replace("_", "-"))
            part = await kind.sandbox(name=name, clock=clock, contacts=contacts, secrets_dir=secrets_dir,
                                      nursery=nursery)
            if part is not None:
                parts[name] = part
        config_data: dict[str, Any] = {
            "daemon": {
                "state_dir": str(directory),
                "control_socket": str(directory / "control.sock"),
                "shutdown_timeout": "10s",
            },
            "http": {"webhook_listen": f"127.0.0.1:{port}"},
            "integrations": {name: part.config for name, part in parts.items()},
        }
        config_path = directory / "config.toml"
        config_path.write_text("# written by crmsync sandbox\n" + dump_toml(config_data, _Buffer()))
        config = load_config(config_path)
        db = await Database.open(config.daemon.database_path)
        try:
            now = clock.now().isoformat()
            for name, icfg in config.integrations.items():
                await db.tx(q.set_active, name, icfg.kind, True, now)
        finally:
            await db.aclose()

        daemon = Daemon(config, clock=clock, config_path=str(config_path))
        await nursery.start(daemon.run)
        assert daemon.supervisor is not None
        for name, part in parts.items():
            if part.after_start is not None:
                nursery.start_soon(part.after_start, f"{daemon.webhook_url}/webhooks/{name}")
            for flow in part.kickoff:
                try:
                    if flow == FULL_SYNC_FLOW:
                        await daemon.supervisor.full_sync(name)
                    else:
                        await daemon.supervisor.run_flow(name, flow)
                except Exception as exc:  # a busy flow is fine; the banner must still print
                    log.warning("sandbox_kickoff_failed", integration=name, flow=flow, error=str(exc))
        _banner(out, directory, daemon, parts)
        task_status.started(daemon)
        await daemon.stopped.wait()
        nursery.cancel_scope.cancel()


class _Buffer:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, s: str) -> None:
        self.parts.append(s)

    def getvalue(self) -> str:
        return "".join(self.parts)


def _command() -> str:
    """How the user ran us, so the suggested commands work as printed (a venv need not be activated)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if Path(argv0).name == "crmsync":
        return "crmsync" if shutil.which("crmsync") == str(Path(argv0).resolve()) else argv0
    return f"{sys.executable} -m crmsync"


def _banner(out: Any, directory: Path, daemon: Any, parts: dict[str, SandboxPart]) -> None:
    sock = directory / "control.sock"
    cmd = _command()
    lines = [
        "crmsync sandbox is running (Ctrl-C to stop)",
        f"  state dir:       {directory}",
        f"  config:          {directory / 'config.toml'}",
        f"  control socket:  {sock}",
        f"  metrics:         {daemon.metrics_url}/metrics",
        f"  webhooks:        {daemon.webhook_url}/webhooks/NAME",
        f"  daemon log:      {directory / 'daemon.log'}",
        "",
        "Try:",
        f"  {cmd} status --socket {sock}",
    ]
    for name, part in parts.items():
        lines.append(f"  {cmd} status {name} --socket {sock}")
        # the report of the first kicked-off flow (a bare `report NAME` is the latest run of any flow)
        first = next((f for f in part.kickoff if f != FULL_SYNC_FLOW), None)
        lines.append(f"  {cmd} report {name}{f' --flow {first}' if first else ''} --socket {sock}")
        for line in part.description:
            lines.append(f"    {line}")
        if part.explain_example:
            lines.append(f"  {cmd} explain {name} {part.explain_example} --socket {sock}")
            if part.explain_note:
                lines.append(f"    {part.explain_note}")
    if not parts:
        lines.append("  (no integration kinds provide a sandbox part)")
    print("\n".join(lines), file=out, flush=True)
