"""The APSIS simulator's state: definitions, profiles (attributes, consents, tags), imports and reports in
memory, with the plain methods tests and the sandbox use to inspect and poke it (no HTTP).

Split from :mod:`.simulator` (routes) and :mod:`.sim_limits` (limits, auth and faults) by concern.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from crmsync.clock import WallClock
from crmsync.connectors.apsis.records import (
    ATTR_CRMID,
    ATTR_EMAIL,
    ATTR_FIRSTNAME,
    ATTR_LASTNAME,
    ATTR_MOBILE,
    CHANNEL_EMAIL,
    KEYSPACE_CRM_ID,
    KEYSPACE_EMAIL,
    KEYSPACE_EXPORT,
    KEYSPACE_MOBILE,
    SECTION_DEFAULT,
    WRITABLE_CONSENT_TYPES,
    ApsisProfile,
    ConsentKey,
)
from crmsync.connectors.simkit import (
    Request,
    Response,
)

S3_PATH = "/_s3/apsis-imports"
REPORT_PATH = "/audience/profiles/reports/consents"
TOKEN_LIFETIME = 86400
PROBLEM = "application/problem+json"

#: Default definitions (§4.2); tests and the sandbox may pass their own.
DEFAULT_KEYSPACES: tuple[dict[str, Any], ...] = (
    {"discriminator": KEYSPACE_CRM_ID, "name": "CRM ID", "manage_subscriptions": True,
     "key_attribute": ATTR_CRMID},
    {"discriminator": KEYSPACE_EMAIL, "name": "Email", "manage_subscriptions": True,
     "key_attribute": ATTR_EMAIL},
    {"discriminator": KEYSPACE_MOBILE, "name": "Mobile", "manage_subscriptions": True,
     "key_attribute": ATTR_MOBILE},
    {"discriminator": KEYSPACE_EXPORT, "name": "Export", "manage_subscriptions": False,
     "key_attribute": None, "read_only": True},
)
DEFAULT_ATTRIBUTES: tuple[tuple[str, str, str], ...] = (
    (ATTR_CRMID, "CRM ID", "string"),
    (ATTR_EMAIL, "Email", "string"),
    (ATTR_MOBILE, "Mobile", "string"),
    (ATTR_FIRSTNAME, "First name", "string"),
    (ATTR_LASTNAME, "Last name", "string"),
    ("com.apsis1.attributes.birthdate", "Birth date", "date"),
    ("usercreated.attributes.country-abc123", "Country", "string"),
    ("usercreated.attributes.notes-k3j4h5", "Notes", "string"),
)
DEFAULT_TOPICS: tuple[tuple[str, str, str], ...] = (
    ("usercreated.topics.newsletter-a1b2c3", "Newsletter", "usercreated.targets.marketing-x1y2z3"),
    ("usercreated.topics.offers-d4e5f6", "Offers", "usercreated.targets.marketing-x1y2z3"),
    ("usercreated.topics.newsletter-g7h8i9", "Newsletter", "usercreated.targets.service-q9w8e7"),
)
DEFAULT_TAGS: tuple[tuple[str, str], ...] = (
    ("usercreated.tags.vip-ab12cd", "VIP"),
    ("usercreated.tags.prospect-ef34gh", "Prospect"),
    ("usercreated.tags.event-2024-ij56kl", "Event 2024"),
)


def _version_id(discriminator: str) -> str:
    return hashlib.sha1(discriminator.encode()).hexdigest()[:8] + "-v1"


@dataclass(slots=True)  # a million of them in the 1M benchmark
class _SectionData:
    attributes: dict[str, Any] = field(default_factory=dict)
    consents: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    tags: set[str] = field(default_factory=set)


@dataclass
class _Import:
    import_id: str
    section: str
    spec: dict[str, Any]
    upload_fields: dict[str, str]
    upload_expires: float
    status: str = "waiting_for_file"
    csv: bytes | None = None
    polls_in_status: int = 0
    rows_imported: int = 0
    error: str | None = None
    ready_at: float | None = None  # clock time the import completes (time-based processing)


@dataclass
class _Report:
    report_id: str
    created: float  # clock timestamp
    rows: list[tuple[str, str, str, str, str, str]]  # keyspace, key, topic, channel, type, modified_at
    polls: int = 0


@dataclass
class StreamedResponse(Response):
    """A response whose body is sent as the chunks come (ASGI ``more_body``), without Content-Length."""

    chunks: Iterable[bytes] = ()


class _Problem(Exception):
    """Raised inside handlers; rendered as problem+json."""

    def __init__(self, status: int, title: str, detail: str = "", headers: Iterable[tuple[str, str]] = ()):
        super().__init__(title)
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = list(headers)


def problem(status: int, title: str, detail: str = "", headers: Iterable[tuple[str, str]] = ()) -> Response:
    body: dict[str, Any] = {"title": title, "status": status}
    if detail:
        body["detail"] = detail
    return Response.json(body, status=status, headers=headers, content_type=PROBLEM)


def _s3_error(status: int, code: str, message: str) -> Response:
    xml = (f"<?xml version='1.0' encoding='UTF-8'?>"
           f"<Error><Code>{code}</Code><Message>{message}</Message></Error>")
    return Response.text(xml, status=status, content_type="application/xml")


Route = Callable[..., Awaitable[Response]]

def _later(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether consent ``a`` should replace ``b`` in a merge: later ``modified_at``, a tie to opt-out."""
    ta, tb = str(a.get("modified_at") or ""), str(b.get("modified_at") or "")
    return ta > tb or (ta == tb and a.get("type") == "opt-out")



