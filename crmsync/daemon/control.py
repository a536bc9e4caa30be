"""The control socket: NDJSON over a Unix stream socket (mode 0660), or one handed over by systemd.

Request ``{"id": 1, "cmd": "status", "args": {}}``; reply ``{"id": 1, "ok": true, "result": {...}}`` or
``{"id": 1, "ok": false, "error": {"code": "...", "message": "..."}}``. Requests are answered in order and may
be pipelined. The commands and their arguments are the table in :mod:`crmsync.daemon.commands`, which
validates every request (unknown or mistyped arguments: ``bad_request``) and answers ``help``.
A line over 64 KiB, bad JSON (nested deeper than 32 levels included) or an unknown command gets
an error reply, never a crash; an oversized line also closes the connection (the rest of it cannot be framed).
Connections idle for longer than the configured timeout are closed, and so is one whose reply cannot be sent
within ``daemon.control_send_timeout`` (a client that pipelines and never reads). At most
``daemon.control_max_clients`` are connected at once; another is answered ``too_many_clients`` and closed.
Each state-changing command is logged with the caller's uid and pid.

``trio`` has no Unix listener helper, so :func:`open_unix_listener` binds one (under a umask, so the socket
never exists with wider permissions than asked).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
import trio

from crmsync import __version__, jsonlimits
from crmsync.daemon import consent_history, dead_letters, explain
from crmsync.daemon.commands import COMMANDS, ArgumentError, Command, help_result, lookup, validate
from crmsync.daemon.config import ConfigError
from crmsync.daemon.dry_run import run_dry
from crmsync.daemon.supervisor import CommandError, Supervisor
from crmsync.redaction import redact, redact_value

log = structlog.get_logger("crmsync.daemon.control")

MAX_LINE = 64 * 1024
PROTOCOL = 1


async def open_unix_listener(path: Path, mode: int = 0o660) -> trio.SocketListener:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # a stale socket from a previous run; never remove a regular file
        else:
            raise OSError(f"{path} exists and is not a socket")
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(128)
    return trio.SocketListener(sock)


def listener_from_fd(fd: int) -> trio.SocketListener:
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def peer_credentials(stream: trio.SocketStream) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the connected client, from SO_PEERCRED (Linux)."""
    try:
        raw = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


