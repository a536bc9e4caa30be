"""The ``crmsync`` command line: run the daemon, the sandbox, check a config, and control a running daemon.

Control commands find the socket through ``--socket``, else ``$CRMSYNC_SOCKET``, else the configured
``daemon.control_socket``. They print human-readable text, or the raw result with ``--json`` (a stable API).
Exit status: 0 success, 1 refused or invalid, 2 usage, 3 cannot reach the daemon.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import trio

from crmsync import __version__
from crmsync.daemon import render
from crmsync.daemon.config import Config, ConfigError, DaemonConfig, default_config_path, load_config

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DRY_RUN_HELP = ("read both systems as a real run would and print its report, without any write call, link, "
                "cursor or fingerprint change (waits for the end)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crmsync",
        description="Keep contacts and messaging consent in sync between CRMs and messaging platforms.",
        epilog="Run 'crmsync COMMAND --help' for a command's options. Docs: README.md.",
    )
    p.add_argument("--version", action="version", version=f"crmsync {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def config_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", metavar="FILE",
                        help=f"config file (default: $CRMSYNC_CONFIG or {default_config_path()})")

    sp = sub.add_parser("run", help="run the daemon in the foreground (systemd's ExecStart)",
                        description="Run the daemon in the foreground until SIGTERM/SIGINT. SIGHUP reloads.")
    config_arg(sp)

    sp = sub.add_parser(
        "sandbox", help="run simulators of all four systems plus the daemon, syncing demo data",
        description="Start loopback simulators of EveryAction, Mobile Commons, Efficy and APSIS One with "
                    "generated demo data, and the daemon configured against them with every integration "
                    "active. Runs until SIGTERM/SIGINT.")
    sp.add_argument("--contacts", type=int, default=200, metavar="N", help="demo contacts per system (default 200)")
    sp.add_argument("--state-dir", metavar="DIR", help="where the database, config and control socket live "
                    "(default: a fresh temporary folder)")
    sp.add_argument("--port", type=int, default=0, help="webhook/metrics port (default: any free port)")

    sp = sub.add_parser("check-config", help="validate a config file; exit 1 naming each bad key",
                        description="Validate the config. Prints each problem as 'key.path: reason'; exit 0 "
                                    "when valid, 1 otherwise.")
    config_arg(sp)

    def control(name: str, help_: str, *, integration: str = "none", extra: Any = None) -> None:
        sp = sub.add_parser(name, help=help_, description=help_ + ". Talks to the daemon's control socket.")
        if integration == "required":
            sp.add_argument("name", metavar="NAME", help="integration name, as in [integrations.NAME]")
        elif integration == "optional":
            sp.add_argument("name", metavar="NAME", nargs="?", help="integration name (omit for the daemon)")
        if extra:
            extra(sp)
        sp.add_argument("--json", action="store_true", help="print the raw JSON result (stable keys)")
        sp.add_argument("--socket", metavar="PATH", help="control socket (default: $CRMSYNC_SOCKET, then the "
                        "configured daemon.control_socket)")
        config_arg(sp)

    control("status", "show the daemon, or one integration in full", integration="optional")
    control("activate", "activate an integration (its first scheduled sync follows its schedule)",
            integration="required")
    control("deactivate", "deactivate an integration: stop all its flows, keep its state",
            integration="required")
    control("full-sync", "start a full sync (resumable; cancel with 'crmsync cancel')", integration="required",
            extra=lambda sp: (sp.add_argument("--watch", action="store_true", help="show progress until done"),
                              sp.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)))
    control("cancel", "cancel a running full sync or flow", integration="required")
    control("run-flow", "run one flow now", integration="required",
            extra=lambda sp: (sp.add_argument("flow", metavar="FLOW", help="flow name, e.g. ea_to_mc"),
                              sp.add_argument("--wait", action="store_true", help="wait for the run to end"),
                              sp.add_argument("--dry-run", action="store_true", help=DRY_RUN_HELP)))
    control("runs", "list recent runs of an integration", integration="required",
            extra=lambda sp: (sp.add_argument("--limit", type=int, default=20, help="runs to list (default 20)"),
                              sp.add_argument("--flow", help="only this flow")))
    control("report", "show a run's synchronization report (default: the latest run)", integration="required",
            extra=lambda sp: (sp.add_argument("run_id", metavar="RUN_ID", nargs="?", type=int,
                                              help="a run id from 'crmsync runs NAME' (default: the latest)"),
                              sp.add_argument("--limit", type=int, default=200, help="rows to show (default 200)"),
                              sp.add_argument("--offset", type=int, default=0, help="rows to skip first")))
    control("reload", "re-read the config file; only changed integrations restart")
    control("pause", "pause an integration: hold its timers, real-time queue and full sync; webhooks are still "
            "accepted and kept (survives restarts)", integration="required")
    control("dead-letters", "list the real-time events set aside after failing too often (error, first and last "
            "attempt)", integration="required",
            extra=lambda sp: sp.add_argument("--limit", type=int, default=1000, help="rows to show (default 1000)"))
    control("requeue", "put dead letters back at the end of the real-time queue", integration="required",
            extra=lambda sp: (sp.add_argument("ids", metavar="ID", nargs="*", type=int, help="dead-letter ids"),
                              sp.add_argument("--all", action="store_true", help="every dead letter")))
    control("drop", "remove dead letters for good (logged with your uid)", integration="required",
            extra=lambda sp: sp.add_argument("ids", metavar="ID", nargs="+", type=int, help="dead-letter ids"))
    control("explain", "why a record is (not) synced: every rule with the values it looked at and its verdict, "
            "what a sync would write, its last report rows (writes nothing)", integration="required",
            extra=lambda sp: sp.add_argument("record", metavar="RECORD",
                                             help="either system's id, a phone number or an email address"))
    control("consent-history", "show a person's consent history, oldest first (every change crmsync made or "
            "saw); without PERSON, the whole trail", integration="required",
            extra=lambda sp: (sp.add_argument("person", metavar="PERSON", nargs="?",
                                              help="the person's id in either system, a phone number or an email"),
                              sp.add_argument("--csv", action="store_true",
                                              help="print CSV (with no PERSON: the whole trail, for a compliance "
                                                   "request)"),
                              sp.add_argument("--limit", type=int, default=1000, help="entries (default 1000)")))
    control("resume", "resume a paused integration: the queue drains in arrival order, a missed timer fires once",
            integration="required")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "sandbox":
            from crmsync.daemon.sandbox import run_sandbox

            return _start(lambda: run_sandbox(contacts=args.contacts, state_dir=args.state_dir, port=args.port))
        if args.command == "check-config":
            return cmd_check_config(args)
        return cmd_control(args)
    except KeyboardInterrupt:
        return 130


def _config_path(args: argparse.Namespace) -> str:
    return getattr(args, "config", None) or default_config_path()


def _load_or_report(path: str, headline: str) -> Config | None:
    """The config, or None after printing every problem (key path and reason) to stderr."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{path}: {headline}", file=sys.stderr)
        for line in exc.lines():
            print(f"  {line}", file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    path = _config_path(args)
    config = _load_or_report(path, "invalid")
    if config is None:
        return EXIT_REFUSED
    print(f"{path}: ok ({len(config.integrations)} integrations: "
          f"{', '.join(f'{n} [{c.kind}]' for n, c in config.integrations.items()) or 'none'})")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from crmsync.daemon.app import Daemon
    from crmsync.daemon.logging import configure_logging

    path = _config_path(args)
    config = _load_or_report(path, "invalid config, not starting")
    if config is None:
        return EXIT_REFUSED
    configure_logging(config.daemon.log_level)
    daemon = Daemon(config, config_path=path)
    return _start(lambda: trio.run(daemon.run))


def _start(main: Callable[[], object]) -> int:
    """Run the daemon (or the sandbox); a port in use or a socket path we may not create is one clear line."""
    try:
        main()
    except (OSError, BaseExceptionGroup) as exc:
        # a port in use, a socket path we may not create...: say so plainly, no traceback
        problems = _os_errors(exc)
        if not problems:
            raise
        for problem in problems:
            print(f"crmsync: cannot start: {problem}", file=sys.stderr)
        print("  (check http.webhook_listen, http.metrics_listen and daemon.control_socket)", file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK


def _os_errors(exc: BaseException) -> list[OSError]:
    """The OSErrors in ``exc``, looking inside exception groups (trio nurseries raise them)."""
    if isinstance(exc, OSError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        found = [e for sub in exc.exceptions for e in _os_errors(sub)]
        # only when every leaf is an OSError: anything else is a bug and keeps its traceback
        leaves = sum(1 for _ in _leaves(exc))
        return found if len(found) == leaves else []
    return []


def _leaves(exc: BaseException) -> Any:
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from _leaves(sub)
    else:
        yield exc


def socket_path(args: argparse.Namespace) -> str:
    if getattr(args, "socket", None):
        return str(args.socket)
    if os.environ.get("CRMSYNC_SOCKET"):
        return os.environ["CRMSYNC_SOCKET"]
    try:
        return str(load_config(_config_path(args)).daemon.control_socket)
    except ConfigError:
        return str(DaemonConfig().control_socket)


def cmd_control(args: argparse.Namespace) -> int:
    from crmsync.daemon.control import ControlClient

    cmd = args.command.replace("-", "_")
    call_args: dict[str, Any] = {}
    if getattr(args, "name", None):
        call_args["integration"] = args.name
    if cmd == "run_flow":
        call_args["flow"] = args.flow
        call_args["wait"] = args.wait
    elif cmd == "runs":
        call_args["limit"] = args.limit
        if args.flow:
            call_args["flow"] = args.flow
    elif cmd == "report":
        if args.run_id is not None:
            call_args["run_id"] = args.run_id
        call_args["limit"] = args.limit
        call_args["offset"] = args.offset
    elif cmd == "dead_letters":
        call_args["limit"] = args.limit
    elif cmd == "requeue":
        if args.all == bool(args.ids):
            print("crmsync requeue: give dead-letter ids or --all (one of the two)", file=sys.stderr)
            return EXIT_USAGE
        call_args.update({"all": True} if args.all else {"ids": args.ids})
    elif cmd == "drop":
        call_args["ids"] = args.ids
    elif cmd == "explain":
        call_args["record"] = args.record
    elif cmd == "consent_history":
        if args.person:
            call_args["person"] = args.person
        call_args["limit"] = args.limit
        if args.csv:
            return _consent_csv(socket_path(args), call_args, whole=not args.person)
    if getattr(args, "dry_run", False):
        call_args["dry_run"] = True
    path = socket_path(args)

    async def go() -> dict[str, Any]:
        long = call_args.get("wait") or call_args.get("dry_run")
        async with ControlClient(path, timeout=24 * 3600 if long else 60) as client:
            reply = await client.call(cmd, **call_args)
            if cmd == "full_sync" and args.watch and reply.get("ok") and not call_args.get("dry_run"):
                await _watch(client, args.name)
                reply = await client.call("status", integration=args.name)
        return reply

    try:
        reply = trio.run(go)
    except (OSError, ConnectionError) as exc:
        print(f"crmsync: cannot reach the daemon at {path}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        code, _ = _print_reply(cmd, reply, args.json)
    except BrokenPipeError:  # `crmsync status | head`: the reader left; not an error of ours
        sys.stderr.close()
        return EXIT_OK
    return code


def _consent_csv(path: str, call_args: dict[str, Any], *, whole: bool) -> int:
    """Write the consent history as CSV to stdout; the whole trail is read page by page."""
    import csv

    from crmsync.daemon.consent_history import CSV_COLUMNS
    from crmsync.daemon.control import ControlClient

    out = csv.DictWriter(sys.stdout, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")

    async def go() -> dict[str, Any] | None:
        async with ControlClient(path) as client:
            offset, page = 0, 10_000 if whole else call_args["limit"]
            out.writeheader()
            while True:
                reply = await client.call("consent_history", **{**call_args, "limit": page, "offset": offset})
                if not reply.get("ok"):
                    return reply
                entries = reply["result"]["entries"]
                out.writerows(entries)
                offset += len(entries)
                if not whole or len(entries) < page:
                    return None

    try:
        failed = trio.run(go)
    except BrokenPipeError:  # `... --csv | head`: the reader left; not an error of ours
        sys.stderr.close()
        return EXIT_OK
    except (OSError, ConnectionError) as exc:
        print(f"crmsync: cannot reach the daemon at {path}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if failed is not None:
        return _print_reply("consent_history", failed, False)[0]
    return EXIT_OK


async def _watch(client: Any, name: str) -> None:
    while True:
        reply = await client.call("status", integration=name)
        fs = (reply.get("result") or {}).get("full_sync") or {}
        sys.stderr.write("\r" + render.progress_bar(fs.get("done", 0), fs.get("total")))
        sys.stderr.flush()
        if fs.get("state") != "running":
            sys.stderr.write("\n")
            return
        await trio.sleep(1)


def _print_reply(cmd: str, reply: dict[str, Any], as_json: bool) -> tuple[int, str]:
    if not reply.get("ok"):
        err = reply.get("error") or {}
        if as_json:
            print(json.dumps(reply, indent=2, default=str))
        else:
            print(f"crmsync: {err.get('code', 'error')}: {err.get('message', '')}", file=sys.stderr)
            for problem in err.get("problems", []):
                print(f"  {problem}", file=sys.stderr)
        return EXIT_REFUSED, ""
    result = reply.get("result")
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return EXIT_OK, ""
    assert isinstance(result, dict)
    if result.get("dry_run"):
        print(render.render_dry_run(result))
    elif cmd == "status":
        print(render.render_status(result))
    elif cmd == "runs":
        print(render.render_runs(result))
    elif cmd == "report":
        print(render.render_report(result))
    elif cmd == "run_flow" and "run" in result:
        run = result["run"] or {}
        print(f"run {result['run_id']} ({result['flow']}): {run.get('status')}; "
              f"{render.counts_line(run.get('counts'))}")
    elif cmd in ("pause", "resume"):
        print(f"{result['integration']}: " + (
            f"paused since {result.get('since')}: timers and the real-time queue are held; webhooks are still "
            "accepted and kept" if result["paused"] else "resumed: the real-time queue drains in arrival order")
            + ("" if result.get("changed") else " (no change)"))
    elif cmd == "dead_letters":
        print(render.render_dead_letters(result))
    elif cmd in ("requeue", "drop"):
        done = result.get("requeued") or result.get("dropped") or []
        ids = [str(d["id"] if isinstance(d, dict) else d) for d in done]
        print(f"{result['integration']}: {cmd}{'d' if cmd == 'requeue' else 'ped'} {len(ids)} dead letter(s)"
              + (f": {', '.join(ids)}" if ids else "")
              + (f"; not found: {', '.join(map(str, result['not_found']))}" if result.get("not_found") else ""))
    elif cmd == "consent_history":
        print(render.render_consent_history(result))
    elif cmd == "explain":
        print(render.render_explain(result))
    elif cmd == "reload":
        print("reloaded: " + ", ".join(f"{k}={v}" for k, v in result.items() if k != "reloaded"))
    else:
        print(", ".join(f"{k}: {v}" for k, v in result.items()))
    return EXIT_OK, ""


if __name__ == "__main__":
    raise SystemExit(main())
