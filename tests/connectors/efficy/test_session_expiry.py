"""Issue 7 item 10: "Efficy HTTP 401 is an expired session, as in Efficy's own SDK: drop the session cookie and
log on again once; the same for the other expiry answers ("Session timeout", "The CRM Session is not active",
"The session is not valid anymore", detail codes FRMK-2612 and CORE-1243). The simulator answers an expired
session in each of these ways (a switch)."
"""

from __future__ import annotations

import httpx
import pytest

from crmsync.connectors.efficy.client import SESSION_COOKIE, EfficyClient
from crmsync.connectors.efficy.simulator import EXPIRED_SESSION_ANSWERS, EfficySimulator
from crmsync.connectors.errors import AuthError
from crmsync.connectors.http import RetryPolicy

from .conftest import API_KEY


def _session_cookie(request: httpx.Request) -> str | None:
    for pair in (request.headers.get("cookie") or "").split(";"):
        name, _, value = pair.strip().partition("=")
        if name == SESSION_COOKIE:
            return value
    return None


@pytest.mark.parametrize("answer", EXPIRED_SESSION_ANSWERS)
async def test_regression_issue7_every_expiry_answer_drops_the_cookie_and_logs_on_again_once(
    sim: EfficySimulator, answer: str
) -> None:
    sent: list[str | None] = []

    async def record(request: httpx.Request) -> None:
        sent.append(_session_cookie(request))

    transport = httpx.ASGITransport(app=sim)  # type: ignore[arg-type]
    http = httpx.AsyncClient(transport=transport, base_url="http://sim.test", event_hooks={"request": [record]})
    client = EfficyClient("http://sim.test", api_key=API_KEY, http=http,
                          retry=RetryPolicy(attempts=3, base_delay=0.01))
    sim.expired_session_answer = answer  # type: ignore[assignment]
    assert await client.current_user() == "API User"
    old = client.session_id
    assert old is not None
    sim.expire_sessions()
    assert await client.current_user() == "API User"  # transparently renewed
    assert sim.sessions_created == 2
    assert client.session_id not in (None, old)
    # first call: no cookie; second: the old cookie, refused; third: the cookie dropped, a fresh log-on
    assert sent == [None, old, None]
    await http.aclose()


@pytest.mark.parametrize("answer", EXPIRED_SESSION_ANSWERS)
async def test_the_simulator_answers_an_expired_session_in_the_chosen_way(sim: EfficySimulator,
                                                                         answer: str) -> None:
    sim.expired_session_answer = answer  # type: ignore[assignment]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim),  # type: ignore[arg-type]
                                 base_url="http://sim.test") as http:
        body = b'[{"@name":"api","@func":[{"@name":"currentuserfullname"}]}]'
        headers = {"X-Efficy-ApiKey": API_KEY, "Content-Type": "application/json"}
        response = await http.post("/crm/json", content=body, headers={**headers, "Cookie": f"{SESSION_COOKIE}=GONE"})
    if answer == "http_401":
        assert response.status_code == 401
        return
    assert response.status_code == 200  # Efficy's business errors come in a 200
    wording = {"database_connection": "This operation requires a Database Connection",
               "session_timeout": "Session timeout", "crm_session_not_active": "The CRM Session is not active",
               "session_not_valid": "The session is not valid anymore", "frmk_2612": "FRMK-2612",
               "core_1243": "CORE-1243"}[answer]
    assert wording in response.text and "#error" in response.text


async def test_regression_issue7_a_401_that_persists_is_an_auth_error_after_one_renewal() -> None:
    calls: list[str | None] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(_session_cookie(request))
        if len(calls) == 1:
            return httpx.Response(200, json=[{"@name": "api", "@func": [{"@name": "currentuserfullname",
                                                                           "#result": "API User"}]}],
                                  headers={"set-cookie": f"{SESSION_COOKIE}=ABC-123; Path=/crm"})
        return httpx.Response(401, text="Unauthorized")

    http = httpx.AsyncClient(transport=httpx.MockTransport(refuse), base_url="http://efficy.test")
    client = EfficyClient("http://efficy.test", api_key=API_KEY, http=http,
                          retry=RetryPolicy(attempts=3, base_delay=0.01))
    await client.current_user()
    assert client.session_id == "ABC-123"
    with pytest.raises(AuthError) as info:
        await client.current_user()
    assert info.value.status == 401
    assert calls == [None, "ABC-123", None]  # exactly one renewal, without the refused cookie
    assert client.session_id is None
    await http.aclose()
