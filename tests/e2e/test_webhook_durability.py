"""kill -9 after 202 loses nothing: concurrent signed webhooks to the daemon as a subprocess, SIGKILL while
requests are still in flight, then every event that was answered 202 must be in the store."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from crmsync.daemon.webhook_auth import sign
from tests.e2e.test_daemon_process import ROOT, SECRET, _cli, _env


def test_kill_9_after_202_loses_nothing(tmp_path: Path) -> None:
    (tmp_path / "webhook-secret").write_text(SECRET + "\n")
    config = tmp_path / "config.toml"
    config.write_text(f"""
[daemon]
state_dir = "{tmp_path}"
control_socket = "{tmp_path}/control.sock"
plugins = ["tests.fake_kind"]

[http]
webhook_listen = "127.0.0.1:0"

[integrations.demo]
kind = "fake"

[integrations.demo.webhook]
header = "X-Signature"
prefix = "sha256="
secret_file = "{tmp_path}/webhook-secret"
""")
    out = (tmp_path / "stdout.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "crmsync", "run", "--config", str(config)], stdout=out,
                            stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
    try:
        sock = tmp_path / "control.sock"
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stdout.log").read_text()
            time.sleep(0.05)
        base = json.loads(_cli("status", "--json", "--socket", str(sock)).stdout)["daemon"]["webhooks"]

        acknowledged: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def sender(worker: int) -> None:
            with httpx.Client(base_url=base, timeout=10) as http:
                for i in range(10_000):
                    if stop.is_set():
                        return
                    rid = f"w{worker}-{i}"
                    body = json.dumps([{"id": rid, "version": 1}]).encode()
                    try:
                        r = http.post("/webhooks/demo", content=body,
                                      headers={"X-Signature": "sha256=" + sign(SECRET, body)})
                    except httpx.HTTPError:
                        return  # the daemon is gone
                    if r.status_code == 202:
                        with lock:
                            acknowledged.append(rid)

        with ThreadPoolExecutor(max_workers=16) as pool:
            for w in range(16):
                pool.submit(sender, w)
            while True:
                with lock:
                    if len(acknowledged) >= 300:
                        break
                assert proc.poll() is None and time.monotonic() < deadline + 60
                time.sleep(0.01)
            os.kill(proc.pid, 9)  # while requests are still in flight
            proc.wait()
            stop.set()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()

    with sqlite3.connect(tmp_path / "crmsync.db") as store:
        stored = {r[0] for r in store.execute("SELECT json_extract(payload, '$.id') FROM realtime_queue")}
    assert len(acknowledged) >= 300
    missing = [rid for rid in acknowledged if rid not in stored]
    assert missing == []
