"""The control commands as data: each command's arguments (name, type, required, bounds, help) in one table.

One table drives three things, so they cannot drift apart:

* the control socket's validation (:func:`validate`): unknown arguments, wrong types and out-of-range values
  are refused with ``bad_request`` and a message naming the argument and what it expects;
* the ``help`` command (over the socket and ``crmsync help``), which lists each command with its arguments;
* the CLI's control sub-commands (``crmsync runs NAME --limit 5``), built from the same entries.

Adding a command is one :class:`Command` entry in :data:`COMMANDS` plus the method it calls: a
``Supervisor`` method of the same name (``full_sync`` -> ``Supervisor.full_sync``) taking the arguments as
keywords (``param`` names them on the Python side). No trio, no I/O here: the CLI imports it cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

ArgType = Literal["string", "integer", "boolean", "integer_list"]
MAX_LIST = 10_000  # ids in one request (requeue, drop)

# SQLite integers are signed 64-bit: a larger run id can name no run, and would overflow the query
MAX_ID = 2**63 - 1


class ArgumentError(ValueError):
    """A request's arguments do not match the command's schema (answered ``bad_request``)."""


@dataclass(frozen=True)
class Arg:
    name: str
    type: ArgType
    help: str
    required: bool = False
    default: Any = None
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    param: str = ""  # the keyword the handler takes (default: ``name``)
    # the CLI: a positional argument (NAME, FLOW, RUN_ID) rather than an option (--limit); metavar for both
    positional: bool = False
    metavar: str = ""
    cli: bool = True  # exposed as a CLI argument

    @property
    def keyword(self) -> str:
        return self.param or self.name

    def element(self) -> Arg:
        """One item of an integer_list, checked as an integer with this argument's bounds."""
        return Arg(self.name, "integer", self.help, minimum=self.minimum, maximum=self.maximum)

    def describe_type(self) -> str:
        if self.type == "integer_list":
            return f"list of {self.element().describe_type()}"
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.type == "integer":
            if self.minimum is not None and self.maximum is not None:
                return f"integer {self.minimum}..{self.maximum}"
            if self.minimum is not None:
                return f"integer >= {self.minimum}"
        return self.type

    def check(self, command: str, value: Any) -> Any:
        """The value, converted and checked; raises :class:`ArgumentError` naming this argument."""
        where = f"args.{self.name} of {command}"
        if self.type == "integer_list":
            if not isinstance(value, list) or not 0 < len(value) <= MAX_LIST:
                raise ArgumentError(f"{where} must be a list of 1..{MAX_LIST} integers, not {_shown(value)}")
            return [self.element().check(command, v) for v in value]
        if self.type == "boolean":
            if not isinstance(value, bool):
                raise ArgumentError(f"{where} must be true or false, not {_shown(value)}")
            return value
        if self.type == "integer":
            # bool is an int subclass in Python, but `true` is not a number in JSON
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) <= 30:
                    value = int(value)  # "5" from a shell script: accepted, the same number
                else:
                    raise ArgumentError(f"{where} must be an integer ({self.describe_type()}), not {_shown(value)}")
            too_low = self.minimum is not None and value < self.minimum
            too_high = self.maximum is not None and value > self.maximum
            if too_low or too_high:
                raise ArgumentError(f"{where} must be an {self.describe_type()}, not {_shown(value)}")
            return value
        if not isinstance(value, str):
            raise ArgumentError(f"{where} must be a string, not {_shown(value)}")
        if self.choices and value not in self.choices:
            raise ArgumentError(f"{where} must be one of {', '.join(self.choices)}, not {_shown(value)}")
        if not value:
            raise ArgumentError(f"{where} must not be empty")
        return value

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "required": self.required, "help": self.help}
        if self.default is not None:
            out["default"] = self.default
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.choices:
            out["choices"] = list(self.choices)
        if self.aliases:
            out["aliases"] = list(self.aliases)
        return out


@dataclass(frozen=True)
class Command:
    name: str  # the socket's name (snake_case); the CLI's is the same with dashes
    help: str
    args: tuple[Arg, ...] = ()
    mutating: bool = False  # logged with the caller's uid and pid
    cli: bool = True  # a ``crmsync`` sub-command of the same name (dashes for underscores)
    exactly_one_of: tuple[str, ...] = ()  # arguments of which exactly one must be given (requeue: ids or all)

    @property
    def cli_name(self) -> str:
        return self.name.replace("_", "-")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "help": self.help, "mutating": self.mutating,
                "args": [a.as_dict() for a in self.args]}


