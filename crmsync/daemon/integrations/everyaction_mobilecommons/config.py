"""The ``[integrations.NAME]`` section of kind ``everyaction_mobilecommons``: the seed's configuration form.

Form field -> key: Login -> ``everyaction.application_name``; Password -> ``everyaction.api_key_file`` (or
``_env``); host name for API requests -> ``everyaction.host``; web opt-in path -> ``default_opt_in_path_id``;
Liberal sync On/Off -> ``liberal_sync``; notes -> ``notes``. Field mappings (the "Edit Field Mappings" table)
-> ``[...field_mappings.FIELD]`` with ``api_field`` and ``required``.
"""

from __future__ import annotations

from datetime import time, timedelta
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from crmsync.daemon.config import ApiUrl, ClockTime, Duration, IntegrationConfig
from crmsync.daemon.integrations.everyaction_mobilecommons import rules
from crmsync.daemon.secrets import Secret, SecretsModel, StrictModel

EA_MAX_LOOKBACK = timedelta(days=90)

#: ``everyaction.export_columns`` keys -> the ContactChange attribute each column fills.
EXPORT_COLUMN_FIELDS: dict[str, str] = {
    "van_id": "van_id", "first_name": "first_name", "last_name": "last_name", "phone": "phone",
    "opt_in_status": "phone_opt_in", "date_created": "date_created", "email": "email",
    "street_address": "address_line1", "city": "city", "state": "state", "zip_code": "zip",
}
#: The confirmed Contacts export column names (research A5; issue 7, item 11): requested by default.
DEFAULT_EXPORT_COLUMNS: dict[str, str] = {
    "van_id": "VanID", "first_name": "FirstName", "last_name": "LastName", "phone": "Phone",
    "opt_in_status": "PhoneOptInStatus", "date_created": "DateCreated",
}


class FieldMapping(StrictModel):
    """One row of the field-mapping table: the EveryAction API field name and the Required? checkbox."""

    field: ClassVar[str] = ""

    api_field: str | None = None  # None: the default API name for this field
    required: bool = False

    @field_validator("api_field")
    @classmethod
    def _known_api_field(cls, v: str | None) -> str | None:
        allowed = rules.API_FIELDS[cls.field]
        if v is not None and v not in allowed:
            raise ValueError(f"EveryAction has no API field {v!r} for {cls.field}; the data sync would fail "
                             f"(use {' or '.join(allowed)})")
        return v

    @field_validator("required")
    @classmethod
    def _caution(cls, v: bool) -> bool:
        if v and cls.field in rules.NEVER_REQUIRED:
            raise ValueError(rules.NEVER_REQUIRED[cls.field])
        return v


# One class per field, so that a refusal carries its key path (field_mappings.phone.required: ...).
class OptInStatusMapping(FieldMapping):
    field = "opt_in_status"


class PhoneMapping(FieldMapping):
    field = "phone"


class EmailMapping(FieldMapping):
    field = "email"


class FirstNameMapping(FieldMapping):
    field = "first_name"


class LastNameMapping(FieldMapping):
    field = "last_name"


class StreetAddressMapping(FieldMapping):
    field = "street_address"


class StreetAddress2Mapping(FieldMapping):
    field = "street_address_2"


class CityMapping(FieldMapping):
    field = "city"


class StateMapping(FieldMapping):
    field = "state"


class ZipCodeMapping(FieldMapping):
    field = "zip_code"


class CountryMapping(FieldMapping):
    field = "country"


class IdentifierMapping(FieldMapping):
    field = "identifier"


