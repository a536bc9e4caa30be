"""The whole daemon as a subprocess: start, control socket, webhooks, metrics, garbage, SIGTERM, exit 0."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from crmsync.daemon.webhook_auth import sign

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec-e2e-5f1d9c0a7b"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("NOTIFY_SOCKET", None)
    return env


def _ctl(sock: Path, *requests: bytes) -> list[dict[str, Any]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(sock))
        s.sendall(b"".join(requests))
        buf = b""
        while buf.count(b"\n") < len(requests):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return [json.loads(line) for line in buf.splitlines()]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crmsync", *args], capture_output=True, text=True, env=_env(),
                          cwd=ROOT, timeout=60)


@pytest.fixture
def daemon(tmp_path: Path) -> Any:
    (tmp_path / "webhook-secret").write_text(SECRET + "\n")
    config = tmp_path / "config.toml"
    config.write_text(f"""
[daemon]
state_dir = "{tmp_path}"
control_socket = "{tmp_path}/control.sock"
plugins = ["tests.fake_kind"]
shutdown_timeout = "10s"

[http]
webhook_listen = "127.0.0.1:0"

[integrations.demo]
kind = "fake"
records = 25
page_size = 10
notes = "end-to-end test"

[integrations.demo.webhook]
mode = "hmac"
header = "X-Signature"
prefix = "sha256="
secret_file = "{tmp_path}/webhook-secret"
""")
    out = (tmp_path / "stdout.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "crmsync", "run", "--config", str(config)], stdout=out,
                            stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
    sock = tmp_path / "control.sock"
    deadline = time.monotonic() + 30
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out.close()
            raise AssertionError("daemon did not start:\n" + (tmp_path / "stdout.log").read_text())
        time.sleep(0.05)
    yield proc, tmp_path, sock, config
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    out.close()


def test_daemon_end_to_end(daemon: Any) -> None:
    proc, tmp_path, sock, config = daemon

    # status over the socket, through the CLI, as JSON
    result = _cli("status", "--json", "--socket", str(sock))
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["daemon"]["store"].endswith("crmsync.db")
    assert [(i["name"], i["kind"], i["active"]) for i in status["integrations"]] == [("demo", "fake", False)]
    base = status["daemon"]["webhooks"]
    assert base.startswith("http://127.0.0.1:")

    # garbage on the control socket gets error replies, then the daemon keeps serving
    replies = _ctl(sock, b"this is not json\n", b"[1,2]\n", b'{"id": 7, "cmd": "frobnicate"}\n',
                   b'{"id": 8, "cmd": "activate", "args": {"integration": "nope"}}\n',
                   b'{"id": 9, "cmd": "activate", "args": {"integration": "demo"}}\n')
    assert [r.get("error", {}).get("code") for r in replies[:4]] == [
        "bad_json", "bad_request", "unknown_command", "unknown_integration"]
    assert replies[4] == {"id": 9, "ok": True, "result": {"integration": "demo", "active": True, "changed": True}}
    overlong = _ctl(sock, b"x" * (70 * 1024) + b"\n")
    assert overlong[0]["error"]["code"] == "line_too_long"

    # webhooks: signed 202, unsigned/wrong 401, malformed 400 (nothing stored), unknown 404
    body = json.dumps([{"id": "r3", "version": 7}]).encode()
    with httpx.Client(base_url=base, timeout=10) as http:
        ok = http.post("/webhooks/demo", content=body, headers={"X-Signature": "sha256=" + sign(SECRET, body)})
        assert ok.status_code == 202 and ok.json() == {"accepted": 1}
        assert http.post("/webhooks/demo", content=body).status_code == 401
        bad = http.post("/webhooks/demo", content=body, headers={"X-Signature": "sha256=" + sign("wrong", body)})
        assert bad.status_code == 401
        junk = b"{not json"
        assert http.post("/webhooks/demo", content=junk,
                         headers={"X-Signature": "sha256=" + sign(SECRET, junk)}).status_code == 400
        assert http.post("/webhooks/nobody", content=body).status_code == 404
        big = b"[" + b" " * (2 * 1024 * 1024) + b"]"
        assert http.post("/webhooks/demo", content=big,
                         headers={"X-Signature": "sha256=" + sign(SECRET, big)}).status_code == 413
        # the accepted event gets processed by the real-time consumer
        deadline = time.monotonic() + 20
        while True:
            runs = json.loads(_cli("runs", "demo", "--json", "--socket", str(sock)).stdout)["runs"]
            if any(r["flow"] == "realtime" and r["status"] == "success" for r in runs):
                break
            assert time.monotonic() < deadline, runs
            time.sleep(0.2)
        metrics = http.get("/metrics").text
        assert http.get("/healthz").json()["status"] == "ok"
    assert 'crmsync_webhook_requests_total{integration="demo",status="202"} 1.0' in metrics
    assert 'crmsync_webhook_requests_total{integration="demo",status="401"} 2.0' in metrics
    assert 'crmsync_integration_active{integration="demo"} 1.0' in metrics
    assert 'crmsync_runs_total{flow="realtime",integration="demo",status="success"}' in metrics

    # a full sync through the CLI, then its report
    assert _cli("full-sync", "demo", "--socket", str(sock)).returncode == 0
    deadline = time.monotonic() + 20
    def full_sync_state() -> str:
        return str(json.loads(_cli("status", "demo", "--json", "--socket", str(sock)).stdout)["full_sync"]["state"])

    while full_sync_state() != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    report = json.loads(_cli("report", "demo", "--json", "--socket", str(sock)).stdout)
    assert report["run"]["flow"] == "full_sync" and report["counts"]["fetched"] == 25
    human = _cli("report", "demo", "--socket", str(sock))
    assert "Synchronization report: demo" in human.stdout

    # an invalid config is refused on reload; the running one stays
    good = config.read_text()
    config.write_text(good + "\n[integrations.demo2]\nkind = \"nope\"\n")
    refused = _cli("reload", "--socket", str(sock))
    assert refused.returncode == 1 and "integrations.demo2.kind" in refused.stderr
    # SIGHUP applies a valid new config: demo3 appears, demo keeps running untouched
    config.write_text(good + "\n[integrations.demo3]\nkind = \"fake\"\n")
    proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while True:
        status = json.loads(_cli("status", "--json", "--socket", str(sock)).stdout)
        names = {i["name"]: i["active"] for i in status["integrations"]}
        if "demo3" in names:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert names == {"demo": True, "demo3": False}

    # SIGTERM: exit 0, socket removed, and no secret anywhere in the output
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert not sock.exists()
    log = (tmp_path / "stdout.log").read_text()
    assert SECRET not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(e.get("event") == "ready" for e in lines) and any(e.get("event") == "stopped" for e in lines)
    assert any(e.get("event") == "control_command" and e.get("peer_uid") == os.getuid() for e in lines)
    assert any(e.get("integration") == "demo" and e.get("flow") == "full_sync" for e in lines)


def test_check_config_names_every_bad_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("""
[daemon]
plugins = ["tests.fake_kind"]
timezone = "Mars/Olympus"
shutdown_timeout = "soon"
colour = "blue"