def _shown(value: Any) -> str:
    """A bad value as the caller wrote it in JSON, kept short."""
    if isinstance(value, dict):
        text = "an object"
    elif isinstance(value, list):
        text = "an array"
    elif value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = repr(value)
    else:
        text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- the arguments shared by several commands ----------------------------------------------------------------

INTEGRATION = Arg("integration", "string", "integration name, as in [integrations.NAME]", required=True,
                  aliases=("name",), param="name", positional=True, metavar="NAME")
INTEGRATION_OPTIONAL = Arg("integration", "string", "integration name (omit for the daemon and a line per "
                           "integration)", aliases=("name",), param="name", positional=True, metavar="NAME")
OUTCOMES = ("created", "updated", "unchanged", "rejected", "skipped")
DRY_RUN = Arg("dry_run", "boolean", "read both systems as a real run would and answer its report, without any "
              "write call, link, cursor or fingerprint change (answers when the run ends)", default=False)
DEAD_LETTER_IDS = Arg("ids", "integer_list", "dead-letter ids (from dead-letters)", minimum=1, maximum=MAX_ID,
                      positional=True, metavar="ID")

COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("hello", "the protocol version, the daemon's version and the command names", cli=False),
    Command("help", "each command with its arguments and their types", args=(
        Arg("command", "string", "only this command", positional=True, metavar="COMMAND"),)),
    Command("status", "the daemon and a line per integration; with a name, that integration in full, "
            "including why it or a run failed and what the next full sync will do", args=(INTEGRATION_OPTIONAL,)),
    Command("activate", "activate an integration; its first scheduled run follows its schedule",
            args=(INTEGRATION,), mutating=True),
    Command("deactivate", "deactivate an integration: stop all its flows, keep its state",
            args=(INTEGRATION,), mutating=True),
    Command("full_sync", "start a full sync: resumes a cancelled one from its checkpoint when the mappings are "
            "unchanged, else starts over", args=(
                INTEGRATION,
                Arg("from_start", "boolean", "start over even when a cancelled full sync could resume",
                    default=False),
                DRY_RUN), mutating=True),
    Command("cancel", "cancel the running full sync and flows of an integration, or only FLOW", args=(
        INTEGRATION,
        Arg("flow", "string", "only this flow (e.g. full_sync, ea_to_mc)", positional=True, metavar="FLOW")),
        mutating=True),
    Command("run_flow", "run one flow now", args=(
        INTEGRATION,
        Arg("flow", "string", "flow name, e.g. ea_to_mc", required=True, positional=True, metavar="FLOW"),
        Arg("wait", "boolean", "answer when the run ends, with its result", default=False),
        DRY_RUN), mutating=True),
    Command("runs", "recent runs of an integration, newest first", args=(
        INTEGRATION,
        Arg("limit", "integer", "runs to list", default=20, minimum=1, maximum=1000),
        Arg("flow", "string", "only this flow")), ),
    Command("report", "a run's synchronization report (default: the latest run, of FLOW with --flow)", args=(
        INTEGRATION,
        Arg("run_id", "integer", "a run id from runs (default: the latest run)", minimum=1, maximum=MAX_ID,
            aliases=("run",), positional=True, metavar="RUN_ID"),
        Arg("flow", "string", "the latest run of this flow"),
        Arg("outcome", "string", "only rows with this outcome", choices=OUTCOMES),
        Arg("record", "string", "only rows of this record id (in either system)"),
        Arg("limit", "integer", "rows to show", default=1000, minimum=1, maximum=100_000),
        Arg("offset", "integer", "rows to skip first", default=0, minimum=0, maximum=MAX_ID))),
    Command("reload", "re-read the config file; only changed integrations restart", mutating=True),
    Command("pause", "pause an integration: hold its timers, real-time queue and full sync; webhooks are still "
            "accepted and kept (survives restarts)", args=(INTEGRATION,), mutating=True),
    Command("resume", "resume a paused integration: the queue drains in arrival order, a missed timer slot fires "
            "once", args=(INTEGRATION,), mutating=True),
    Command("dead_letters", "the real-time events set aside after failing too often (error, first and last "
            "attempt)", args=(
                INTEGRATION,
                Arg("limit", "integer", "rows to show", default=1000, minimum=1, maximum=100_000),
                Arg("offset", "integer", "rows to skip first", default=0, minimum=0, maximum=MAX_ID))),
    Command("requeue", "put dead letters back at the end of the real-time queue (ids, or all)", args=(
        INTEGRATION, DEAD_LETTER_IDS, Arg("all", "boolean", "every dead letter", default=False)), mutating=True,
        exactly_one_of=("ids", "all")),
    Command("drop", "remove dead letters for good (logged with the caller's uid)", args=(
        INTEGRATION, Arg("ids", "integer_list", "dead-letter ids (from dead-letters)", required=True, minimum=1,
                         maximum=MAX_ID, positional=True, metavar="ID")), mutating=True),
    Command("explain", "why a record is (not) synced: every rule with the values it looked at and its verdict, "
            "what a sync would write, its last report rows (writes nothing)", args=(
                INTEGRATION,
                Arg("record", "string", "either system's id (van:ID / mc:ID to disambiguate), a phone number or "
                    "an email address", required=True, positional=True, metavar="RECORD"))),
    Command("consent_history", "a person's consent history, oldest first (every change crmsync made or saw); "
            "without PERSON, the whole trail", args=(
                INTEGRATION,
                Arg("person", "string", "the person's id in either system, a phone number or an email",
                    positional=True, metavar="PERSON"),
                Arg("limit", "integer", "entries to show", default=1000, minimum=1, maximum=100_000),
                Arg("offset", "integer", "entries to skip first", default=0, minimum=0, maximum=MAX_ID))),
)}

