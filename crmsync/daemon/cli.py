"""The ``crmsync`` command line: run the daemon, the sandbox, check a config, and control a running daemon.

Control commands are built from the command table (:mod:`crmsync.daemon.commands`): their arguments, types
and bounds are the socket's. They find the socket through ``--socket``, else ``$CRMSYNC_SOCKET``, else the
configured ``daemon.control_socket``, and print a designed human rendering (:mod:`crmsync.daemon.render`), or
the raw result with ``--json`` (a stable API).

Exit status: 0 success, 1 refused or invalid, 2 usage, 3 cannot reach the daemon; after waiting for a run
(``run-flow --wait``, ``full-sync --watch``, ``status NAME --watch``): 0 success, 4 partial, 5 failed,
6 cancelled.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from crmsync import __version__
from crmsync.daemon import render
from crmsync.daemon.commands import COMMANDS, Arg, ArgumentError, Command, validate
from crmsync.daemon.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    DaemonConfig,
    default_config_path,
    load_config,
)

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
# the outcome of a run that `run-flow --wait`, `full-sync --watch` or `status NAME --watch` waited for
EXIT_PARTIAL, EXIT_FAILED, EXIT_CANCELLED = 4, 5, 6
RUN_EXIT = {"success": EXIT_OK, "partial": EXIT_PARTIAL, "failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}
WATCH_POLL_S = 1.0
ARG_DEST = "arg_"  # parsed control arguments: args.arg_limit, ...
EXIT_CONFIG = 78  # EX_CONFIG (sysexits.h): `run` with an invalid config; the unit's RestartPreventExitStatus=


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
                        help=f"config file (default: $CRMSYNC_CONFIG or {DEFAULT_CONFIG_PATH})")

    def logging_args(sp: argparse.ArgumentParser, default_level: str | None) -> None:
        from crmsync.daemon.logging import LOG_FORMATS, LOG_LEVELS

        sp.add_argument("--log-level", choices=LOG_LEVELS, default=None,
                        help=f"log level (default: {default_level or 'daemon.log_level from the config'}); "
                             "debug adds one line per record")
        sp.add_argument("--log-format", choices=LOG_FORMATS, default="json",
                        help="json lines (default, for journald and log shippers) or console (for people)")

    sp = sub.add_parser("run", help="run the daemon in the foreground (systemd's ExecStart)",
                        description="Run the daemon in the foreground until SIGTERM/SIGINT. SIGHUP reloads. "
                                    "Exit status: 0 after a clean stop, 78 (EX_CONFIG) for an invalid config, "
                                    "1 when it cannot start (a port in use, a socket path it may not create).")
    config_arg(sp)
    logging_args(sp, None)

    sp = sub.add_parser(
        "sandbox", help="run simulators of all four systems plus the daemon, syncing demo data",
        description="Start loopback simulators of EveryAction, Mobile Commons, Efficy and APSIS One with "
                    "generated demo data, and the daemon configured against them with every integration "
                    "active. Runs until SIGTERM/SIGINT.")
    sp.add_argument("--contacts", type=int, default=200, metavar="N", help="demo contacts per system (default 200)")
    sp.add_argument("--state-dir", metavar="DIR", help="where the database, config and control socket live "
                    "(default: a fresh temporary folder)")
    sp.add_argument("--port", type=int, default=0, help="webhook/metrics port (default: any free port)")
    logging_args(sp, "info")

    sp = sub.add_parser("check-config", help="validate a config file; exit 1 naming each bad key",
                        description="Validate the config. Prints each problem as 'key.path: reason'; exit 0 "
                                    "when valid, 1 otherwise. Outside systemd, relative *_file secrets are "
                                    "resolved through the unit's LoadCredential= lines, as the service will "
                                    "see them, and the config file is checked to be readable by the service.")
    config_arg(sp)
    sp.add_argument("--unit", metavar="FILE",
                    help="the service unit to resolve credentials with (default: "
                         "/etc/systemd/system/crmsync.service when it exists; not used when "
                         "$CREDENTIALS_DIRECTORY is set, i.e. under systemd)")

    for command in COMMANDS.values():
        if command.cli:
            _control_parser(sub, command, config_arg)

    sp = sub.add_parser("version", help="print crmsync's version",
                        description="Print crmsync's version (and Python's); --json for scripts.")
    sp.add_argument("--json", action="store_true", help="print {\"version\": ..., \"python\": ...}")
    sp = sub.add_parser("completion", help="print a shell completion script (bash or zsh)",
                        description="Print a completion script. bash: 'source <(crmsync completion bash)', or "
                                    "save it as /usr/share/bash-completion/completions/crmsync. zsh: save it as "
                                    "_crmsync in a folder of $fpath.")
    sp.add_argument("shell", choices=("bash", "zsh"), help="the shell")
    sp = sub.add_parser("man", help="print the crmsync(1) manual page (roff), generated from this CLI",
                        description="Print the manual page, generated from the commands and their options. "
                                    "The shipped man/crmsync.1 is this output; 'man ./man/crmsync.1' reads it.")
    return p


def _control_parser(sub: Any, command: Command, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    """A control sub-command built from its entry in the command table: its arguments, types and bounds."""
    sp = sub.add_parser(command.cli_name, help=command.help,
                        description=command.help[0].upper() + command.help[1:] + ". Talks to the daemon's "
                        "control socket.", epilog=_EPILOGS.get(command.name))
    for arg in command.args:
        if not arg.cli:
            continue
        kw: dict[str, Any] = {"help": arg.help + (f" (default {arg.default})" if arg.default not in (None, False)
                                                  else "")}
        dest = ARG_DEST + arg.name  # apart from the parser's own names ("command" is help's argument too)
        if arg.type == "boolean":
            sp.add_argument("--" + arg.name.replace("_", "-"), dest=dest, action="store_true", **kw)
            continue
        kw["type"] = partial(_cli_value, arg.element() if arg.type == "integer_list" else arg)
        kw["metavar"] = arg.metavar or arg.name.upper()
        if arg.type == "integer_list":
            sp.add_argument(dest, nargs="+" if arg.required else "*", **kw)
            continue
        if arg.choices:
            kw["choices"] = arg.choices
            kw["help"] += f": {', '.join(arg.choices)}"
        if arg.positional:
            sp.add_argument(dest, nargs=None if arg.required else "?", **kw)
        else:
            sp.add_argument("--" + arg.name.replace("_", "-"), dest=dest, **kw)
    if command.name in ("status", "full_sync"):
        sp.add_argument("--watch", action="store_true",
                        help="show the full sync's progress (rate, ETA) until it ends; exit with its outcome"
                        if command.name == "full_sync" else
                        "with NAME: attach to a running full sync, show its progress until it ends, and exit "
                        "with its outcome")
    if command.name == "consent_history":
        sp.add_argument("--csv", action="store_true", help="print CSV (with no PERSON: the whole trail, page by "
                        "page, for a compliance request)")
    sp.add_argument("--json", action="store_true", help="print the raw JSON result (stable keys)")
    sp.add_argument("--socket", metavar="PATH", help="control socket (default: $CRMSYNC_SOCKET, then the "
                    "configured daemon.control_socket)")
    config_arg(sp)


_OUTCOME_EPILOG = ("exit status: 0 success, 4 partial (some records rejected), 5 failed, 6 cancelled; "
                   "1 refused, 2 usage, 3 daemon unreachable")
_EPILOGS = {
    "run_flow": "With --wait, " + _OUTCOME_EPILOG + ". Without --wait: 0 once started.",
    "full_sync": "With --watch, " + _OUTCOME_EPILOG + ". Without --watch: 0 once started.",
    "status": "With --watch NAME and a running full sync, " + _OUTCOME_EPILOG + ".",
}


def _cli_value(arg: Arg, text: str) -> Any:
    """argparse's type check for a control argument: the daemon's own check, so both refuse alike."""
    try:
        return arg.check(arg.name, text)
    except ArgumentError:
        expected = ("an " if arg.type == "integer" else "") + arg.describe_type()
        raise argparse.ArgumentTypeError(f"must be {expected}, not {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "sandbox":
            from crmsync.daemon.sandbox import run_sandbox

            return _start(lambda: run_sandbox(contacts=args.contacts, state_dir=args.state_dir, port=args.port,
                                              log_level=args.log_level or "info", log_format=args.log_format))
        if args.command == "check-config":
            return cmd_check_config(args)
        if args.command == "version":
            return cmd_version(args)
        if args.command in ("completion", "man"):
            from crmsync.daemon import cli_docs

            text = cli_docs.completion(build_parser(), args.shell) if args.command == "completion" else (
                cli_docs.manpage(build_parser()))
            sys.stdout.write(text)
            return EXIT_OK
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
    from crmsync.daemon.secrets import CREDENTIAL_LOOKUPS, CredentialLookups
    from crmsync.daemon.systemd import DEFAULT_UNIT, UnitFacts, read_unit

    path = _config_path(args)
    unit: UnitFacts | None = None
    unit_path = Path(args.unit) if args.unit else (DEFAULT_UNIT if DEFAULT_UNIT.exists() else None)
    if unit_path is not None and not os.environ.get("CREDENTIALS_DIRECTORY"):
        try:
            unit = read_unit(unit_path)
        except OSError as exc:
            print(f"crmsync: cannot read the unit {unit_path}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_REFUSED
    lookups = CredentialLookups(unit=str(unit.path) if unit else None,
                                credentials=dict(unit.credentials) if unit else {},
                                encrypted=unit.encrypted if unit else frozenset())
    token = CREDENTIAL_LOOKUPS.set(lookups)
    try:
        config = _load_or_report(path, "invalid")
    finally:
        CREDENTIAL_LOOKUPS.reset(token)
    if config is None:
        return EXIT_REFUSED
    print(f"{path}: ok ({len(config.integrations)} integrations: "
          f"{', '.join(f'{n} [{c.kind}]' for n, c in config.integrations.items()) or 'none'})")
    if lookups.seen:
        how = (f"as the unit {unit.path} will provide them" if unit else
               "$CREDENTIALS_DIRECTORY" if os.environ.get("CREDENTIALS_DIRECTORY") else "as files")
        print(f"secret files, resolved {how}:")
        for name, where, _ in lookups.seen:
            print(f"  {name}: {where}")
    if unit is not None:
        problem = _service_cannot_read(Path(path), unit)
        if problem:
            print(f"{path}: {problem}", file=sys.stderr)
            return EXIT_REFUSED
        print(f"{path}: readable by the service ({_reader_of(unit)})")
    return EXIT_OK


def _reader_of(unit: Any) -> str:
    if not unit.dynamic_user:
        return "the unit's user"
    groups = ", ".join(unit.supplementary_groups) or "none"
    return f"DynamicUser=yes, SupplementaryGroups={groups}"


def _service_cannot_read(path: Path, unit: Any) -> str | None:
    """With DynamicUser=yes the service is neither the owner nor root: it reads the config (and traverses
    its folders) through "other" bits or a group listed in SupplementaryGroups=."""
    if not unit.dynamic_user:
        return None
    import grp
    import stat

    gids = set()
    for name in unit.supplementary_groups:
        try:
            gids.add(grp.getgrnam(name).gr_gid)
        except KeyError:
            return (f"the unit's SupplementaryGroups={name} does not exist here; create it "
                    "(systemd-sysusers crmsync.conf)")
    resolved = path.resolve()
    for item, need in [(resolved, stat.S_IROTH), *((d, stat.S_IXOTH) for d in resolved.parents)]:
        st = item.stat()
        by_group = need << 3  # the same permission, for the group
        if st.st_mode & need or (st.st_mode & by_group and st.st_gid in gids):
            continue
        what = "read" if item == resolved else "enter"
        return (f"the service (DynamicUser=yes) cannot {what} {item} (mode {stat.S_IMODE(st.st_mode):04o}, "
                f"group {_group_name(st.st_gid)}): make it group crmsync, mode 0640 (0750 for folders), as "
                "tmpfiles.d/crmsync.conf does, or readable by others")
    return None


def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def cmd_run(args: argparse.Namespace) -> int:
    from crmsync.daemon.app import Daemon
    from crmsync.daemon.logging import configure_logging

    path = _config_path(args)
    config = _load_or_report(path, "invalid config, not starting")
    if config is None:
        return EXIT_CONFIG
    configure_logging(args.log_level or config.daemon.log_level, fmt=args.log_format)
    daemon = Daemon(config, config_path=path, settle_gc=True)
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


def cmd_version(args: argparse.Namespace) -> int:
    python = ".".join(map(str, sys.version_info[:3]))
    if args.json:
        print(json.dumps({"version": __version__, "python": python}))
    else:
        print(f"crmsync {__version__} (Python {python})")
    return EXIT_OK


def _call_args(command: Command, args: argparse.Namespace) -> dict[str, Any]:
    """The socket request's args from the parsed command line (the command table names both)."""
    out: dict[str, Any] = {}
    for arg in command.args:
        value = getattr(args, ARG_DEST + arg.name, None)
        if value is None or value == [] or (arg.type == "boolean" and value is False):
            continue  # omitted: the daemon applies the default
        out[arg.name] = value
    return out