[http]
webhook_listen = "localhost"

[integrations.one]
kind = "fake"
records = "many"

[integrations.one.webhook]
secret_file = "/nonexistent/secret"

[integrations.one.schedules.nightly]
daily_at = "25:00"

[integrations.two]
kind = "unknown_kind"
""")
    result = subprocess.run([sys.executable, "-m", "crmsync", "check-config", "--config", str(bad)],
                            capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=60)
    assert result.returncode == 1
    err = result.stderr
    for key in ("daemon.timezone", "daemon.shutdown_timeout", "daemon.colour", "http.webhook_listen",
                "integrations.one.records", "integrations.one.webhook.secret_file",
                "integrations.one.schedules.nightly.daily_at", "integrations.two.kind"):
        assert key in err, (key, err)
    assert "unknown key" in err and "Mars/Olympus" in err


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate not installed")
def test_socket_activation_and_sd_notify(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f"""
[daemon]
state_dir = "{tmp_path}"
control_socket = "{tmp_path}/not-used.sock"
[http]
webhook_listen = "127.0.0.1:0"
""")
    notify_path = tmp_path / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(20)
    sock = tmp_path / "activated.sock"
    env = _env()
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", str(sock), "--fdname=control",
         "-E", f"PYTHONPATH={env['PYTHONPATH']}", "-E", f"NOTIFY_SOCKET={notify_path}",
         "-E", "WATCHDOG_USEC=2000000",
         sys.executable, "-m", "crmsync", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        # the first connection starts the daemon, which answers on the socket systemd handed over
        reply = _ctl(sock, b'{"id": 1, "cmd": "status"}\n')[0]
        # status names the path clients use, not "fd:3" (issue 10, item 10)
        assert reply["ok"] and reply["result"]["daemon"]["control_socket"] == str(sock)
        messages = []
        while not any(m.startswith("READY=1") for m in messages):
            messages.append(notify.recv(4096).decode())
        while "WATCHDOG=1" not in messages:
            messages.append(notify.recv(4096).decode())
        assert not (tmp_path / "not-used.sock").exists()
        proc.send_signal(signal.SIGTERM)
        while not any(m.startswith("STOPPING=1") for m in messages):
            messages.append(notify.recv(4096).decode())
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()


def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "config.toml"
        config.write_text(f'[daemon]\nstate_dir = "{tmp_path}"\ncontrol_socket = "{tmp_path}/c.sock"\n'
                          f'[http]\nwebhook_listen = "127.0.0.1:{port}"\n')
        result = _cli("run", "--config", str(config))
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