# Every error code the control socket answers, with its meaning: the documented, stable list.
ERROR_CODES: dict[str, str] = {
    "bad_json": "the line is not JSON",
    "bad_request": "not a request object, or an argument missing, unknown, of the wrong type or out of range",
    "unknown_command": "no such command (see help)",
    "unknown_integration": "no integration of that name is configured",
    "unknown_flow": "the integration has no flow of that name",
    "unknown_run": "the integration has no run with that id",
    "no_runs": "the integration (or the flow asked for) has no runs yet",
    "not_active": "the integration is not active; activate it first",
    "not_running": "nothing of that kind is running, so nothing was cancelled",
    "already_running": "that flow or full sync is already running",
    "flow_error": "the flow cannot start now (the integration is stopping)",
    "unsupported": "the integration's kind does not do that (e.g. no full sync)",
    "unknown_kind": "the integration's kind is not installed (a plugin missing from daemon.plugins)",
    "invalid_config": "reload: the new config is invalid; the running one is kept (problems lists each key)",
    "line_too_long": "the request line is over 64 KiB; the connection closes",
    "idle_timeout": "no request within the idle timeout; the connection closes",
    "too_many_clients": "daemon.control_max_clients clients are connected already; the connection closes",
    "paused": "the integration is paused; resume it first",
    "unknown_dead_letter": "none of the ids given is a dead letter of the integration",
    "not_found": "explain: no record in either system matches",
    "internal_error": "a bug: the command failed unexpectedly; the daemon carries on (see its log)",
}


def validate(command: Command, args: Mapping[str, Any]) -> dict[str, Any]:
    """The handler's keyword arguments from a request's ``args``: defaults filled in, each value checked."""
    by_name: dict[str, Arg] = {}
    for arg in command.args:
        by_name[arg.name] = arg
        for alias in arg.aliases:
            by_name[alias] = arg
    out: dict[str, Any] = {}
    for key, value in args.items():
        found = by_name.get(key)
        if found is None:
            takes = ", ".join(a.name for a in command.args) or "no arguments"
            raise ArgumentError(f"unknown argument {key!r} for {command.name}; it takes: {takes}")
        if found.keyword in out:
            raise ArgumentError(f"args.{found.name} of {command.name} given twice (as {found.name} and an alias)")
        if value is None and not found.required:
            continue  # null: as if omitted
        out[found.keyword] = found.check(command.name, value)
    if command.exactly_one_of:
        given = [name for name in command.exactly_one_of if out.get(name) not in (None, False, [])]
        if len(given) != 1:
            raise ArgumentError(f"{command.name} takes exactly one of {' or '.join(command.exactly_one_of)}")
    for arg in command.args:
        if arg.keyword not in out:
            if arg.required:
                raise ArgumentError(f"args.{arg.name} ({arg.describe_type()}) is required by {command.name}: "
                                    f"{arg.help}")
            if arg.default is not None:
                out[arg.keyword] = arg.default
    return out


def lookup(name: str) -> Command | None:
    """A command by its socket name or its CLI name (``run-flow``)."""
    return COMMANDS.get(name.replace("-", "_"))


def help_result(only: Command | None = None) -> dict[str, Any]:
    """The ``help`` command's answer: each command with its arguments, and the error codes."""
    listed = [only] if only is not None else list(COMMANDS.values())
    return {"commands": [c.as_dict() for c in listed], "error_codes": ERROR_CODES}