class FieldMappings(StrictModel):
    """The whole table; a field left out keeps its default (default API name, not required)."""

    opt_in_status: OptInStatusMapping = Field(default_factory=OptInStatusMapping)
    phone: PhoneMapping = Field(default_factory=PhoneMapping)
    email: EmailMapping = Field(default_factory=EmailMapping)
    first_name: FirstNameMapping = Field(default_factory=FirstNameMapping)
    last_name: LastNameMapping = Field(default_factory=LastNameMapping)
    street_address: StreetAddressMapping = Field(default_factory=StreetAddressMapping)
    street_address_2: StreetAddress2Mapping = Field(default_factory=StreetAddress2Mapping)
    city: CityMapping = Field(default_factory=CityMapping)
    state: StateMapping = Field(default_factory=StateMapping)
    zip_code: ZipCodeMapping = Field(default_factory=ZipCodeMapping)
    country: CountryMapping = Field(default_factory=CountryMapping)
    identifier: IdentifierMapping = Field(default_factory=IdentifierMapping)

    @model_validator(mode="before")
    @classmethod
    def _standard_only(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [k for k in data if k not in rules.FIELDS]
            if unknown:
                raise ValueError(
                    f"unknown field {', '.join(map(repr, unknown))}: only the standard fields can be mapped "
                    f"({', '.join(rules.FIELDS)}); custom fields are never synced")
        return data

    def required_fields(self) -> frozenset[str]:
        return frozenset(f for f in rules.FIELDS if getattr(self, f).required)

    def api_field(self, name: str) -> str:
        return getattr(self, name).api_field or rules.API_FIELDS[name][0]


class EveryActionSettings(SecretsModel):
    """The EveryAction login: API user (application name) and its password / API key, and the API host."""

    secrets = {"api_key": True}

    application_name: str = Field(min_length=1)
    api_key: Any = None
    host: ApiUrl = "https://api.securevan.com/v4"
    db_mode: Literal[0, 1] = 1
    # Unverified API facts (research A4, A5), kept as settings:
    identifier_type: str = "MobileCommonsID"  # VAN external-id type that receives the Mobile Commons id
    exclude_changes_from_self: bool = True  # our own writes do not echo back in the nightly export
    export_poll_interval: Duration = timedelta(seconds=10)
    export_timeout: Duration = timedelta(minutes=20)
    #: Contacts export columns by field, merged over DEFAULT_EXPORT_COLUMNS; only those names are confirmed
    export_columns: dict[str, str] = Field(default_factory=dict)

    @field_validator("export_columns")
    @classmethod
    def _columns(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(EXPORT_COLUMN_FIELDS))
        if unknown:
            raise ValueError(f"unknown field {', '.join(map(repr, unknown))} (known: "
                             f"{', '.join(EXPORT_COLUMN_FIELDS)})")
        if any(not str(c).strip() for c in v.values()):
            raise ValueError("a column name must not be empty")
        return {k: str(c).strip() for k, c in v.items()}

    def contact_columns(self) -> dict[str, str]:
        """ContactChange attribute -> column name, for the EveryAction client."""
        merged = {**DEFAULT_EXPORT_COLUMNS, **self.export_columns}
        return {EXPORT_COLUMN_FIELDS[k]: c for k, c in merged.items()}

    def export_field_of(self, column: str) -> str | None:
        """The export_columns key whose column this is (for error messages)."""
        merged = {**DEFAULT_EXPORT_COLUMNS, **self.export_columns}
        return next((k for k, c in merged.items() if c.lower() == column.lower()), None)

    @field_validator("application_name")
    @classmethod
    def _no_colon(cls, v: str) -> str:
        if ":" in v:
            raise ValueError("must not contain ':' (it is the Basic-auth user name)")
        return v

    @field_validator("host")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("https://", "http://")):
            raise ValueError("must be a URL such as https://api.securevan.com/v4")
        return v.rstrip("/")


class MobileCommonsSettings(SecretsModel):
    """Mobile Commons credentials: Basic (login + password) or Bearer (token), plus company key and URL."""

    secrets = {"password": False, "token": False}

    auth: Literal["basic", "bearer"] = "basic"
    login: str | None = None
    password: Any = None
    token: Any = None
    company_key: str | None = None
    base_url: ApiUrl = "https://secure.mcommons.com/api"
    # Unverified API facts (research B3, B4), kept as settings:
    constituent_id_field: str = "Constituent ID"
    range_format: str = "%Y-%m-%d %H:%M:%S UTC"

    @model_validator(mode="after")
    def _credentials(self) -> MobileCommonsSettings:
        if self.auth == "basic":
            if not self.login or self.password is None:
                raise ValueError("auth = \"basic\" needs login and password_file (or password_env)")
            if self.token is not None:
                raise ValueError("auth = \"basic\" takes no token; set auth = \"bearer\" to use a token")
        else:
            if self.token is None:
                raise ValueError("auth = \"bearer\" needs token_file (or token_env)")
            if self.login or self.password is not None:
                raise ValueError("auth = \"bearer\" takes no login/password")
        return self

    def secret_value(self, name: str) -> str | None:
        value = getattr(self, name)
        return value.reveal() if isinstance(value, Secret) else None


class EveryActionMobileCommonsConfig(IntegrationConfig):
    everyaction: EveryActionSettings
    mobilecommons: MobileCommonsSettings
    default_opt_in_path_id: str | None = None
    liberal_sync: bool = False
    field_mappings: FieldMappings = Field(default_factory=FieldMappings)
    # when the flows run (the seed: nightly overnight; every five minutes during the day)
    nightly_at: ClockTime = time(2, 0)
    day_every: Duration = timedelta(minutes=5)
    day_hours: tuple[ClockTime, ClockTime] = (time(8, 0), time(21, 0))
    # what they read
    ea_window: Duration = timedelta(hours=48)
    mc_overlap: Duration = timedelta(minutes=2)
    mc_initial_lookback: Duration = timedelta(hours=48)
    missing_country: Literal["skip", "assume_us"] = "skip"
    #: calls in flight at once to each API (EveryAction, Mobile Commons; one limit per API, shared by both
    #: flows); a flow keeps ``pipeline.RECORDS_PER_SLOT`` x as many records in progress, so that a record
    #: waiting (for a batched read, its phone's turn, the store) holds no call slot. At most 150: Mobile
    #: Commons allows 160 concurrent calls per company
    workers: int = Field(default=32, ge=1, le=150)

    @field_validator("default_opt_in_path_id", mode="before")
    @classmethod
    def _path_id(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        if isinstance(v, str) and not v.strip().isdigit():
            raise ValueError("must be the numeric id of a Mobile Commons opt-in path")
        return v

    # field validators, so that an error names its key path (integrations.NAME.ea_window)
    @field_validator("ea_window")
    @classmethod
    def _ea_window(cls, v: timedelta) -> timedelta:
        if not timedelta(hours=1) <= v <= EA_MAX_LOOKBACK:
            raise ValueError("must be between 1h and 90d (EveryAction's export look-back limit)")
        return v

    @field_validator("day_every")
    @classmethod
    def _day_every(cls, v: timedelta) -> timedelta:
        if v < timedelta(minutes=1):
            raise ValueError("must be at least 1m")
        return v

    def required_fields(self) -> frozenset[str]:
        return self.field_mappings.required_fields()