def cmd_control(args: argparse.Namespace) -> int:
    from crmsync.daemon.control import ControlClient

    command = COMMANDS[args.command.replace("-", "_")]
    call_args = _call_args(command, args)
    try:
        validate(command, call_args)  # the daemon's own check, before anything is sent
    except ArgumentError as exc:
        print(f"crmsync {command.cli_name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    watch = bool(getattr(args, "watch", False))
    path = socket_path(args)
    if command.name == "consent_history" and args.csv:
        return _consent_csv(path, call_args, whole="person" not in call_args)
    outcome: dict[str, Any] = {}

    async def go() -> dict[str, Any]:
        long = call_args.get("wait") or call_args.get("dry_run")
        async with ControlClient(path, timeout=24 * 3600 if long else 60) as client:
            reply = await client.call(command.name, **call_args)
            name = call_args.get("integration")
            if watch and name and reply.get("ok") and not call_args.get("dry_run"):
                if not args.json:  # what was started (or the status attached to) first, then the progress
                    print(render.render(command.name, reply["result"]), flush=True)
                started = reply["result"].get("run_id") if command.name == "full_sync" else None
                run = await _watch(client, name, args.json, started)
                if run is not None:
                    outcome["run"] = run
                elif not args.json:
                    print(f"(no full sync is running for {name}: nothing to watch)", file=sys.stderr)
                    outcome["shown"] = True
            return reply

    try:
        reply = trio.run(go)
    except (OSError, ConnectionError) as exc:
        if command.name == "help":
            return _local_help(call_args.get("command"), args.json, f"{path}: {exc}")
        print(f"crmsync: cannot reach the daemon at {path}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130
    try:
        if outcome.get("shown"):
            return EXIT_OK
        return _print_reply(command.name, reply, args.json, outcome.get("run"))
    except BrokenPipeError:  # `crmsync status | head`: the reader left; not an error of ours
        sys.stderr.close()
        return EXIT_OK


def _consent_csv(path: str, call_args: dict[str, Any], *, whole: bool) -> int:
    """The consent history as CSV on stdout; the whole trail is read page by page."""
    import csv

    from crmsync.daemon.consent_history import CSV_COLUMNS
    from crmsync.daemon.control import ControlClient

    out = csv.DictWriter(sys.stdout, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")

    async def go() -> dict[str, Any] | None:
        async with ControlClient(path) as client:
            offset, page = 0, 10_000 if whole else call_args.get("limit", 1000)
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
        return _print_reply("consent_history", failed, False)
    return EXIT_OK


def _local_help(only: str | None, as_json: bool, why: str) -> int:
    """``crmsync help`` without a daemon: this crmsync's own command table (the same the daemon serves)."""
    from crmsync.daemon.commands import help_result, lookup

    command = lookup(only) if only else None
    if only and command is None:
        print(f"crmsync: unknown_command: no command {only!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"(daemon not reachable ({why}): showing this crmsync's own commands)", file=sys.stderr)
    result = help_result(command)
    print(json.dumps(result, indent=2) if as_json else render.render_help(result))
    return EXIT_OK


async def _watch(client: Any, name: str, as_json: bool, run_id: int | None = None) -> dict[str, Any] | None:
    """Follow the full sync ``run_id`` (default: the integration's running one) until it ends; returns its run
    (None if none was running).

    On a terminal: a live progress bar (rich) with rate and ETA. Otherwise (a log, a script): a progress line
    each time it moved, at most every few seconds, so a cron mail stays short."""
    reply = await client.call("status", integration=name)
    fs = (reply.get("result") or {}).get("full_sync") or {}
    if run_id is None:
        if fs.get("state") != "running":
            return None
        run_id = fs["run_id"]
    live = sys.stderr.isatty() and not as_json
    with render.ProgressDisplay(name, live=live, out=sys.stderr) as display:
        while fs.get("state") == "running" and fs.get("run_id") == run_id:
            display.update(fs.get("done", 0), fs.get("total"), fs.get("rate_per_s"))
            await trio.sleep(WATCH_POLL_S)
            reply = await client.call("status", integration=name)
            fs = (reply.get("result") or {}).get("full_sync") or {}
        display.update(fs.get("done", 0), fs.get("total"), None, final=True)
    done = await client.call("report", integration=name, run_id=run_id, limit=1)
    run: dict[str, Any] = (done.get("result") or {}).get("run") or {"id": run_id, "status": "failed",
                                                                      "flow": "full_sync"}
    run["timezone"] = (reply.get("result") or {}).get("timezone")
    return run


def _print_reply(cmd: str, reply: dict[str, Any], as_json: bool, watched: dict[str, Any] | None = None) -> int:
    if not reply.get("ok"):
        err = reply.get("error") or {}
        if as_json:
            print(json.dumps(reply, indent=2, default=str))
        else:
            print(f"crmsync: {err.get('code', 'error')}: {err.get('message', '')}", file=sys.stderr)
            for problem in err.get("problems", []):
                print(f"  {problem}", file=sys.stderr)
        return EXIT_REFUSED
    result = reply.get("result")
    assert isinstance(result, dict)
    if watched is not None:  # --watch: the outcome of the watched full sync is the answer
        if as_json:
            print(json.dumps({"integration": result.get("integration") or result.get("name"), "run": watched},
                             indent=2, default=str))
        else:
            print(render.render_run_end(result.get("integration") or result["name"], watched,
                                        render.zone(watched.get("timezone"))))
        return RUN_EXIT.get(str(watched.get("status")), EXIT_FAILED)
    print(json.dumps(result, indent=2, default=str) if as_json else render.render(cmd, result))
    if cmd == "run_flow" and result.get("run"):
        return RUN_EXIT.get(str(result["run"].get("status")), EXIT_FAILED)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
