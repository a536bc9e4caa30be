"""``crmsync sandbox`` for ``efficy_apsis``: both simulators on loopback, demo data, and live changes.

Demo data: the Efficy simulator's demo set (CRM Profiles "Newsletter" and "SMS offers", a "VIP" saved
query), a ROBINSON flag on every contact (some set, so the sync conditions ``OPENED = 1`` and
``ROBINSON = 0`` skip a few), and APSIS profiles that already opted out of the newsletter with the
unsubscribe link (they flow back to Efficy). While it runs, Efficy pushes signed generic-connector webhooks
and a small random change happens every few seconds; now and then someone "clicks unsubscribe" in APSIS.
"""

from __future__ import annotations

import random
import secrets
from pathlib import Path
from typing import Any

import httpx
import structlog
import trio

from crmsync.clock import WallClock
from crmsync.connectors.apsis import ApsisSimulator, ConsentKey
from crmsync.connectors.apsis.records import ATTR_FIRSTNAME, ATTR_LASTNAME, ATTR_MOBILE, CHANNEL_EMAIL, CHANNEL_SMS
from crmsync.connectors.efficy.simulator import EfficySimulator, EfficyWebhookSender
from crmsync.connectors.simkit import serve_app
from crmsync.daemon.integrations.base import SandboxPart

log = structlog.get_logger("crmsync.daemon.integrations.efficy_apsis.sandbox")

NEWSLETTER_TOPIC = "usercreated.topics.newsletter-a1b2c3"
OFFERS_TOPIC = "usercreated.topics.offers-d4e5f6"
VIP_TAG = "usercreated.tags.vip-ab12cd"
SMS_TAG = "usercreated.tags.prospect-ef34gh"
CHANGE_EVERY = 4.0
SANDBOX_LATENCY = 0.005  # seconds per simulated API call


def _secret_file(secrets_dir: Path, name: str, value: str) -> str:
    path = secrets_dir / name
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(0o600)
    return str(path)


