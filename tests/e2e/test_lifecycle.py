"""Issue 10, items 10-12, with the daemon as systemd runs it (a subprocess): exit 78 for a bad config,
RELOADING=1 then READY=1 on SIGHUP, STATUS= kept current, the socket path shown under socket activation,
log flags, and a sandbox that cleans up after itself."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for var in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "JOURNAL_STREAM", "WATCHDOG_USEC"):
        env.pop(var, None)
    env.update(extra)
    return env


def _config(tmp_path: Path, **daemon: str) -> Path:
    lines = "\n".join(f'{k} = "{v}"' for k, v in daemon.items())
    config = tmp_path / "config.toml"
    config.write_text(f"""
[daemon]
state_dir = "{tmp_path}"
control_socket = "{tmp_path}/control.sock"
plugins = ["tests.fake_kind"]
shutdown_timeout = "10s"
{lines}

[http]
webhook_listen = "127.0.0.1:0"

[integrations.demo]
kind = "fake"
""")
    return config


def _wait_for(path: Path, proc: subprocess.Popen[Any], what: str) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert proc.poll() is None, f"daemon exited before {what}"
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.05)


def _status(sock: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-m", "crmsync", "status", "--json", "--socket", sock],
                            capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_invalid_config_exits_78_for_restart_prevent_exit_status(tmp_path: Path) -> None:
    config = _config(tmp_path)
    config.write_text(config.read_text() + "\n[integrations.demo.oops]\nx = 1\n")
    result = subprocess.run([sys.executable, "-m", "crmsync", "run", "--config", str(config)],
                            capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=60)
    assert result.returncode == 78, result.stderr
    assert "integrations.demo" in result.stderr
    unit = (ROOT / "systemd/crmsync.service").read_text()
    assert re.search(r"^RestartPreventExitStatus=.*\b78\b", unit, re.M)


def test_sighup_sends_reloading_then_ready_and_status_follows(tmp_path: Path) -> None:
    config = _config(tmp_path)
    notify_path = tmp_path / "notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(notify_path))
    receiver.settimeout(30)
    out = (tmp_path / "out.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "crmsync", "run", "--config", str(config)], stdout=out,
                            stderr=subprocess.STDOUT, env=_env(NOTIFY_SOCKET=str(notify_path)), cwd=ROOT)

    def message() -> dict[str, str]:
        return dict(line.split("=", 1) for line in receiver.recv(4096).decode().splitlines())

    def next_besides_status() -> dict[str, str]:
        """The next message that is not a lone STATUS= update (a scheduled flow may run meanwhile)."""
        while True:
            m = message()
            if set(m) != {"STATUS"}:
                return m

    try:
        starting = message()
        assert starting == {"STATUS": "opening the store (and applying any migration)"}, starting
        ready = message()
        assert ready.get("READY") == "1" and ready["STATUS"] == "0 active integrations", ready
        sock = str(tmp_path / "control.sock")
        activated = subprocess.run([sys.executable, "-m", "crmsync", "activate", "demo", "--socket", sock],
                                   capture_output=True, env=_env(), cwd=ROOT, timeout=60)
        assert activated.returncode == 0
        # STATUS= follows what the daemon does
        assert message()["STATUS"].startswith("1 active integration")
        proc.send_signal(signal.SIGHUP)
        reloading = next_besides_status()
        assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0, reloading
        after = next_besides_status()
        assert after.get("READY") == "1" and after["STATUS"].startswith("1 active integration"), after
        proc.send_signal(signal.SIGTERM)
        assert next_besides_status().get("STOPPING") == "1"
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
        receiver.close()


def test_socket_activation_status_shows_the_socket_path(tmp_path: Path) -> None:
    config = _config(tmp_path)
    path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    fd = listener.fileno()
    out = (tmp_path / "out.log").open("w")
    # as systemd does: the socket at fd 3, LISTEN_PID the daemon's own pid (known only after fork: via exec)
    proc = subprocess.Popen(
        ["sh", "-c", 'LISTEN_PID=$$ exec "$0" -m crmsync run --config "$1"', sys.executable, str(config)],
        stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, pass_fds=(3,), preexec_fn=lambda: os.dup2(fd, 3),
        env=_env(LISTEN_FDS="1", LISTEN_FDNAMES="control"),
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "out.log").read_text()
            try:
                status = _status(str(path))
                break
            except AssertionError:
                assert time.monotonic() < deadline, (tmp_path / "out.log").read_text()
                time.sleep(0.2)
        assert status["daemon"]["control_socket"] == str(path)
        assert not (tmp_path / "control.sock").exists()  # the configured path is not bound when activated
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert path.exists()  # the socket belongs to systemd: not unlinked by the daemon
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
        listener.close()


def _run_and_stop(tmp_path: Path, *flags: str) -> list[str]:
    config = _config(tmp_path)
    out = (tmp_path / "out.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "crmsync", "run", "--config", str(config), *flags],
                            stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
    try:
        _wait_for(tmp_path / "control.sock", proc, "control socket")
        time.sleep(0.2)  # the "ready" line follows the socket
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
    return [line for line in (tmp_path / "out.log").read_text().splitlines() if line.strip()]


def test_log_format_console(tmp_path: Path) -> None:
    lines = _run_and_stop(tmp_path, "--log-format", "console")
    assert lines and not any(line.startswith("{") for line in lines), lines
    assert any(re.search(r"\[info\s*\] ready ", line) for line in lines), lines


def test_log_level_flag_overrides_the_config(tmp_path: Path) -> None:
    lines = _run_and_stop(tmp_path, "--log-level", "warning")
    assert not any('"level": "info"' in line for line in lines), lines  # the config says info


@pytest.mark.parametrize("keep", [False, True])
def test_sandbox_removes_its_temporary_folder_unless_state_dir(tmp_path: Path, keep: bool) -> None:
    args = ["--state-dir", str(tmp_path / "kept")] if keep else []
    proc = subprocess.Popen([sys.executable, "-m", "crmsync", "sandbox", "--contacts", "10", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(TMPDIR=str(tmp_path)), cwd=ROOT)
    assert proc.stdout is not None
    directory = None
    try:
        for line in proc.stdout:
            if line.strip().startswith("state dir:"):
                directory = Path(line.split(":", 1)[1].strip())
            if line.startswith("Try:"):
                break
        assert directory is not None and (directory / "secrets").is_dir() and any((directory / "secrets").iterdir())
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    if keep:
        assert directory == tmp_path / "kept" and (directory / "crmsync.db").exists()
        assert (directory / "secrets").is_dir()
    else:
        assert directory.parent == tmp_path and not directory.exists(), rest  # store, config and secrets gone
        assert f"removed {directory}" in rest
