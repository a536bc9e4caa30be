"""Issue 9: every output channel is scanned for every configured secret, in each of its encoded forms.

One daemon subprocess runs both integration kinds against an upstream that answers every API call with an
error page echoing the request (headers and body: the Basic token, X-Efficy-ApiKey, the bearer token, the
APSIS client secret). Every flow is run, a webhook carrying its own secret is sent, and then the stdout log,
`status`, `runs`, `report`, /metrics, /healthz, the control and HTTP error answers and the store's files are
searched for each secret as raw text, base64 (standard, url-safe, unpadded), percent-encoded, JSON-escaped,
and inside the Basic-auth credentials the clients build."""

from __future__ import annotations

import base64
import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crmsync.connectors.efficy.webhooks import sign_contract_body
from tests.hostile import corpus
from tests.hostile.test_corpus_daemon import Daemon

EA_APP = "corpusApp"
MC_LOGIN = "api@example.org"


def forms(secret: str) -> set[str]:
    raw = secret.encode()
    b64 = base64.b64encode(raw).decode()
    return {secret, b64, b64.rstrip("="), base64.urlsafe_b64encode(raw).decode(),
            urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret), json.dumps(secret)[1:-1],
            secret.encode().hex()}


def every_form() -> dict[str, str]:
    out = {form: secret for secret in corpus.SECRETS for form in forms(secret)}
    for basic in (f"{EA_APP}:{corpus.EA_KEY}|1", f"{MC_LOGIN}:{corpus.MC_PASSWORD}"):
        out.update({form: basic for form in forms(basic) if form != basic})
    return out


class EchoingUpstream(http.server.ThreadingHTTPServer):
    """Every API: an HTTP 400 page echoing the request's headers and body (APSIS tokens are granted, so that
    its calls go on to echo the bearer token too)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), self.Handler)
        self.requests = 0

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            assert isinstance(self.server, EchoingUpstream)
            self.server.requests += 1
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            if self.path.endswith("/oauth/token"):
                page = json.dumps({"access_token": "scan-access-token-7c1d9e2f4a", "expires_in": 3600,
                                   "token_type": "Bearer"}).encode()
                status, kind = 200, "application/json"
            else:
                echoed = "".join(f"<br>{k}: {v}" for k, v in self.headers.items())
                page = (f"<html><body>Bad request{echoed}<br>{body.decode('utf-8', 'replace')}</body></html>"
                        .encode())
                status, kind = 400, "text/html"
            self.send_response(status)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        def log_message(self, *args: Any) -> None:
            pass


@pytest.fixture
def upstream() -> Iterator[EchoingUpstream]:
    server = EchoingUpstream()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _extra_config(tmp: Path, url: str) -> str:
    (tmp / "ea.secret").write_text(corpus.EA_KEY)
    (tmp / "mc.secret").write_text(corpus.MC_PASSWORD)
    return f"""
[integrations.ea-mc]
kind = "everyaction_mobilecommons"
[integrations.ea-mc.everyaction]
application_name = "{EA_APP}"
api_key_file = "{tmp}/ea.secret"
host = "{url}/v4"
export_poll_interval = "1s"
[integrations.ea-mc.mobilecommons]
login = "{MC_LOGIN}"
password_file = "{tmp}/mc.secret"
base_url = "{url}/api"
"""


def test_no_output_channel_carries_a_configured_secret(tmp_path: Path, upstream: EchoingUpstream) -> None:
    url = f"http://127.0.0.1:{upstream.server_address[1]}"
    daemon = Daemon(tmp_path, upstream=url, extra=_extra_config(tmp_path, url))  # the efficy one and ea-mc
    outputs: dict[str, str] = {}
    try:
        for name in ("efficy", "ea-mc"):
            assert daemon.control(b'{"id": 1, "cmd": "activate", "args": {"integration": "%s"}}'
                                  % name.encode())[0]["ok"]
        flows = {"efficy": ["consent_backflow", "tags", "full_sync"], "ea-mc": ["ea_to_mc", "mc_to_ea"]}
        for name, names in flows.items():
            for flow in names:
                line = json.dumps({"id": 2, "cmd": "run_flow", "args": {"integration": name, "flow": flow,
                                                                         "wait": True}}).encode()
                outputs[f"run_flow {name} {flow}"] = json.dumps(daemon.control(line))
        signed = json.dumps([{"record_id": corpus.WEBHOOK_SECRET, "operation": "updated"}]).encode()
        answer = daemon.http.post("/webhooks/efficy", content=signed,
                                  headers={"X-Justin-Signature": sign_contract_body(signed, corpus.WEBHOOK_SECRET)})
        outputs["webhook 400"] = f"{answer.status_code} {answer.text}"
        real = json.dumps([{"record_id": 42, "operation": "updated"}]).encode()
        daemon.http.post("/webhooks/efficy", content=real,
                         headers={"X-Justin-Signature": sign_contract_body(real, corpus.WEBHOOK_SECRET)})
        outputs["unknown command"] = json.dumps(daemon.control(
            json.dumps({"id": 3, "cmd": corpus.EFFICY_KEY}).encode()))
        outputs["status"] = json.dumps(daemon.control(b'{"id": 4, "cmd": "status"}'))
        for name in flows:
            outputs[f"status {name}"] = json.dumps(daemon.control(
                json.dumps({"id": 5, "cmd": "status", "args": {"integration": name}}).encode()))
            runs = daemon.control(json.dumps({"id": 6, "cmd": "runs", "args": {"integration": name,
                                                                                "limit": 100}}).encode())[0]
            outputs[f"runs {name}"] = json.dumps(runs)
            for run in runs["result"]["runs"]:
                outputs[f"report {name} {run['id']}"] = json.dumps(daemon.control(json.dumps(
                    {"id": 7, "cmd": "report", "args": {"integration": name, "run_id": run["id"]}}).encode()))
        outputs["metrics"] = daemon.http.get("/metrics").text
        outputs["healthz"] = daemon.http.get("/healthz").text
    finally:
        daemon.close()
    outputs["stdout log"] = daemon.log.read_text()
    for path in tmp_path.glob("crmsync.db*"):
        outputs[f"store {path.name}"] = path.read_bytes().decode("latin-1")

    # the scan can see what it looks for: the upstream was called and echoed, runs failed with its answer
    assert upstream.requests > 0
    assert "Bad request" in outputs["stdout log"] + "".join(v for k, v in outputs.items() if k.startswith("report"))
    assert len([k for k in outputs if k.startswith("report")]) >= 4
    leaks = [(channel, secret) for channel, text in outputs.items() for form, secret in every_form().items()
             if form in text]
    assert not leaks, leaks
