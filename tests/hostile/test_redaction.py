"""Issue 9 item 5: an upstream error page that echoes the request (headers, body) must not carry a secret into
anything kept or printed. Regression tests, written from the issue's words."""

from __future__ import annotations

import base64
import io
import json
import logging
import urllib.parse
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import structlog

from crmsync.connectors.apsis import ApsisClient
from crmsync.connectors.efficy import EfficyClient
from crmsync.connectors.errors import ApiError
from crmsync.connectors.everyaction.client import EveryActionClient
from crmsync.connectors.http import RetryPolicy
from crmsync.connectors.mobilecommons.client import MobileCommonsClient
from crmsync.daemon.logging import configure_logging

EA_KEY = "ea-key-7f3a9c1d2e4b"
EFFICY_KEY = "efficy-key-0b8e6d5c4a3f"
MC_PASSWORD = "mc-pass-91e2d3c4b5a6"
APSIS_SECRET = "apsis-secret-5d6e7f8a9b0c"
ALL_SECRETS = (EA_KEY, EFFICY_KEY, MC_PASSWORD, APSIS_SECRET)


def encoded_forms(secret: str) -> list[str]:
    """The forms a secret travels in: raw, base64 (standard, url-safe, unpadded), percent-encoded, JSON."""
    b64 = base64.b64encode(secret.encode()).decode()
    return [secret, b64, b64.rstrip("="), base64.urlsafe_b64encode(secret.encode()).decode(),
            urllib.parse.quote(secret, safe=""), json.dumps(secret)[1:-1]]


def leaks(text: str, secrets: tuple[str, ...] = ALL_SECRETS) -> list[str]:
    found = [form for s in secrets for form in encoded_forms(s) if form and form in text]
    return found


def echoing(status: int) -> Callable[[httpx.Request], httpx.Response]:
    """An error page that echoes the request headers and body, as some proxies and frameworks do."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth/token"):
            return httpx.Response(200, json={"access_token": "tok-" + APSIS_SECRET[-8:] + "-abcdef0123",
                                             "expires_in": 3600, "token_type": "Bearer"})
        lines = "".join(f"<br>{k}: {v}" for k, v in request.headers.items())
        page = f"<html><h1>{status} Error</h1>Request headers:{lines}<br>Body: {request.content.decode()}</html>"
        return httpx.Response(status, text=page, headers={"content-type": "text/html"})

    return handler


def clients(status: int) -> list[Any]:
    transport = httpx.MockTransport(echoing(status))
    once = RetryPolicy(attempts=1)
    return [
        EveryActionClient("crmsyncApp", EA_KEY, base_url="https://ea.test/v4", transport=transport, retry=once),
        EfficyClient("https://efficy.test", api_key=EFFICY_KEY, transport=transport, retry=once),
        MobileCommonsClient("https://mc.test/api", login="api@example.org", password=MC_PASSWORD,
                            transport=transport, retry=once),
        ApsisClient("https://apsis.test", client_id="cid", client_secret=APSIS_SECRET, transport=transport,
                    retry=once),
    ]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 500, 503])
async def test_upstream_error_page_echoing_headers_leaks_no_secret(status: int) -> None:
    for client in clients(status):
        with pytest.raises(ApiError) as err:
            await client.request("POST", "/people/find", json={"q": 1}, retry=False)
        text = f"{err.value} {err.value.message} {err.value!r}"
        assert not leaks(text), (type(client).__name__, text)
        await client.aclose()


async def test_authorization_like_headers_are_redacted_even_when_unknown() -> None:
    from crmsync.redaction import redact

    text = ("Authorization: Basic dXNlcjpwYXNz; X-Efficy-ApiKey: abcdef123456; Cookie: sid=s3cr3tcookie; "
            "Set-Cookie: EFFICY_SESSION=zzz999yyy; X-Api-Key: k-123456789; access_token=eyJabc.def.ghi&x=1; "
            '{"client_secret": "cs-value-1234", "token": "t0k3n-value"} Bearer eyJhbGciOi.payload.sig')
    out = redact(text)
    for value in ("dXNlcjpwYXNz", "abcdef123456", "s3cr3tcookie", "zzz999yyy", "k-123456789", "eyJabc.def.ghi",
                  "cs-value-1234", "t0k3n-value", "eyJhbGciOi.payload.sig"):
        assert value not in out, out
    assert "Authorization" in out and "X-Efficy-ApiKey" in out  # the names stay: they help debugging


def test_configured_secret_is_redacted_in_every_form_including_truncated_tail() -> None:
    from crmsync.daemon.secrets import Secret
    from crmsync.redaction import learn_headers, redact

    secret = Secret("configured-" + "q8w7e6r5t4y3")
    raw = secret.reveal()
    for form in encoded_forms(raw):
        assert form not in redact(f"echo {form} end"), form
    basic = base64.b64encode(f"someapp:{raw}|1".encode()).decode()
    learn_headers({"Authorization": f"Basic {basic}"})  # as ApiClient does for every request it sends
    assert basic not in redact(f"seen {basic} and {base64.b64encode(f'someapp:{raw}|1'.encode()).decode()}")
    cut = f"error page ... {raw[:-3]}"  # a message cut inside the secret still must not show its start
    assert raw[:-3] not in redact(cut, cut=True)


def test_log_lines_are_redacted() -> None:
    from crmsync.daemon.secrets import Secret

    secret = Secret("log-secret-a1b2c3d4e5")
    stream = io.StringIO()
    configure_logging("info", stream)
    structlog.get_logger("t").warning("upstream_said", body=f"Authorization: Bearer {secret.reveal()}",
                                      nested={"k": [secret.reveal()]})
    out = stream.getvalue()
    logging.getLogger().handlers[:] = []
    structlog.reset_defaults()
    assert "upstream_said" in out and secret.reveal() not in out


async def test_run_errors_and_report_messages_are_redacted(db: Any, sim_clock: Any) -> None:
    from crmsync.daemon.runs import RunContext
    from crmsync.daemon.secrets import Secret
    from crmsync.state import queries as q

    secret = Secret("run-secret-z9y8x7w6")
    run_id = await db.tx(lambda c: q.start_run(c, "a", "f", "manual", sim_clock.now().isoformat()))
    run = RunContext(db=db, clock=sim_clock, integration="a", flow="f", run_id=run_id)
    run.record("rejected", crm_id="1", message=f"KeyError: {secret.reveal()}")
    run.error = f"RuntimeError: upstream said {secret.reveal()}"
    await run.flush()
    assert secret.reveal() not in (run.error or "")
    rows = await db.tx(lambda c: c.execute("SELECT * FROM report_rows").fetchall())
    assert rows and secret.reveal() not in repr(rows)
