"""An in-process efficy_apsis world for end-to-end tests: both simulators, the supervisor, the HTTP app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from crmsync.clock import WallClock
from crmsync.connectors.apsis import ApsisSimulator, ConsentKey
from crmsync.connectors.apsis.records import ATTR_FIRSTNAME, ATTR_LASTNAME, ATTR_MOBILE, CHANNEL_EMAIL, CHANNEL_SMS
from crmsync.connectors.efficy.simulator import EfficySimulator, EfficyWebhookSender
from crmsync.daemon.config import Config, config_from_mapping
from crmsync.daemon.http import HttpApp
from crmsync.daemon.metrics import Metrics
from crmsync.daemon.supervisor import Supervisor
from crmsync.state import Database
from crmsync.state import queries as q

NAME = "ea"
NEWS = ConsentKey("usercreated.topics.newsletter-a1b2c3", CHANNEL_EMAIL)
NEWS_SMS = ConsentKey("usercreated.topics.newsletter-a1b2c3", CHANNEL_SMS)
OFFERS = ConsentKey("usercreated.topics.offers-d4e5f6", CHANNEL_EMAIL)
VIP = "usercreated.tags.vip-ab12cd"
PROSPECT = "usercreated.tags.prospect-ef34gh"
HOOK_SECRET = "efficy-hook-secret"
COUNTRY = "usercreated.attributes.country-abc123"


@dataclass
class World:
    efficy: EfficySimulator
    apsis: ApsisSimulator
    supervisor: Supervisor
    db: Database
    http: httpx.AsyncClient  # talks to the daemon's HttpApp
    news_profile: int
    offers_profile: int
    vip_query: int

    def sender(self, form: str = "contract") -> EfficyWebhookSender:
        return EfficyWebhookSender(self.efficy, f"http://daemon.test/webhooks/{NAME}", http=self.http,
                                   form=form, secret=HOOK_SECRET if form == "contract" else None,  # type: ignore[arg-type]
                                   interval=1.0, headers={"X-Efficy-Token": HOOK_SECRET} if form == "native" else None)

    async def wait_full_sync(self, limit: float = 3600) -> dict[str, Any]:
        with trio.fail_after(limit):
            while True:
                await trio.sleep(1)
                fs = await self.db.tx(q.get_full_sync, NAME)
                if fs is not None and fs["state"] != "running":
                    return fs

    async def wait_queue_empty(self, limit: float = 600) -> None:
        with trio.fail_after(limit):
            while True:  # polling the store is what an operator's status does too
                if await self.db.tx(q.queue_depth, NAME) == 0:
                    break
                await trio.sleep(1)
            await trio.sleep(1)

    async def last_run(self, flow: str) -> dict[str, Any]:
        run = await self.db.tx(q.last_run, NAME, flow)
        assert run is not None
        return run

    async def rows(self, run_id: int) -> list[dict[str, Any]]:
        return await self.db.tx(q.report_rows, run_id, 100000)


def make_config(tmp_path: Path, *, form: str = "contract", **overrides: Any) -> Config:
    (tmp_path / "efficy-key").write_text("efficy-test-key")
    (tmp_path / "apsis-secret").write_text("apsis-test-secret")
    (tmp_path / "hook").write_text(HOOK_SECRET)
    webhook = ({"header": "X-Justin-Signature", "prefix": "sha256=", "secret_file": str(tmp_path / "hook")}
               if form == "contract" else
               {"mode": "token", "header": "X-Efficy-Token", "secret_file": str(tmp_path / "hook")})
    section: dict[str, Any] = {
        "kind": "efficy_apsis",
        "efficy": {"url": "http://efficy.test", "api_key_file": str(tmp_path / "efficy-key"),
                   "field_types": {"ROBINSON": "flag"}},
        "apsis": {"url": "http://apsis.test", "client_id": "crmsync",
                  "client_secret_file": str(tmp_path / "apsis-secret"), "import_poll_interval": "1s"},
        "conditions": {"OPENED": 1, "ROBINSON": 0},
        "attributes": {"FIRSTNAME": ATTR_FIRSTNAME, "NAME": ATTR_LASTNAME, "MOBILE": ATTR_MOBILE,
                       "COUNTRY": COUNTRY},
        "consents": {"news": {"profile": 1, "topic": NEWS.topic, "channel": "email"},
                     "news-sms": {"profile": 1, "topic": NEWS_SMS.topic, "channel": "sms"},
                     "offers": {"profile": 2, "topic": OFFERS.topic, "channel": "email"}},
        "tags": {"queries": {VIP: 99990001}, "profiles": {PROSPECT: 2}},
        "full_sync": {"page_size": 10},
        "webhook": webhook,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(section.get(key), dict):
            section[key] = {**section[key], **value}
        else:
            section[key] = value
    return config_from_mapping({
        "daemon": {"state_dir": str(tmp_path), "control_socket": str(tmp_path / "control.sock"),
                   "timezone": "UTC"},
        "http": {"webhook_listen": "127.0.0.1:0"},
        "integrations": {NAME: section},
    })


def seed(efficy: EfficySimulator, n: int) -> list[int]:
    """``n`` contacts: every 3rd holds the newsletter (profile 1), every 4th the offers (profile 2); the
    5th fails ROBINSON and the 7th is closed (OPENED = 0)."""
    ids = []
    for i in range(n):
        profiles = [p for p, every in ((1, 3), (2, 4)) if i % every == 0]
        ids.append(efficy.add_contact(
            name=f"Last{i}", first_name=f"First{i}", email=f"p{i}@example.com", opened=(i % 7 != 6),
            profiles=profiles, MOBILE=f"+3247000{i:04d}", COUNTRY="BE", ROBINSON=(i % 5 == 4)))
    efficy.drain_outbox()
    return ids


@asynccontextmanager
async def world(tmp_path: Path, clock: WallClock, *, contacts: int = 0, config: Config | None = None,
                db_path: Path | None = None, efficy: EfficySimulator | None = None,
                apsis: ApsisSimulator | None = None, activate: bool = True) -> AsyncIterator[World]:
    efficy = efficy or EfficySimulator(clock, api_key="efficy-test-key")
    apsis = apsis or ApsisSimulator(clock, client_id="crmsync", client_secret="apsis-test-secret",
                                    public_url="http://apsis.test")
    if not efficy.profiles():
        efficy.add_profile("Newsletter", 1)
        efficy.add_profile("Offers", 2)
        seed(efficy, contacts)
        efficy.add_query("VIP", predicate=lambda c: int(c["K_CONTACT"]) % 2 == 0, query_id=99990001)
    config = config or make_config(tmp_path)
    db = await Database.open(db_path or tmp_path / "crmsync.db", inline=True, durable=False)
    supervisor = Supervisor(config, db, Metrics(), clock, transports={
        "efficy": httpx.ASGITransport(app=efficy), "apsis": httpx.ASGITransport(app=apsis)})  # type: ignore[arg-type]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            app = HttpApp(supervisor, supervisor.metrics, max_body=64 * 1024)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://daemon.test") as http:  # type: ignore[arg-type]
                if activate:
                    await supervisor.activate(NAME)
                yield World(efficy, apsis, supervisor, db, http, 1, 2, 99990001)
            nursery.cancel_scope.cancel()
    finally:
        await db.aclose()
