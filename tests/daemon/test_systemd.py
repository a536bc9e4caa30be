"""sd_notify and socket activation in pure Python, and the unit files verified by systemd-analyze."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from crmsync.daemon.systemd import Notifier, listen_fds, socket_address, watchdog_interval

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_reaches_the_socket(tmp_path: Path, abstract: bool) -> None:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"crmsync-test-{os.getpid()}"
        receiver.bind("\0" + name)
        addr = "@" + name
    else:
        addr = str(tmp_path / "notify")
        receiver.bind(addr)
    env = {"NOTIFY_SOCKET": addr}
    notifier = Notifier(env)
    assert "NOTIFY_SOCKET" not in env  # not inherited by children
    notifier.notify("READY=1", "STATUS=serving")
    notifier.notify("STOPPING=1")
    assert receiver.recv(4096) == b"READY=1\nSTATUS=serving"
    assert receiver.recv(4096) == b"STOPPING=1"
    notifier.close()
    receiver.close()


def test_no_notify_socket_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.notify("READY=1")


def test_watchdog_interval_is_half_and_respects_pid() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None


def test_listen_fds_only_for_our_pid() -> None:
    assert listen_fds({"LISTEN_PID": "1", "LISTEN_FDS": "1"}) == {}
    r, w = os.pipe()  # occupy fds so that fd 3 exists in this process
    try:
        env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "control"}
        assert listen_fds(env) == {"control": 3}
        assert "LISTEN_FDS" not in env
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_files_verify(tmp_path: Path) -> None:
    # verify needs ExecStart to exist: point it at this checkout's interpreter-installed script
    exe = shutil.which("crmsync") or "/bin/true"
    service = (ROOT / "systemd/crmsync.service").read_text().replace("/opt/crmsync/venv/bin/crmsync", exe)
    (tmp_path / "crmsync.service").write_text(service)
    shutil.copy(ROOT / "systemd/crmsync.socket", tmp_path / "crmsync.socket")
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "crmsync.service"),
                             str(tmp_path / "crmsync.socket")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "crmsync.service" not in result.stderr, result.stderr  # no warnings about our units
    text = (ROOT / "systemd/crmsync.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "DynamicUser=yes", "StateDirectory=crmsync",
                 "ConfigurationDirectory=crmsync", "ProtectSystem=strict"):
        assert line in text


def test_reloading_carries_monotonic_usec(tmp_path: Path) -> None:
    """sd_notify(3): RELOADING=1 must come with MONOTONIC_USEC= (CLOCK_MONOTONIC) for Type=notify-reload."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "notify"))
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    fields = dict(line.split("=", 1) for line in receiver.recv(4096).decode().splitlines())
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert fields["RELOADING"] == "1" and before <= int(fields["MONOTONIC_USEC"]) <= after
    assert fields["STATUS"]
    notifier.close()
    receiver.close()


def test_socket_address_of_a_passed_unix_socket(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(tmp_path / "ctl.sock"))
        assert socket_address(s.fileno()) == str(tmp_path / "ctl.sock")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        assert socket_address(s.fileno()) == f"127.0.0.1:{s.getsockname()[1]}"


def test_unit_bounds_resources_and_prevents_restart_on_config_error() -> None:
    """Issue 9 item 8 (the unit's half) and issue 10 item 10: bounded memory, tasks and files; exit 78 is
    not restarted."""
    settings: dict[str, list[str]] = {}
    for line in (ROOT / "systemd/crmsync.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    memory_max = settings["MemoryMax"][0]
    assert 256 * 1024**2 <= int(memory_max[:-1]) * units[memory_max[-1]] <= 4 * 1024**3
    assert 64 <= int(settings["TasksMax"][0]) <= 4096
    assert 1024 <= int(settings["LimitNOFILE"][0]) <= 65536
    assert "78" in settings["RestartPreventExitStatus"][0].split()
    assert settings["Restart"] == ["on-failure"]