class ApsisState:
    """State helpers of :class:`~crmsync.connectors.apsis.simulator.ApsisSimulator` (a mixin: the simulator's
    ``__init__`` creates the attributes declared here)."""

    clock: WallClock
    keyspaces: dict[str, dict[str, Any]]
    sections: list[str]
    writes: Counter[str]
    _profiles: dict[tuple[str, str], dict[str, _SectionData]]
    _tokens: dict[str, float]
    _imports: dict[str, _Import]

    # -- test and sandbox helpers (no HTTP) ---------------------------------------------------------------

    @property
    def write_calls(self) -> int:
        """Total write calls (POST/PATCH/DELETE on profiles, consents, tags, imports) received."""
        return sum(self.writes.values())

    def expire_tokens(self) -> None:
        """Make every issued token expired now (as if 24 h had passed)."""
        now = self.clock.timestamp()
        for token in self._tokens:
            self._tokens[token] = now - 1

    def add_profile(self, key: str, attributes: Mapping[str, Any] | None = None, *,
                    consents: Mapping[ConsentKey, str] | None = None, tags: Iterable[str] = (),
                    keyspace: str = KEYSPACE_CRM_ID, section: str = SECTION_DEFAULT) -> None:
        """Seed a profile as if it had been created earlier (not counted as a write call)."""
        data = self._ensure(keyspace, key, section)
        data.attributes.update({k: v for k, v in (attributes or {}).items() if v is not None})
        for ck, kind in (consents or {}).items():
            self._set_consent(data, ck.topic, ck.channel, kind, source="Seed", reason=None)
        data.tags.update(tags)

    def profile(self, key: str, *, keyspace: str = KEYSPACE_CRM_ID,
                section: str = SECTION_DEFAULT) -> ApsisProfile | None:
        data = self._profiles.get((keyspace, str(key)), {}).get(section)
        if data is None:
            return None
        return ApsisProfile(
            key=str(key), attributes=dict(data.attributes),
            consents={ConsentKey(t, c): v["type"] for (t, c), v in data.consents.items()
                      if v["type"] in WRITABLE_CONSENT_TYPES},
            tags=frozenset(data.tags))

    def profiles(self, *, keyspace: str = KEYSPACE_CRM_ID,
                 section: str = SECTION_DEFAULT) -> list[ApsisProfile]:
        out = []
        for ks, key in sorted(self._profiles):
            if ks == keyspace:
                view = self.profile(key, keyspace=ks, section=section)
                if view is not None:
                    out.append(view)
        return out

    def consents_of(self, key: str, *, keyspace: str = KEYSPACE_CRM_ID,
                    section: str = SECTION_DEFAULT) -> dict[ConsentKey, str]:
        data = self._profiles.get((keyspace, str(key)), {}).get(section)
        return {} if data is None else {ConsentKey(t, c): v["type"] for (t, c), v in data.consents.items()}

    def tags_of(self, key: str, *, keyspace: str = KEYSPACE_CRM_ID,
                section: str = SECTION_DEFAULT) -> frozenset[str]:
        data = self._profiles.get((keyspace, str(key)), {}).get(section)
        return frozenset() if data is None else frozenset(data.tags)

    def opt_out(self, key: str, topic: str, channel: str = CHANNEL_EMAIL, *,
                keyspace: str = KEYSPACE_CRM_ID, section: str = SECTION_DEFAULT) -> None:
        """A person clicks the unsubscribe link in an email: opt-out on that topic/channel."""
        data = self._profiles.get((keyspace, str(key)), {}).get(section)
        if data is None:
            raise KeyError(f"no profile {key!r} in {keyspace}")
        self._set_consent(data, topic, channel, "opt-out", source="Unsubscribe link", reason="Unsubscribed")

    def import_status(self, import_id: str) -> str:
        return self._imports[import_id].status

    def same_profile(self, a: tuple[str, str], b: tuple[str, str]) -> bool:
        """Whether two ``(keyspace, key)`` pairs name one profile (after a merge)."""
        pa, pb = self._profiles.get(a), self._profiles.get(b)
        return pa is not None and pa is pb

    # -- routing helpers ---------------------------------------------------------------------------------

    def _section(self, section: str) -> None:
        if section not in self.sections:
            raise _Problem(404, "Not found", f"Section {section} does not exist")

    def _keyspace(self, keyspace: str, *, write: bool = False, consents: bool = False) -> dict[str, Any]:
        ks = self.keyspaces.get(keyspace)
        if ks is None:
            raise _Problem(404, "Not found", f"Keyspace {keyspace} does not exist")
        if write and ks.get("read_only"):
            raise _Problem(403, "Forbidden", f"Keyspace {keyspace} is read-only")
        if consents and not ks.get("manage_subscriptions"):
            raise _Problem(403, "Forbidden", f"Keyspace {keyspace} does not allow managing subscriptions")
        return ks

    def _existing(self, keyspace: str, key: str, section: str) -> _SectionData:
        sections = self._profiles.get((keyspace, key))
        if sections is None:
            raise _Problem(404, "Not found", "Profile does not exist")
        return sections.setdefault(section, _SectionData())

    def _ensure(self, keyspace: str, key: str, section: str) -> _SectionData:
        sections = self._profiles.setdefault((keyspace, str(key)), {})
        data = sections.get(section)
        if data is None:
            data = sections[section] = _SectionData()
            key_attr = self.keyspaces.get(keyspace, {}).get("key_attribute")
            if key_attr:
                data.attributes[key_attr] = str(key)
        return data

    @staticmethod
    def _json_object(request: Request) -> dict[str, Any]:
        try:
            body = request.json()
        except ValueError:
            raise _Problem(400, "Bad request", "Body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _Problem(400, "Bad request", "Body must be a JSON object")
        return body

    @staticmethod
    def _merge_patch(request: Request) -> dict[str, Any]:
        ctype = (request.header("content-type") or "").split(";")[0].strip()
        if ctype != "application/merge-patch+json":
            raise _Problem(415, "Unsupported media type", "Use application/merge-patch+json")
        return ApsisState._json_object(request)

    def _stamp(self) -> str:
        return self.clock.now().isoformat().replace("+00:00", "Z")

    def _set_consent(self, data: _SectionData, topic: str, channel: str, kind: str, *, source: str | None,
                     reason: str | None, stamp: str | None = None,
                     shared: dict[tuple[str, str, str], dict[str, Any]] | None = None) -> None:
        """``shared``: records already made with the same ``stamp`` (an import stamps all its rows at once),
        reused rather than copied, since a consent record is only ever replaced, never changed in place."""
        record = shared.get((topic, channel, kind)) if shared is not None else None
        if record is None:
            record = {"topic_discriminator": topic, "channel_discriminator": channel, "type": kind,
                      "source": source or "One API", "reason": reason, "modified_at": stamp or self._stamp()}
            if shared is not None:
                shared[(topic, channel, kind)] = record
        data.consents[(topic, channel)] = record

    def _keys_of(self, data: dict[str, _SectionData]) -> set[tuple[str, str]]:
        return {ref for ref, d in self._profiles.items() if d is data}
