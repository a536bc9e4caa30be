"""The TOML configuration: loading, validation and precise error reporting.

Each vendor UI form of the seeds is a section here. Integrations live under ``[integrations.NAME]`` with a
``kind``; each kind contributes its own pydantic model (``IntegrationKind.config_model``). Every problem is
reported with the dotted path of the key and the reason, all at once, so ``crmsync check-config`` can list
them (exit 1) and ``reload`` can refuse a bad file while the running config stays.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from datetime import time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from crmsync.daemon.schedule import Daily, Interval, Schedule, parse_clock_time, parse_duration
from crmsync.daemon.secrets import SecretsModel, StrictModel, read_regular_file

DEFAULT_CONFIG_PATH = "/etc/crmsync/config.toml"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def _duration(v: Any) -> timedelta:
    if isinstance(v, timedelta):
        return v
    if not isinstance(v, str):
        raise ValueError("must be a duration string like 30s, 5m or 48h")
    try:
        return parse_duration(v)
    except OverflowError:  # "99999999999d": beyond what a timedelta holds
        raise ValueError(f"{v[:40]!r} is too long a duration") from None


def _clock_time(v: Any) -> time:
    if isinstance(v, time):
        return v
    if not isinstance(v, str):
        raise ValueError("must be a time of day string like 02:00")
    return parse_clock_time(v)


def _api_url(v: Any) -> str:
    if not isinstance(v, str) or not v.startswith(("http://", "https://")) or len(v) < 10 or " " in v:
        raise ValueError(f"{v!r} is not an http(s) URL")
    return v.rstrip("/")


def _socket_mode(v: Any) -> int:
    """A Unix permission mode: an integer (TOML ``0o660``) or a string of octal digits ("0660"), read as octal
    explicitly (never as the decimal 660), and never wider than 0660: the control socket can stop the daemon."""
    if isinstance(v, str) and re.fullmatch(r"(0o|0)?[0-7]{1,4}", v.strip()):
        v = int(v.strip().removeprefix("0o"), 8)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError("must be an octal mode like 0o660 (or the string \"0660\")")
    if v < 0 or v & ~0o660:
        raise ValueError(f"{v:#o} is wider than 0o660; the socket grants control of the daemon" if v >= 0 else
                         f"{v} is not a permission mode")
    return v


Duration = Annotated[timedelta, BeforeValidator(_duration)]
SocketMode = Annotated[int, BeforeValidator(_socket_mode)]
ClockTime = Annotated[time, BeforeValidator(_clock_time)]
# an API's base URL: http(s), no trailing slash
ApiUrl = Annotated[str, BeforeValidator(_api_url)]


def _check_timezone(v: str | None) -> str | None:
    if v is None:
        return v
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{v!r} is not a known IANA time zone (like UTC or America/New_York)") from None
    return v


class ScheduleConfig(StrictModel):
    """``daily_at = "02:00"``, or ``every = "5m"`` with an optional ``between = ["08:00", "21:00"]``."""

    daily_at: ClockTime | None = None
    every: Duration | None = None
    between: tuple[ClockTime, ClockTime] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ScheduleConfig:
        if (self.daily_at is None) == (self.every is None):
            raise ValueError("set exactly one of daily_at or every")
        if self.daily_at is not None and self.between is not None:
            raise ValueError("between goes with every, not with daily_at")
        if self.every is not None and self.every < timedelta(seconds=10):
            raise ValueError("every must be at least 10s")
        return self

    def to_schedule(self) -> Schedule:
        if self.daily_at is not None:
            return Daily(self.daily_at)
        assert self.every is not None
        start, end = self.between or (time(0, 0), time(0, 0))
        return Interval(self.every, start, end)


class WebhookAuthConfig(SecretsModel):
    """How a webhook sender proves itself: an HMAC-SHA256 of the raw body, or a shared token."""

    secrets = {"secret": True, "previous_secret": False}

    mode: Literal["hmac", "token"] = "hmac"
    header: str = "X-Crmsync-Signature"
    # For hmac: the header value may carry a prefix such as "sha256=" (GitHub style); it is stripped.
    prefix: str = ""
    encoding: Literal["hex", "base64"] = "hex"
    secret: Any = None
    previous_secret: Any = None  # accepted too, during a rotation

    @field_validator("header")
    @classmethod
    def _header_name(cls, v: str) -> str:
        # an empty or malformed name can never be sent, so every delivery would be refused 401
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}", v):
            raise ValueError(f"{v[:40]!r} is not an HTTP header name (letters, digits and - like X-Signature)")
        return v


class IntegrationConfig(SecretsModel):
    """Fields every integration has; kinds subclass this with their own sections."""

    kind: str
    notes: str = ""
    timezone: str | None = None
    webhook: WebhookAuthConfig | None = None
    schedules: dict[str, ScheduleConfig] = Field(default_factory=dict)

    _tz = field_validator("timezone")(_check_timezone)


class DaemonConfig(StrictModel):
    state_dir: Path = Path("/var/lib/crmsync")
    database: Path | None = None
    timezone: str = "UTC"
    control_socket: Path = Path("/run/crmsync-control.sock")  # matches systemd/crmsync.socket
    control_socket_mode: SocketMode = 0o660
    control_idle_timeout: Duration = timedelta(minutes=5)
    # a client whose reply cannot be sent within this (it pipelines and never reads) is disconnected
    control_send_timeout: Duration = timedelta(seconds=10)
    control_max_clients: int = Field(default=32, ge=1, le=10_000)
    shutdown_timeout: Duration = timedelta(seconds=20)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    report_retention_days: int = Field(default=30, ge=1)
    report_retention_runs: int = Field(default=200, ge=1)
    consent_history_retention_days: int = Field(default=0, ge=0)  # 0: keep (an audit trail)
    plugins: list[str] = Field(default_factory=list)

    _tz = field_validator("timezone")(_check_timezone)

    @property
    def database_path(self) -> Path:
        return self.database or self.state_dir / "crmsync.db"


class HttpConfig(StrictModel):
    webhook_listen: str = "127.0.0.1:8787"
    metrics_listen: str | None = None  # None: /metrics and /healthz share the webhook listener
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    # the whole webhook body must arrive within this, however slowly it is trickled (else 408)
    request_timeout: Duration = timedelta(seconds=30)
    # connections served at once per listener; more wait in the kernel's backlog
    max_connections: int = Field(default=100, ge=1, le=100_000)
    graceful_timeout: Duration = timedelta(seconds=5)
    # webhook group commit: requests arriving within this many milliseconds share one transaction (and fsync)
    webhook_commit_window_ms: float = Field(default=2.0, ge=0, le=1000)
    webhook_commit_max_requests: int = Field(default=256, ge=1, le=10_000)
    # the same signed body accepted again within this window is a replay: answered 200, nothing stored. Short on
    # purpose: a timestamp-less body (the generic connector's) is byte-identical for a genuine later change too
    webhook_replay_window: Duration = timedelta(minutes=2)

    @field_validator("webhook_listen", "metrics_listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if v.startswith("unix:") or v.startswith("fd://"):
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{v!r} is not HOST:PORT (or unix:/path, or fd://N)")
        return v


class Config(StrictModel):
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    integrations: dict[str, IntegrationConfig] = Field(default_factory=dict)
    source: str | None = None  # the file it came from, for status

    def timezone_of(self, name: str) -> ZoneInfo:
        return ZoneInfo(self.integrations[name].timezone or self.daemon.timezone)


class ConfigError(Exception):
    """A config that cannot be used. ``problems`` lists ``(dotted.key.path, reason)``."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None):
        self.problems = problems
        self.source = source
        head = f"invalid config {source}" if source else "invalid config"
        super().__init__(head + ": " + "; ".join(f"{k}: {r}" for k, r in problems))

    def lines(self) -> list[str]:
        return [f"{k}: {r}" if k else r for k, r in self.problems]


