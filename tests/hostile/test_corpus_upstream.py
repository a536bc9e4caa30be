"""The upstream-answer corpus (tests/hostile/corpus.py): each broken or hostile answer of EveryAction (JSON and
export CSV), Mobile Commons (XML), Efficy (JSON-RPC) and APSIS (JSON) makes its client raise the documented
:class:`~crmsync.connectors.errors.ApiError` subclass (never another exception), with no secret in it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from crmsync.connectors import errors
from crmsync.connectors.apsis import ApsisClient
from crmsync.connectors.efficy import EfficyClient
from crmsync.connectors.everyaction.client import EveryActionClient
from crmsync.connectors.everyaction.exports import ExportFile, ExportJob
from crmsync.connectors.http import RetryPolicy
from crmsync.connectors.mobilecommons.client import MobileCommonsClient
from crmsync.daemon.secrets import Secret
from tests.hostile import corpus
from tests.hostile.test_redaction import leaks

# the secrets as the daemon holds them once its config is loaded (every Secret is registered for redaction)
CONFIGURED = [Secret(s) for s in corpus.SECRETS]

ONCE = RetryPolicy(attempts=1)
Call = Callable[[Any], Awaitable[Any]]


def _transport(answer: corpus.Answer) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth/token"):  # APSIS: a working token, then the hostile answer
            return httpx.Response(200, json={"access_token": "corpus-access-token-0123456789", "expires_in": 3600,
                                             "token_type": "Bearer"})
        return httpx.Response(answer.status, content=answer.body, headers={"content-type": answer.content_type})

    return httpx.MockTransport(handler)


async def _ea_csv(client: EveryActionClient) -> list[Any]:
    job = ExportJob(export_job_id=1, job_status="Completed", files=(ExportFile("https://files.test/export.csv"),),
                    exported_record_count=1)
    return [row async for row in client.iter_export_rows(job)]


SYSTEMS: dict[str, tuple[Callable[[httpx.MockTransport], Any], Call]] = {
    "ea": (lambda t: EveryActionClient("corpusApp", corpus.EA_KEY, base_url="https://ea.test/v4", transport=t,
                                       retry=ONCE),
           lambda c: c.get_person(1)),
    "ea-csv": (lambda t: EveryActionClient("corpusApp", corpus.EA_KEY, base_url="https://ea.test/v4", transport=t,
                                           retry=ONCE),
               _ea_csv),
    "mc": (lambda t: MobileCommonsClient("https://mc.test/api", login="api@example.org", password=corpus.MC_PASSWORD,
                                         transport=t, retry=ONCE),
           lambda c: c.profile("+12025550143")),
    "efficy": (lambda t: EfficyClient("https://efficy.test", api_key=corpus.EFFICY_KEY, transport=t, retry=ONCE),
               lambda c: c.get_contact(1)),
    "efficy-query": (lambda t: EfficyClient("https://efficy.test", api_key=corpus.EFFICY_KEY, transport=t,
                                            retry=ONCE),
                     lambda c: c.run_query(5)),  # the answer read as a stream
    "apsis": (lambda t: ApsisClient("https://apsis.test", client_id="corpus", client_secret=corpus.APSIS_SECRET,
                                    transport=t, retry=ONCE),
              lambda c: c.get_consents("42")),
}
ANSWERS = [("ea", a) for a in corpus.EA_ANSWERS] + [("ea-csv", a) for a in corpus.EA_CSV_ANSWERS] + \
    [("mc", a) for a in corpus.MC_ANSWERS] + [("efficy", a) for a in corpus.EFFICY_ANSWERS] + \
    [("efficy-query", a) for a in corpus.EFFICY_ANSWERS + corpus.EFFICY_QUERY_ANSWERS] + \
    [("apsis", a) for a in corpus.APSIS_ANSWERS]


@pytest.mark.parametrize("system,answer", ANSWERS, ids=[a.id for _, a in ANSWERS])
async def test_upstream_answer(system: str, answer: corpus.Answer) -> None:
    make, call = SYSTEMS[system]
    client = make(_transport(answer))
    if answer.expect == "skipped":
        try:
            assert await call(client) == []
        finally:
            await client.aclose()
        return
    try:
        with pytest.raises(errors.ApiError) as err:
            await call(client)
    finally:
        await client.aclose()
    assert type(err.value).__name__ == answer.expect or isinstance(err.value, getattr(errors, answer.expect)), (
        type(err.value).__name__, str(err.value)[:200])
    assert not leaks(f"{err.value} {err.value!r}", corpus.SECRETS)