class ControlServer:
    def __init__(self, supervisor: Supervisor, idle_timeout: float,
                 reload_config: Callable[[], Awaitable[dict[str, Any]]], *, send_timeout: float = 10.0,
                 max_clients: int = 32):
        self.supervisor = supervisor
        self.idle_timeout = idle_timeout
        self.reload_config = reload_config
        self.send_timeout = send_timeout
        self.max_clients = max_clients
        self.clients = 0

    async def serve(self, listener: trio.SocketListener) -> None:
        await trio.serve_listeners(self.handle_connection, [listener])

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        if self.clients >= self.max_clients:
            # answered rather than left in the backlog, so `crmsync status` says why instead of hanging
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
                                     ConnectionError):
                await self._send(stream, _error(None, "too_many_clients",
                                                f"at most {self.max_clients} control clients at once"))
            await stream.aclose()
            return
        self.clients += 1
        try:
            await self._serve_connection(stream)
        except trio.TooSlowError:  # the client does not read its replies
            log.warning("control_client_not_reading", send_timeout_s=self.send_timeout)
        except Exception:  # one connection never takes the daemon down (serve_listeners would re-raise it)
            log.exception("control_connection_failed")
        finally:
            self.clients -= 1
            await stream.aclose()

    async def _send(self, stream: trio.SocketStream, obj: dict[str, Any]) -> None:
        """One reply, within ``send_timeout`` (TooSlowError otherwise: the connection is then closed)."""
        with trio.fail_after(self.send_timeout):
            await _send(stream, redact_value(obj))  # an echoed request or error may carry a secret

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        creds = peer_credentials(stream)
        buf = bytearray()
        try:
            while True:
                with trio.move_on_after(self.idle_timeout) as idle:
                    chunk = await stream.receive_some(65536)
                if idle.cancelled_caught:
                    await self._send(stream, {"id": None, "ok": False, "error": {
                        "code": "idle_timeout", "message": "closing idle connection"}})
                    return
                if not chunk:
                    return
                buf.extend(chunk)
                while True:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        if len(buf) > MAX_LINE:
                            await self._send(stream, _error(None, "line_too_long",
                                                            f"request lines are capped at {MAX_LINE} bytes"))
                            return
                        break
                    line = bytes(buf[:nl])
                    del buf[: nl + 1]
                    if len(line) > MAX_LINE:
                        await self._send(stream, _error(None, "line_too_long",
                                                        f"request lines are capped at {MAX_LINE} bytes"))
                        return
                    if not line.strip():
                        continue
                    reply = await self.dispatch_line(line, creds)
                    await self._send(stream, reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            return

    async def dispatch_line(self, line: bytes, creds: tuple[int, int, int] | None = None) -> dict[str, Any]:
        try:
            request = jsonlimits.loads(line)
        except ValueError as exc:  # jsonlimits: malformed, too deep, NaN, not UTF-8
            return _error(None, "bad_json", f"not a JSON object: {exc}")
        if not isinstance(request, dict):
            return _error(None, "bad_request", "a request is a JSON object with id, cmd and args")
        rid = request.get("id")
        cmd = request.get("cmd")
        args = request.get("args", {})
        if not isinstance(cmd, str):
            return _error(rid, "bad_request", "cmd must be a string")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            return _error(rid, "bad_request", "args must be an object")
        command = COMMANDS.get(cmd)
        if command is None:
            self.supervisor.metrics.control_commands.labels("_unknown", "error").inc()
            return _error(rid, "unknown_command", f"unknown command {cmd!r}; commands: {', '.join(COMMANDS)} "
                                                  "(help lists each with its arguments)")
        try:
            kwargs = validate(command, args)
        except ArgumentError as exc:
            self.supervisor.metrics.control_commands.labels(cmd, "error").inc()
            return _error(rid, "bad_request", str(exc))
        if command.mutating:
            pid, uid, gid = creds if creds else (None, None, None)
            log.info("control_command", cmd=cmd, args=args, peer_pid=pid, peer_uid=uid, peer_gid=gid)
        try:
            # every log line of a state-changing command carries who asked (e.g. dropping a dead letter)
            who = {"peer_uid": creds[1], "peer_pid": creds[0]} if creds and command.mutating else {}
            with structlog.contextvars.bound_contextvars(**who):
                result = await self._call(command, kwargs)
        except CommandError as exc:
            self.supervisor.metrics.control_commands.labels(cmd, "error").inc()
            return _error(rid, exc.code, exc.message)
        except ConfigError as exc:
            self.supervisor.metrics.control_commands.labels(cmd, "error").inc()
            return {"id": rid, "ok": False, "error": {"code": "invalid_config", "message": str(exc),
                                                      "problems": exc.lines()}}
        except Exception as exc:  # never let one command take the socket down
            log.exception("control_command_failed", cmd=cmd)
            self.supervisor.metrics.control_commands.labels(cmd, "error").inc()
            return _error(rid, "internal_error", redact(f"{type(exc).__name__}: {exc}"))
        self.supervisor.metrics.control_commands.labels(cmd, "ok").inc()
        return {"id": rid, "ok": True, "result": result}

    async def _call(self, command: Command, kwargs: dict[str, Any]) -> dict[str, Any]:
        """A command's own method here (``cmd_NAME``), else the supervisor's method of the same name."""
        own = getattr(self, f"cmd_{command.name}", None)
        if own is not None:
            result: dict[str, Any] = await own(**kwargs)
            return result
        result = await getattr(self.supervisor, command.name)(**kwargs)
        return result

    async def cmd_hello(self) -> dict[str, Any]:
        return {"protocol": PROTOCOL, "version": __version__, "commands": list(COMMANDS)}

    async def cmd_help(self, command: str | None = None) -> dict[str, Any]:
        only = None
        if command is not None:
            only = lookup(command)
            if only is None:
                raise CommandError("unknown_command", f"no command {command!r}; commands: {', '.join(COMMANDS)}")
        return help_result(only)

    async def cmd_reload(self) -> dict[str, Any]:
        return await self.reload_config()

    # -- dry runs and the issue-11 commands: their substance lives in their own modules ---------------------

    async def cmd_run_flow(self, name: str, flow: str, wait: bool = False, dry_run: bool = False) -> dict[str, Any]:
        if dry_run:
            return await run_dry(self.supervisor, name, flow)
        return await self.supervisor.run_flow(name, flow, wait=wait)

    async def cmd_full_sync(self, name: str, from_start: bool = False, dry_run: bool = False) -> dict[str, Any]:
        if dry_run:
            return await run_dry(self.supervisor, name, "full_sync")
        return await self.supervisor.full_sync(name, from_start=from_start)

    async def cmd_dead_letters(self, name: str, limit: int, offset: int) -> dict[str, Any]:
        return await dead_letters.list_dead_letters(self.supervisor, name, limit, offset)

    async def cmd_requeue(self, name: str, ids: list[int] | None = None, all: bool = False) -> dict[str, Any]:
        return await dead_letters.requeue(self.supervisor, name, ids, all_=all)

    async def cmd_drop(self, name: str, ids: list[int]) -> dict[str, Any]:
        return await dead_letters.drop(self.supervisor, name, ids)

    async def cmd_explain(self, name: str, record: str) -> dict[str, Any]:
        return await explain.explain(self.supervisor, name, record)

    async def cmd_consent_history(self, name: str, limit: int, offset: int, person: str | None = None
                                  ) -> dict[str, Any]:
        return await consent_history.consent_history(self.supervisor, name, person, limit, offset)


def _error(rid: Any, code: str, message: str) -> dict[str, Any]:
    return {"id": rid, "ok": False, "error": {"code": code, "message": message}}


async def _send(stream: trio.SocketStream, obj: dict[str, Any]) -> None:
    await stream.send_all(json.dumps(obj, default=str).encode() + b"\n")


class ControlClient:
    """A small synchronous-feeling async client (the CLI and tests use it)."""

    def __init__(self, path: str | Path, timeout: float = 60.0):
        self.path = str(path)
        self.timeout = timeout
        self._stream: trio.SocketStream | None = None
        self._buf = bytearray()
        self._next_id = 0

    async def __aenter__(self) -> ControlClient:
        self._stream = await trio.open_unix_socket(self.path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._stream is not None:
            await self._stream.aclose()

    async def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        assert self._stream is not None
        self._next_id += 1
        await self._stream.send_all(
            json.dumps({"id": self._next_id, "cmd": cmd, "args": args}).encode() + b"\n"
        )
        return await self.read_reply()

    async def read_reply(self) -> dict[str, Any]:
        assert self._stream is not None
        with trio.fail_after(self.timeout):
            while b"\n" not in self._buf:
                chunk = await self._stream.receive_some(65536)
                if not chunk:
                    raise ConnectionError("the daemon closed the control connection")
                self._buf.extend(chunk)
        nl = self._buf.find(b"\n")
        line = bytes(self._buf[:nl])
        del self._buf[: nl + 1]
        reply: dict[str, Any] = json.loads(line)
        return reply