def default_config_path() -> str:
    return os.environ.get("CRMSYNC_CONFIG") or DEFAULT_CONFIG_PATH


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = read_regular_file(path).decode("utf-8")
    except OSError as exc:
        raise ConfigError([("", f"cannot read {str(path)!r}: {exc.strerror or exc}")], str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([("", f"{str(path)!r} is not UTF-8 text (byte {exc.start})")], str(path)) from None
    return parse_config(text, source=str(path))


_TABLE_HEADER = re.compile(r"^\s*\[\s*integrations\s*\.\s*(\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+)\s*\]\s*(#.*)?$")


def _duplicate_integrations(text: str) -> list[tuple[str, str]]:
    seen: dict[str, int] = {}
    problems = []
    for lineno, line in enumerate(text.splitlines(), 1):
        m = _TABLE_HEADER.match(line)
        if not m:
            continue
        name = m.group(1).strip("\"'")
        if name in seen:
            problems.append(
                (f"integrations.{name}", f"duplicate integration name (line {lineno}; first at line {seen[name]})")
            )
        else:
            seen[name] = lineno
    return problems


def parse_config(text: str, source: str | None = None) -> Config:
    from crmsync.daemon.integrations import registry

    duplicates = _duplicate_integrations(text)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([*duplicates, ("", f"TOML syntax: {exc}")] if duplicates else
                          [("", f"TOML syntax: {exc}")], source) from None
    except RecursionError:  # tomllib recurses per nesting level of arrays and inline tables
        raise ConfigError([("", "TOML syntax: arrays or inline tables nested too deeply")], source) from None
    problems: list[tuple[str, str]] = []

    daemon_raw = raw.get("daemon", {})
    if isinstance(daemon_raw, dict):
        for module in daemon_raw.get("plugins", []) or []:
            if isinstance(module, str):
                try:
                    registry.load_plugin(module)
                except Exception as exc:  # an import error of any kind: report, don't crash
                    problems.append(("daemon.plugins", f"cannot import {module!r}: {exc}"))

    top: dict[str, Any] = {k: v for k, v in raw.items() if k != "integrations"}
    try:
        base = Config.model_validate({**top, "source": source})
    except ValidationError as exc:
        problems.extend(_problems(exc, ()))
        base = None

    integrations: dict[str, IntegrationConfig] = {}
    raw_integrations = raw.get("integrations", {})
    if not isinstance(raw_integrations, dict):
        problems.append(("integrations", "must be a table of [integrations.NAME] sections"))
        raw_integrations = {}
    for name, section in raw_integrations.items():
        path = ("integrations", name)
        if not NAME_RE.match(name):
            problems.append((f"integrations.{name}", "name must be lower-case letters, digits, '-' or '_'"))
            continue
        if not isinstance(section, dict):
            problems.append((f"integrations.{name}", "must be a table"))
            continue
        kind_name = section.get("kind")
        if kind_name is None:
            problems.append((f"integrations.{name}.kind", f"required; one of {', '.join(registry.kind_names())}"))
            continue
        kind = registry.get_kind(kind_name)
        if kind is None:
            problems.append(
                (f"integrations.{name}.kind", f"unknown kind {kind_name!r}; one of {', '.join(registry.kind_names())}")
            )
            continue
        try:
            integrations[name] = kind.config_model.model_validate(section)
        except ValidationError as exc:
            problems.extend(_problems(exc, path))
        schedules = section.get("schedules")
        for flow in schedules if isinstance(schedules, dict) else ():
            if flow not in kind.scheduled_flows:
                problems.append((
                    f"integrations.{name}.schedules.{flow}",
                    f"{kind_name} has no scheduled flow {flow!r}; it has {', '.join(kind.scheduled_flows) or 'none'}",
                ))
    problems.extend(duplicates)
    if problems or base is None:
        raise ConfigError(problems, source)
    return base.model_copy(update={"integrations": integrations})


def _problems(exc: ValidationError, prefix: tuple[str, ...]) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        loc = [*prefix, *(str(p) for p in err["loc"])]
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        elif err["type"] == "secret":
            # secret problems carry their own key names; attach them to the key path
            for part in msg.split(" | "):
                key, _, reason = part.partition(": ")
                out.append((".".join([*loc, key]), reason))
            continue
        out.append((".".join(loc), msg))
    return out


def config_from_mapping(data: Mapping[str, Any], source: str | None = None) -> Config:
    """Build a Config from an in-memory mapping (tests, sandbox) through the same validation as files."""
    import io

    return parse_config(_dump_toml(data, io.StringIO()), source)


def _dump_toml(data: Mapping[str, Any], out: Any, prefix: str = "") -> str:
    """A small TOML writer for plain config mappings (str, int, float, bool, lists of those, tables)."""
    scalars = {k: v for k, v in data.items() if not isinstance(v, Mapping)}
    tables = {k: v for k, v in data.items() if isinstance(v, Mapping)}
    if prefix and scalars:
        out.write(f"[{prefix}]\n")
    for k, v in scalars.items():
        out.write(f"{_key(k)} = {_value(v)}\n")
    if scalars:
        out.write("\n")
    for k, v in tables.items():
        _dump_toml(v, out, f"{prefix}.{_key(k)}" if prefix else _key(k))
    return out.getvalue() if hasattr(out, "getvalue") else ""


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else '"' + k.replace('"', '\\"') + '"'


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, Path):
        v = str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


dump_toml = _dump_toml