async def build_sandbox(*, name: str, clock: WallClock, contacts: int, secrets_dir: Path,
                        nursery: trio.Nursery) -> SandboxPart:
    rng = random.Random(4)
    api_key, client_secret, hook_secret = (secrets.token_urlsafe(24) for _ in range(3))
    # a modest per-call latency, as a real API has; APSIS's limits (100 requests/s, 10 imports a minute, 3
    # unfinished) hold as in production
    efficy = EfficySimulator(clock, api_key=api_key, latency=SANDBOX_LATENCY)
    ids = efficy.seed_demo(contacts)
    all_ids = [int(c["K_CONTACT"]) for c in efficy.contacts()]
    for cid in all_ids:
        efficy.update_contact(cid, ROBINSON=rng.random() < 0.08)
    efficy.drain_outbox()
    # slow Efficy down for the first requests so the first full sync shows its progress for a moment
    efficy.faults.slow(0.25, times=12)
    apsis = ApsisSimulator(clock, client_id="sandbox", client_secret=client_secret, latency=SANDBOX_LATENCY,
                           import_rows_per_second=5000.0, report_polls_until_ready=1)
    efficy_url = await nursery.start(serve_app, efficy)
    apsis_url = await nursery.start(serve_app, apsis)
    apsis.public_url = apsis_url
    # a few people unsubscribed from the newsletter in APSIS before crmsync ran: their opt-out must stand
    newsletter = ConsentKey(NEWSLETTER_TOPIC, CHANNEL_EMAIL)
    holders = [c["K_CONTACT"] for c in efficy.contacts() if ids["newsletter_profile"] in c["profile_ids"]]
    pre_unsubscribed = holders[:: max(1, len(holders) // 5)][:5]
    for cid in pre_unsubscribed:
        apsis.add_profile(str(cid), consents={newsletter: "opt-out"})

    config: dict[str, Any] = {
        "kind": "efficy_apsis",
        "notes": "sandbox: Efficy Enterprise and APSIS One simulators on loopback",
        "efficy": {"url": efficy_url, "api_key_file": _secret_file(secrets_dir, "efficy-api-key", api_key),
                   "field_types": {"ROBINSON": "flag"}},
        "apsis": {"url": apsis_url, "client_id": "sandbox",
                  "client_secret_file": _secret_file(secrets_dir, "apsis-client-secret", client_secret),
                  "import_poll_first": "0.2s", "import_poll_interval": "0.5s"},
        "conditions": {"OPENED": 1, "ROBINSON": 0},
        "attributes": {"FIRSTNAME": ATTR_FIRSTNAME, "NAME": ATTR_LASTNAME, "MOBILE": ATTR_MOBILE,
                       "COUNTRY": "usercreated.attributes.country-abc123"},
        "consents": {
            "newsletter": {"profile": ids["newsletter_profile"], "topic": NEWSLETTER_TOPIC, "channel": "email"},
            "sms-offers": {"profile": ids["sms_profile"], "topic": OFFERS_TOPIC, "channel": "sms"},
        },
        "tags": {"queries": {VIP_TAG: ids["vip_query"]}, "profiles": {SMS_TAG: ids["sms_profile"]}},
        # the default demo data (200 contacts) takes the bulk-import path; --contacts below 100 shows the
        # per-profile path
        "full_sync": {"page_size": 20, "import_threshold": 100},
        "consent_backflow": {"report": {"poll_interval": "0.5s"}},
        "schedules": {"consent_backflow": {"every": "30s"}},
        "webhook": {"header": "X-Justin-Signature", "prefix": "sha256=",
                    "secret_file": _secret_file(secrets_dir, "efficy-webhook-secret", hook_secret)},
    }

    async def after_start(webhook_url: str) -> None:
        async with httpx.AsyncClient(timeout=10.0) as http, trio.open_nursery() as inner:
            sender = EfficyWebhookSender(efficy, webhook_url, http=http, form="contract", secret=hook_secret,
                                         interval=5.0)
            inner.start_soon(sender.run)
            inner.start_soon(_random_changes, efficy, apsis, ids, rng)

    return SandboxPart(
        config=config,
        kickoff=["full_sync"],
        after_start=after_start,
        description=[
            f"Efficy simulator {efficy_url} ({len(all_ids)} contacts), APSIS simulator {apsis_url}",
            "conditions OPENED = 1 and ROBINSON = 0 skip some contacts (see the report's skipped reasons)",
            f"{len(pre_unsubscribed)} contacts unsubscribed in APSIS beforehand: their opt-out stands and "
            "flows back to Efficy (consent_backflow, every 30 s here)",
            "Efficy pushes signed webhooks every 5 s; a random contact changes every few seconds",
        ],
    )


async def _random_changes(efficy: EfficySimulator, apsis: ApsisSimulator, ids: dict[str, int],
                          rng: random.Random) -> None:
    """Keep the sandbox alive: edit names, toggle CRM Profiles, and sometimes unsubscribe someone in APSIS."""
    first_names = ["Alice", "Bram", "Chloé", "Daan", "Elise", "Finn", "Hanne", "Jules"]
    newsletter = ConsentKey(NEWSLETTER_TOPIC, CHANNEL_EMAIL)
    while True:
        await trio.sleep(CHANGE_EVERY)
        try:
            contacts = efficy.contacts()
            if not contacts:
                continue
            c = rng.choice(contacts)
            cid = int(c["K_CONTACT"])
            roll = rng.random()
            if roll < 0.5:
                efficy.update_contact(cid, first_name=rng.choice(first_names))
            elif roll < 0.8:
                pid = rng.choice([ids["newsletter_profile"], ids["sms_profile"]])
                if pid in c["profile_ids"]:
                    efficy.remove_profile_from_contact(cid, pid)
                else:
                    efficy.add_profile_to_contact(cid, pid)
            else:
                subscribed = [p.key for p in apsis.profiles() if p.consents.get(newsletter) == "opt-in"]
                if subscribed:
                    apsis.opt_out(rng.choice(subscribed), NEWSLETTER_TOPIC, CHANNEL_EMAIL)
        except Exception:  # a demo helper must never take the sandbox down
            log.exception("sandbox_change_failed")


__all__ = ["CHANNEL_SMS", "build_sandbox"]
