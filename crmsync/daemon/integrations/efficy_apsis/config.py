"""The ``[integrations.NAME]`` section of an ``efficy_apsis`` integration: the seed's UI tabs as TOML.

* ``[efficy]`` / ``[apsis]``: connections (secrets only as ``*_file`` / ``*_env``);
* ``conditions``: the Sync Conditions tab (field = value, ANDed);
* ``[attributes]``: the Field Mapping tab (email and K_CONTACT are mapped automatically and may not be
  remapped);
* ``[consents.NAME]``: the Consent Mappings tab (one CRM Profile -> one topic on ONE channel);
* ``[tags]``: the Queries tab (tag -> saved query, tag -> CRM Profile);
* ``[full_sync]``: paging and the per-profile / bulk-import threshold.

Every setting that rests on an unverified API fact ([U] in the research) is a key here, listed in
``docs/efficy_apsis.md``. Validation errors carry their key path (``consents.news.channel``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from crmsync.connectors.apsis.imports import TagImportSettings
from crmsync.connectors.apsis.records import (
    ATTR_CRMID,
    ATTR_EMAIL,
    ATTR_MOBILE,
    CHANNEL_EMAIL,
    CHANNEL_SMS,
    KEYSPACE_CRM_ID,
    KEYSPACE_EMAIL,
    MAX_BODY_BYTES,
    MAX_IMPORT_FILE_BYTES,
    SECTION_DEFAULT,
    ConsentReportColumns,
    ConsentReportSettings,
)
from crmsync.daemon.config import ApiUrl, Duration, IntegrationConfig
from crmsync.daemon.integrations.efficy_apsis.full_sync_settings import FullSyncSettings
from crmsync.daemon.secrets import SecretsModel, StrictModel

KIND = "efficy_apsis"
CHANNELS: dict[str, str] = {"email": CHANNEL_EMAIL, "sms": CHANNEL_SMS}
CONTACT_ID_FIELD = "K_CONTACT"
FieldTypeName = Literal["str", "int", "float", "flag", "datetime"]
Scalar = str | int | float | bool


class EfficySettings(SecretsModel):
    """How to reach Efficy Enterprise's JSON-RPC endpoint (``{url}/crm/json``)."""

    secrets = {"api_key": True}

    url: ApiUrl
    api_key: Any = None
    customer: str | None = None
    customer_in_query: bool = False  # ?customer= (Pauwris SDK) instead of X-Efficy-Customer (n8n node)
    language: str | None = None
    timezone: str = "UTC"  # [U] zone of Efficy's naive timestamps (D_CHANGE)
    email_field: str = "EMAIL1"  # [U] conventional column; auto-mapped to the APSIS email attribute
    # [U] schema names no public source confirms (research §1.5/§1.6); correct them per deployment
    contact_table: str = "CONTACTS"
    profile_detail: str = "Prof"
    profile_key_field: str = "K_PROFILE"
    profile_table: str = "PROFILE"
    profile_link_table: str = "CONT_PROF"
    # [U] the link's own change-time column on the Cont-Prof relation (e.g. "D_CHANGE"); unset: crmsync
    # judges a link's age only from what its own reads saw
    profile_link_changed_field: str | None = None
    # [U] the contact's creation-time column; no link is older than its contact ("" to not use it)
    created_field: str = "D_CREATE"
    # [U] the contact's country column (ISO 3166 alpha-2): the region national phone numbers are read in
    country_field: str = "COUNTRY"
    default_region: str | None = None  # region for contacts without a usable country ("BE"); none: no guess

    @field_validator("default_region")
    @classmethod
    def _region(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        import phonenumbers

        if v.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{v!r} is not an ISO 3166 alpha-2 region phonenumbers knows (e.g. BE, SE)")
        return v.upper()
    # column -> type, for custom columns used in conditions or mappings (only OPENED is a known flag)
    field_types: dict[str, FieldTypeName] = Field(default_factory=dict)
    max_concurrency: int = Field(default=4, ge=1, le=32)

    @field_validator("email_field")
    @classmethod
    def _upper(cls, v: str) -> str:
        return v.upper()


class ApsisSettings(SecretsModel):
    """How to reach APSIS One (OAuth2 client credentials)."""

    secrets = {"client_secret": True}

    url: ApiUrl = "https://api.apsis.one"
    client_id: str
    client_secret: Any = None
    section: str = SECTION_DEFAULT
    keyspace: str = KEYSPACE_CRM_ID
    # requests/s of this integration's one token bucket, shared by all its flows; the account allows 100
    # across all keys (integrations on the same account must split it)
    rate_limit: float = Field(default=92.0, gt=0)
    rate_burst: int = Field(default=4, ge=1)  # bucket size: rate + burst stays within 100 in any second
    max_concurrency: int = Field(default=4, ge=1, le=32)
    max_body_bytes: int = Field(default=MAX_BODY_BYTES, ge=1000)  # [U] "100 kB" read as 100 000 bytes
    tag_add_value: bool = True  # [U] tag merge-patch value that adds a tag
    tag_remove_value: bool | None = False  # [U] value that removes one (false or null)
    expired_token_status: Literal[401, 403] = 401  # informational; the client refreshes on both
    imports_per_minute: int = Field(default=10, ge=1)
    concurrent_imports: int = Field(default=3, ge=1)
    import_poll_interval: Duration = timedelta(seconds=5)  # [U] how often an import's status is polled
    import_poll_first: Duration = timedelta(seconds=0.5)  # first poll after the upload; doubles up to the above
    import_timeout: Duration = timedelta(hours=24)  # [U] when a stuck import counts as failed
    sms_address_attribute: str = ATTR_MOBILE  # the attribute holding the SMS address
    consent_source: str | None = None  # "source" on consent writes (APSIS default: "One API")
    # [U] attribute discriminator -> "phone" | "email" | "string": values of phone/email attributes are made
    # valid (E.164 numbers) or left out before sending. Defaults: the mobile and SMS address attributes are
    # phones, the email attribute an email; "string" sends a value untouched.
    attribute_types: dict[str, Literal["phone", "email", "string"]] = Field(default_factory=dict)
    # on a contact's first sync, merge its profile with the email-keyspace profile of the same address
    # (a form signup; P9), so one person is one marketing profile
    merge_email_profiles: bool = True
    email_keyspace: str = KEYSPACE_EMAIL  # where form signups' profiles live

    def resolved_attribute_types(self) -> dict[str, str]:
        types: dict[str, str] = {ATTR_MOBILE: "phone", self.sms_address_attribute: "phone", ATTR_EMAIL: "email"}
        types.update(self.attribute_types)
        return types


class ConsentMapping(StrictModel):
    """One CRM Profile to one APSIS subscription (topic) on one channel."""

    profile: int = Field(ge=1)
    topic: str
    channel: str

    @field_validator("channel", mode="before")
    @classmethod
    def _channel(cls, v: Any) -> Any:
        if isinstance(v, list | tuple):
            raise ValueError("one channel per mapping (email or sms); add a second mapping for the other")
        if v in CHANNELS.values():
            return next(k for k, d in CHANNELS.items() if d == v)
        if v not in CHANNELS:
            raise ValueError("must be 'email' or 'sms' (both channels need two mappings)")
        return v

    @property
    def channel_discriminator(self) -> str:
        return CHANNELS[self.channel]

    @property
    def profile_id(self) -> str:
        return str(self.profile)


class TagsConfig(StrictModel):
    """Tag discriminator -> Efficy saved query (K_QUERY) / CRM Profile (K_PROFILE)."""

    queries: dict[str, int] = Field(default_factory=dict)
    profiles: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _disjoint(self) -> TagsConfig:
        both = sorted(set(self.queries) & set(self.profiles))
        if both:
            raise ValueError(f"tag {both[0]!r} is set from both a query and a profile; pick one")
        return self

    def all_tags(self) -> frozenset[str]:
        return frozenset(self.queries) | frozenset(self.profiles)


class FullSyncConfig(StrictModel):
    page_size: int = Field(default=500, ge=1, le=10000)
    # Use APSIS bulk imports for full syncs of at least this many contacts; 0 = never (per-profile upserts).
    import_threshold: int = Field(default=0, ge=0)
    # how many profiles are upserted at the same time on the per-profile path (the APSIS client's
    # concurrency is raised to at least this)
    concurrency: int = Field(default=16, ge=1, le=64)
    read_ahead: int = Field(default=16, ge=1, le=64)  # Efficy pages read ahead of the writes
    # [U] Efficy sessions reading key ranges in parallel (Efficy publishes no limit; each is a server session)
    read_sessions: int = Field(default=1, ge=1, le=16)
    # contacts per import batch (one file per consent type); 8M contacts = 160 batches, 2 imports each, well
    # within 10 imports a minute over a 1.5 h read, and imports run while later pages are read
    import_rows: int = Field(default=50_000, ge=1)
    # the contacts left once they fit in one batch go in this many batches, each half of what is left, so
    # that the last (which nothing overlaps) is small; 1 = no such split
    import_tail_batches: int = Field(default=3, ge=1, le=8)
    import_file_bytes: int = Field(default=MAX_IMPORT_FILE_BYTES, ge=10_000, le=MAX_IMPORT_FILE_BYTES)
    batches_in_flight: int = Field(default=2, ge=1, le=16)  # import batches written before acknowledged
    import_spool_bytes: int = Field(default=1_000_000, ge=0)  # import file bytes kept in memory, then disk
    # [U] tags in import files: the mapping key and cell values are not documented (false: per-profile patches)
    import_tags: bool = True
    import_tag_mapping_key: str = "tag_mappings"
    import_tag_field: str = "tag_discriminator"
    # [U] "clear_existing_attributes": read as "empty cells clear the attribute"; off = empty cells leave the
    # attribute alone and crmsync clears attributes it set earlier with a per-profile patch
    import_clear_existing_attributes: bool = False

    def settings(self) -> FullSyncSettings:
        return FullSyncSettings(
            page_size=self.page_size, import_threshold=self.import_threshold, concurrency=self.concurrency,
            read_ahead=self.read_ahead, read_sessions=self.read_sessions, import_rows=self.import_rows,
            import_tail_batches=self.import_tail_batches, import_file_bytes=self.import_file_bytes,
            batches_in_flight=self.batches_in_flight, spool_bytes=self.import_spool_bytes,
            tags=TagImportSettings(enabled=self.import_tags, mapping_key=self.import_tag_mapping_key,
                                   tag_field=self.import_tag_field),
            clear_existing_attributes=self.import_clear_existing_attributes)


_COLUMNS = ConsentReportColumns()
_REPORT = ConsentReportSettings()


class ReportColumnsConfig(StrictModel):
    """[U] CSV header names of APSIS's consent report (no public source shows them)."""

    profile_key: str = _COLUMNS.profile_key
    topic: str = _COLUMNS.topic
    channel: str = _COLUMNS.channel  # optional in the file: missing -> the requested channel
    type: str = _COLUMNS.type
    modified_at: str = _COLUMNS.modified_at  # optional in the file
    keyspace: str = _COLUMNS.keyspace  # optional in the file: present -> other keyspaces' rows skipped


class ConsentReportConfig(StrictModel):
    """How the backflow's consent report (APSIS E1) is requested and read; the body shape, the answer's
    poll URL member and the CSV columns are [U] (see ``ConsentReportSettings``)."""

    channel_form: Literal["discriminator", "list"] = _REPORT.channel_form  # [U]
    channel_field_name: str = _REPORT.channel_field_name  # [U] field_name when channel_form = "list"
    keyspace_field: str | None = _REPORT.keyspace_field  # [U] "" leaves the keyspace out of the body
    extra_body: dict[str, Any] = Field(default_factory=dict)  # [U] further body members
    poll_url_fields: list[str] = Field(default_factory=lambda: list(_REPORT.poll_url_fields))  # [U]
    poll_auth: Literal["same-host", "always", "never"] = _REPORT.poll_auth  # [U]
    poll_interval: Duration = timedelta(seconds=_REPORT.poll_interval)
    timeout: Duration = timedelta(seconds=_REPORT.timeout)
    columns: ReportColumnsConfig = Field(default_factory=ReportColumnsConfig)

    def settings(self) -> ConsentReportSettings:
        c = self.columns
        return ConsentReportSettings(
            channel_form=self.channel_form, channel_field_name=self.channel_field_name,
            keyspace_field=self.keyspace_field or None, extra_body=dict(self.extra_body),
            poll_url_fields=tuple(self.poll_url_fields), poll_auth=self.poll_auth,
            poll_interval=self.poll_interval.total_seconds(), timeout=self.timeout.total_seconds(),
            columns=ConsentReportColumns(profile_key=c.profile_key, topic=c.topic, channel=c.channel,
                                         type=c.type, modified_at=c.modified_at, keyspace=c.keyspace))


class BackflowConfig(StrictModel):
    """``[consent_backflow]``: ``method = "report"`` reads one APSIS consent report per channel (O(1)
    requests per run); ``"poll"`` reads every linked profile's consents (one request per profile), for
    accounts where the report endpoint is unavailable."""

    method: Literal["report", "poll"] = "report"
    page_size: int = Field(default=500, ge=1)  # poll: linked profiles read per store transaction
    chunk_size: int = Field(default=500, ge=1, le=10000)  # report: opt-out rows handled per transaction
    report: ConsentReportConfig = Field(default_factory=ConsentReportConfig)


ConsentBackflowConfig = BackflowConfig


class EfficyApsisConfig(IntegrationConfig):
    efficy: EfficySettings
    apsis: ApsisSettings
    conditions: dict[str, Scalar] = Field(default_factory=dict)
    # Efficy column -> APSIS attribute discriminator (email and K_CONTACT are mapped automatically)
    attributes: dict[str, str] = Field(default_factory=dict)
    # named mappings: [consents.NAME] profile = K_PROFILE, topic = "...", channel = "email" | "sms"
    consents: dict[str, ConsentMapping] = Field(default_factory=dict)
    tags: TagsConfig = Field(default_factory=TagsConfig)
    full_sync: FullSyncConfig = Field(default_factory=FullSyncConfig)
    consent_backflow: BackflowConfig = Field(default_factory=BackflowConfig)

    @field_validator("conditions")
    @classmethod
    def _conditions(cls, v: dict[str, Scalar]) -> dict[str, Scalar]:
        upper: dict[str, Scalar] = {}
        for name, value in v.items():
            if name.upper() in upper:
                raise ValueError(f"condition on {name.upper()} given twice")
            upper[name.upper()] = value
        return upper

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, v: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        by_attribute: dict[str, str] = {}
        for column, attribute in v.items():
            name = column.strip().upper()
            if not name:
                raise ValueError("an attribute mapping needs an Efficy column name")
            if not isinstance(attribute, str) or "." not in attribute:
                raise ValueError(f"{column}: must be an APSIS attribute discriminator like "
                                 "com.apsis1.attributes.firstname")
            if attribute in (ATTR_EMAIL, ATTR_CRMID) or name == CONTACT_ID_FIELD:
                raise ValueError(f"{column}: email and ID are mapped automatically and cannot be remapped")
            if name in out:
                raise ValueError(f"{column}: column {name} is mapped twice")
            if attribute in by_attribute:
                raise ValueError(f"{column}: attribute {attribute} is already mapped from {by_attribute[attribute]}")
            out[name] = attribute
            by_attribute[attribute] = column
        return out

    @field_validator("consents")
    @classmethod
    def _consents(cls, v: dict[str, ConsentMapping]) -> dict[str, ConsentMapping]:
        seen: dict[tuple[str, str], str] = {}
        for name, m in v.items():
            slot = (m.topic, m.channel)
            if slot in seen:
                raise ValueError(f"{name}: topic {m.topic} on {m.channel} is already mapped by {seen[slot]}")
            seen[slot] = name
        return v

    @model_validator(mode="after")
    def _cross(self) -> EfficyApsisConfig:
        if self.efficy.email_field in self.attributes:
            raise ValueError(f"attributes.{self.efficy.email_field}: the email field is mapped automatically")
        if any(m.channel == "sms" for m in self.consents.values()) and \
                self.apsis.sms_address_attribute not in self.attributes.values():
            raise ValueError(f"consents: an sms mapping needs an attribute mapping to "
                             f"{self.apsis.sms_address_attribute} (the SMS address)")
        return self
