"""The ``efficy_apsis`` integration kind: Efficy Enterprise -> APSIS One, opt-outs flowing back.

Flows: ``realtime`` (webhook queue), ``full_sync`` (on command, checkpointed pages), ``consent_backflow``
(every 15 minutes by default) and ``tags`` (daily at 03:00 by default, and after every full sync).
The rules are in :mod:`.rules`; each flow in its own module; this class wires config, clients and flows.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from datetime import time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import structlog
import trio

from crmsync.clock import WallClock
from crmsync.connectors.apsis import ApsisClient, ConsentKey
from crmsync.connectors.apsis.records import ATTR_EMAIL, CHANNEL_EMAIL, CHANNEL_SMS, TagEncoding
from crmsync.connectors.efficy import EfficyClient, EfficySchema, FieldTypes
from crmsync.daemon.config import IntegrationConfig
from crmsync.daemon.integrations.base import (
    FlowError,
    FullSyncAcknowledge,
    IntegrationContext,
    IntegrationKind,
    SandboxPart,
    WebhookEvent,
)
from crmsync.daemon.integrations.efficy_apsis import consent_backflow, realtime, tags
from crmsync.daemon.integrations.efficy_apsis.config import KIND, EfficyApsisConfig
from crmsync.daemon.integrations.efficy_apsis.full_sync import FullSync
from crmsync.daemon.integrations.efficy_apsis.rules import ConsentRule, SyncSpec
from crmsync.daemon.integrations.registry import register
from crmsync.daemon.runs import RunContext
from crmsync.daemon.schedule import Daily, Interval, Schedule
from crmsync.state import QueuedEvent

log = structlog.get_logger("crmsync.daemon.integrations.efficy_apsis.kind")


def sync_spec(config: EfficyApsisConfig) -> SyncSpec:
    """The config reduced to the plain data the rules take."""
    return SyncSpec(
        email_field=config.efficy.email_field,
        conditions=dict(config.conditions),
        attributes=tuple(config.attributes.items()),
        consents=tuple(ConsentRule(m.profile_id, ConsentKey(m.topic, m.channel_discriminator))
                       for m in config.consents.values()),
        tag_profiles={tag: str(pid) for tag, pid in config.tags.profiles.items()},
        query_tags=frozenset(config.tags.queries),
        created_field=config.efficy.created_field or None,
        attribute_types=config.apsis.resolved_attribute_types(),
        country_field=config.efficy.country_field or None,
        default_region=config.efficy.default_region,
        address_attributes={CHANNEL_EMAIL: ATTR_EMAIL, CHANNEL_SMS: config.apsis.sms_address_attribute},
        merge_email_profiles=config.apsis.merge_email_profiles,
        email_keyspace=config.apsis.email_keyspace,
    )


@register
class EfficyApsisKind(IntegrationKind):
    kind = KIND
    config_model = EfficyApsisConfig
    scheduled_flows = ("consent_backflow", "tags")
    supports_full_sync = True
    supports_webhooks = True
    systems = ("efficy", "apsis")
    client_attributes = {"_efficy": "efficy", "_apsis": "apsis"}  # dry runs wrap these (issue 11)

    def __init__(self, ctx: IntegrationContext, config: IntegrationConfig):
        super().__init__(ctx, config)
        assert isinstance(config, EfficyApsisConfig)
        self.cfg: EfficyApsisConfig = config
        self.spec = sync_spec(config)
        self._efficy: EfficyClient | None = None
        self._apsis: ApsisClient | None = None
        self._full_sync: FullSync | None = None

    # -- schedules and resources -------------------------------------------------------------------------

    def default_schedules(self) -> dict[str, Schedule]:
        return {"consent_backflow": Interval(timedelta(minutes=15)), "tags": Daily(time(3, 0))}

    def build_clients(self) -> tuple[EfficyClient, ApsisClient]:
        e, a = self.cfg.efficy, self.cfg.apsis
        efficy = EfficyClient(
            e.url, api_key=e.api_key.reveal(), customer=e.customer, customer_in_query=e.customer_in_query,
            language=e.language, page_size=self.cfg.full_sync.page_size,
            schema=EfficySchema(contact_table=e.contact_table, profile_detail=e.profile_detail,
                                profile_key_field=e.profile_key_field, profile_table=e.profile_table,
                                profile_link_table=e.profile_link_table,
                                profile_link_changed_field=e.profile_link_changed_field or None),
            field_types=FieldTypes(flags=frozenset({"OPENED"}), overrides=dict(e.field_types)),
            timezone=ZoneInfo(e.timezone), transport=self.ctx.transports.get("efficy"),
            observer=self.ctx.observer, timeout=self.ctx.http_timeout, max_concurrency=e.max_concurrency,
        )
        apsis = ApsisClient(
            a.url, client_id=a.client_id, client_secret=a.client_secret.reveal(), section=a.section,
            keyspace=a.keyspace, clock=self.ctx.clock, transport=self.ctx.transports.get("apsis"),
            observer=self.ctx.observer, timeout=self.ctx.http_timeout,
            # the full sync's per-profile concurrency is reached, not capped by the client
            max_concurrency=max(a.max_concurrency, self.cfg.full_sync.concurrency),
            rate_limit=a.rate_limit, rate_burst=a.rate_burst, max_body_bytes=a.max_body_bytes,
            imports_per_minute=a.imports_per_minute, concurrent_imports=a.concurrent_imports,
            import_poll_interval=a.import_poll_interval.total_seconds(),
            import_poll_first=a.import_poll_first.total_seconds(),
            import_timeout=a.import_timeout.total_seconds(),
            tag_encoding=TagEncoding(a.tag_add_value, a.tag_remove_value),
            consent_source=a.consent_source, consent_report=self.cfg.consent_backflow.report.settings(),
        )
        return efficy, apsis

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        efficy, apsis = self.build_clients()
        self._efficy, self._apsis = efficy, apsis
        try:
            yield
        finally:
            self._efficy = self._apsis = None
            self._full_sync = None
            with trio.CancelScope(shield=True):
                await efficy.aclose()
                await apsis.aclose()

    @property
    def efficy(self) -> EfficyClient:
        if self._efficy is None:
            raise FlowError(f"integration {self.name!r} is not open")
        return self._efficy

    @property
    def apsis(self) -> ApsisClient:
        if self._apsis is None:
            raise FlowError(f"integration {self.name!r} is not open")
        return self._apsis

    # -- flows -------------------------------------------------------------------------------------------

    async def run_flow(self, flow: str, run: RunContext) -> None:
        if flow == "consent_backflow":
            bf = self.cfg.consent_backflow
            await consent_backflow.run_backflow(
                run, efficy=self.efficy, apsis=self.apsis, spec=self.spec, integration=self.name,
                page_size=bf.page_size, concurrency=self.cfg.apsis.max_concurrency, method=bf.method,
                chunk_size=bf.chunk_size)
        elif flow == "tags":
            await self._tags(run)
        else:
            raise FlowError(f"{self.kind} has no flow {flow!r}")

    async def _tags(self, run: RunContext) -> None:
        await tags.run_tags(run, efficy=self.efficy, apsis=self.apsis, queries=dict(self.cfg.tags.queries),
                            profiles=dict(self.cfg.tags.profiles), integration=self.name,
                            concurrency=self.cfg.apsis.max_concurrency)

    def full_sync_worker(self) -> FullSync:
        if self._full_sync is None:
            self._full_sync = FullSync(
                efficy=self.efficy, apsis=self.apsis, spec=self.spec, integration=self.name,
                settings=self.cfg.full_sync.settings(),
                sms_address_attribute=self.cfg.apsis.sms_address_attribute, queries=dict(self.cfg.tags.queries))
        return self._full_sync

    async def full_sync_run(self, position: str | None, run: RunContext,
                            acknowledge: FullSyncAcknowledge) -> bool:
        return await self.full_sync_worker().run(position, run, acknowledge)

    async def full_sync_finished(self, run: RunContext) -> None:
        await self._tags(run)  # the seed's tags run in every full sync

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> list[WebhookEvent]:
        return realtime.parse_body(body)

    async def process_events(self, events: list[QueuedEvent], run: RunContext) -> None:
        await realtime.process(events, run, efficy=self.efficy, apsis=self.apsis, spec=self.spec,
                               integration=self.name)

    # -- reload ------------------------------------------------------------------------------------------

    def config_change_note(self, old: IntegrationConfig) -> str | None:
        if not isinstance(old, EfficyApsisConfig):
            return "the integration kind changed: run a full sync"
        if old.consents != self.cfg.consents:
            return "consent mappings changed: run a full sync to apply them to every profile"
        return None

    # -- sandbox -----------------------------------------------------------------------------------------

    @classmethod
    async def sandbox(cls, *, name: str, clock: WallClock, contacts: int, secrets_dir: Path,
                      nursery: trio.Nursery) -> SandboxPart | None:
        from crmsync.daemon.integrations.efficy_apsis.sandbox import build_sandbox

        return await build_sandbox(name=name, clock=clock, contacts=contacts, secrets_dir=secrets_dir,
                                   nursery=nursery)


__all__ = ["EfficyApsisKind", "sync_spec"]

