"""The webhook and control-line corpus against ONE daemon subprocess (tests/hostile/corpus.py).

For each case: the answer is the documented error, the daemon still serves (healthz and hello), nothing was
stored (the integration's queue stays empty), and no configured secret appears in any answer. At the end, the
daemon's whole stdout log is scanned for every secret, and a valid body is accepted (the harness can see a
202 and a queued event, so the "nothing stored" checks can fail)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from crmsync.connectors.efficy.webhooks import sign_contract_body
from tests.hostile import corpus
from tests.hostile.test_redaction import leaks

ROOT = Path(__file__).resolve().parents[2]
NAME = "efficy"


class Daemon:
    """``upstream``: where the integrations' APIs are (nothing listens at the default); ``extra``: more config."""

    def __init__(self, tmp: Path, upstream: str = "http://127.0.0.1:9", extra: str = ""):
        self.tmp = tmp
        for name, value in (("webhook", corpus.WEBHOOK_SECRET), ("efficy", corpus.EFFICY_KEY),
                            ("apsis", corpus.APSIS_SECRET)):
            (tmp / f"{name}.secret").write_text(value + "\n")
        self.config = tmp / "config.toml"
        self.config.write_text(f"""
[daemon]
state_dir = "{tmp}"
control_socket = "{tmp}/control.sock"
shutdown_timeout = "10s"

[http]
webhook_listen = "127.0.0.1:0"
max_body_bytes = 1048576

[integrations.{NAME}]
kind = "efficy_apsis"

[integrations.{NAME}.efficy]
url = "{upstream}"
api_key_file = "{tmp}/efficy.secret"

[integrations.{NAME}.apsis]
url = "{upstream}"
client_id = "corpus"
client_secret_file = "{tmp}/apsis.secret"

[integrations.{NAME}.webhook]
mode = "hmac"
header = "X-Justin-Signature"
prefix = "sha256="
secret_file = "{tmp}/webhook.secret"
{extra}""")
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("NOTIFY_SOCKET", None)
        self.log = tmp / "stdout.log"
        self._out = self.log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "crmsync", "run", "--config", str(self.config)],
                                     stdout=self._out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.sock = tmp / "control.sock"
        deadline = time.monotonic() + 30
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("daemon did not start:\n" + self.log.read_text())
            time.sleep(0.05)
        self.base = self.control(b'{"id": 0, "cmd": "status"}')[0]["result"]["daemon"]["webhooks"]
        self.http = httpx.Client(base_url=self.base, timeout=30)

    def control(self, *lines: bytes) -> list[dict[str, Any]]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(str(self.sock))
            s.sendall(b"".join(line + b"\n" for line in lines))
            buf = b""
            while buf.count(b"\n") < len(lines):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        return [json.loads(line) for line in buf.splitlines()]

    def post(self, body: bytes, signed: bool = True) -> httpx.Response:
        headers = {"X-Justin-Signature": sign_contract_body(body, corpus.WEBHOOK_SECRET) if signed else "sha256=00"}
        return self.http.post(f"/webhooks/{NAME}", content=body, headers=headers)

    def queue_depth(self) -> int:
        status = self.control(b'{"id": 0, "cmd": "status", "args": {"integration": "%s"}}' % NAME.encode())[0]
        return int(status["result"]["queue_depth"])

    def assert_serving(self) -> None:
        assert self.proc.poll() is None, "the daemon exited:\n" + self.log.read_text()[-3000:]
        assert self.http.get("/healthz").status_code == 200
        assert self.control(b'{"id": 0, "cmd": "hello"}')[0]["ok"]

    def close(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("corpus-daemon"))
    yield d
    d.close()


@pytest.mark.parametrize("case", corpus.WEBHOOK_CASES + corpus.UNSIGNED_CASES, ids=lambda c: c.id)
def test_webhook_case(daemon: Daemon, case: corpus.Case) -> None:
    response = daemon.post(case.data, signed=case.expect != 401)
    assert response.status_code == case.expect, response.text[:300]
    assert "error" in response.json()
    assert not leaks(response.text, corpus.SECRETS)
    daemon.assert_serving()
    assert daemon.queue_depth() == 0  # nothing stored


@pytest.mark.parametrize("case", [*corpus.CONTROL_CASES, corpus.OVERLONG_LINE], ids=lambda c: c.id)
def test_control_case(daemon: Daemon, case: corpus.Case) -> None:
    reply = daemon.control(case.data)[0]
    assert reply["ok"] is False and reply["error"]["code"] == case.expect, reply
    assert not leaks(json.dumps(reply), corpus.SECRETS)
    daemon.assert_serving()
    assert daemon.queue_depth() == 0


def test_zz_after_the_corpus_the_log_holds_no_secret_and_a_valid_body_is_still_queued(daemon: Daemon) -> None:
    daemon.assert_serving()
    response = daemon.post(b'[{"record_id": 42, "operation": "updated"}]')
    assert response.status_code == 202 and daemon.queue_depth() == 1
    log = daemon.log.read_text()
    assert log and not leaks(log, corpus.SECRETS)
    assert "Traceback" not in log
