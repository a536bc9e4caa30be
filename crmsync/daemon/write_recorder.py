"""The write boundary of dry runs and ``explain``: API clients that read for real and write nothing.

:class:`WriteRecorder` wraps one connector client. Reads pass through to the real API; writes are recorded
(:class:`IntendedWrite`) and answered with a plausible acknowledgement built from the request, so the flows
run unchanged to the end. It fails closed: a method that is neither a known read nor a known write raises
:class:`DryRunRefused` instead of reaching the API (a new write method cannot slip through unnoticed).

:class:`ReadOnlyDatabase` gives flows the store for reading: every transaction is rolled back, so not even a
write made directly through ``db.tx`` (rather than ``run.flush``) can land.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from crmsync.connectors.apsis.records import attributes_patch
from crmsync.state import Database

T = TypeVar("T")

#: the crm id a dry run shows for an EveryAction record it would create (real VAN IDs are positive)
NEW_VAN_ID = 0
NEW_PROFILE_ID = "(new)"


class DryRunRefused(RuntimeError):
    """A client method not known to be a read was called during a dry run: refused, nothing was sent."""


@dataclass(frozen=True)
class IntendedWrite:
    system: str
    call: str
    target: str | None
    summary: str

    def as_dict(self) -> dict[str, Any]:
        return {"system": self.system, "call": self.call, "target": self.target, "summary": self.summary}


@dataclass
class WriteLog:
    writes: list[IntendedWrite] = field(default_factory=list)

    def add(self, system: str, call: str, target: Any, summary: str) -> None:
        self.writes.append(IntendedWrite(system, call, None if target is None else str(target), summary))


# -- what each client may do ---------------------------------------------------------------------------------

READS: dict[str, frozenset[str]] = {
    "everyaction": frozenset({"get_person", "search_people", "find_person", "run_contacts_export",
                              "create_contacts_export_job", "get_export_job", "wait_for_export_job",
                              "download_export_file", "iter_export_rows", "changed_contacts"}),
    "mobilecommons": frozenset({"profiles", "profile", "find_profile", "campaigns"}),
    "apsis": frozenset({"list_keyspaces", "list_attributes", "attribute_versions", "list_topics", "list_tags",
                        "get_consents", "opted_out_profiles", "consent_report", "get_tags"}),
    "efficy": frozenset({"current_user", "list_contacts", "iter_contacts", "get_contact", "list_profiles",
                         "profile_members", "run_query", "query_members"}),
}


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class WriteRecorder:
    """Wraps one API client (``system`` names it: everyaction, mobilecommons, apsis, efficy)."""

    def __init__(self, system: str, inner: Any, log: WriteLog):
        self._system = system
        self._inner = inner
        self._log = log
        self._writes: dict[str, Callable[..., Any]] = _WRITES[system](self)

    def __getattr__(self, name: str) -> Any:
        if name in self._writes:
            return self._writes[name]
        value = getattr(self._inner, name)
        if callable(value) and not name.startswith("_") and name not in READS[self._system]:
            raise DryRunRefused(f"{self._system}.{name} is not known to be read-only; a dry run does not call it")
        return value

    def record(self, call: str, target: Any, summary: str) -> None:
        self._log.add(self._system, call, target, summary)


def _everyaction(r: WriteRecorder) -> dict[str, Callable[..., Any]]:
    from crmsync.connectors.everyaction.records import MatchResult

    async def find_or_create(candidate: Any) -> Any:
        r.record("find_or_create", None, _short(candidate.to_json()))
        return MatchResult(van_id=NEW_VAN_ID, status="dry_run", created=True)

    async def update_person(van_id: Any, body: Any) -> Any:
        r.record("update_person", van_id, _short(dict(body)))
        return MatchResult(van_id=int(van_id), status="dry_run")

    async def set_phone_opt_in(van_id: Any, phone: str, status: Any, **_: Any) -> Any:
        r.record("set_phone_opt_in", van_id, f"phone opt-in status {getattr(status, 'value', status)}")
        return MatchResult(van_id=int(van_id), status="dry_run")

    async def add_identifier(van_id: Any, external_id: str, *, id_type: str) -> Any:
        r.record("add_identifier", van_id, f"{id_type}={external_id}")
        return MatchResult(van_id=int(van_id), status="dry_run")

    return {"find_or_create": find_or_create, "update_person": update_person,
            "set_phone_opt_in": set_phone_opt_in, "add_identifier": add_identifier}


def _mobilecommons(r: WriteRecorder) -> dict[str, Callable[..., Any]]:
    from dataclasses import replace

    from crmsync.connectors.mobilecommons.records import Profile

    async def profile_update(update: Any) -> Any:
        fields = {k: v for k, v in vars(update).items() if v not in (None, "", ()) and k != "opt_in_path_id"}
        subscribe = (f"subscribe through opt_in_path_id={update.opt_in_path_id} (welcome message); "
                     if update.opt_in_path_id else "")
        r.record("profile_update", update.phone_number, subscribe + _short(fields, 300))
        existing = await r._inner.find_profile(update.phone_number)  # a read: the profile as it is now
        if existing is not None:
            return replace(existing, constituent_id=update.constituent_id or existing.constituent_id)
        return Profile(id=NEW_PROFILE_ID, phone_number=update.phone_number, raw_phone_number=update.phone_number,
                       email=update.email, first_name=update.first_name, last_name=update.last_name,
                       constituent_id=update.constituent_id)

    async def profile_opt_out(phone_number: str, **kwargs: Any) -> None:
        r.record("profile_opt_out", phone_number, _short(kwargs) if kwargs else "all campaigns")

    return {"profile_update": profile_update, "profile_opt_out": profile_opt_out}


def _apsis(r: WriteRecorder) -> dict[str, Callable[..., Any]]:
    from crmsync.connectors.apsis.client import UpsertResult

    async def upsert_profile(desired: Any, current: Any = None, *, managed_tags: Any = ()) -> Any:
        patch = attributes_patch(desired.attributes, current.attributes if current else None)
        consents = {ck: kind for ck, kind in desired.consents.items()
                    if current is None or current.consents.get(ck) != kind}
        have = current.tags if current is not None else frozenset()
        add = desired.tags - have
        remove = (set(managed_tags) - desired.tags) if current is None else (have & set(managed_tags)) - desired.tags
        parts = ([] if current is not None else ["create profile"]) + (
            [f"attributes {_short(patch, 120)}"] if patch else []) + [
            f"consent {ck.topic}/{ck.channel}={kind}" for ck, kind in sorted(
                consents.items(), key=lambda kv: (kv[0].topic, kv[0].channel))] + (
            [f"tags +{sorted(add)} -{sorted(remove)}"] if add or remove else [])
        if parts:
            r.record("upsert_profile", desired.key, "; ".join(parts))
        return UpsertResult(created=current is None, attribute_requests=1 if patch else 0,
                            consents_written=len(consents), tag_requests=1 if add or remove else 0,
                            create_requests=0 if current is not None else 1)

    async def patch_tags(key: str, add: Any = (), remove: Any = (), **_: Any) -> int:
        add, remove = sorted(add), sorted(remove)
        if add or remove:
            r.record("patch_tags", key, f"+{add} -{remove}")
        return 1 if add or remove else 0

    async def import_profiles(profiles: Any, settings: Any = None, attribute_versions: Any = None) -> list[Any]:
        r.record("import_profiles", None, f"{len(profiles)} profiles in one bulk import")
        return []

    async def create_profile(key: str, **_: Any) -> bool:
        r.record("create_profile", key, "create profile")
        return True

    async def patch_attributes(key: str, patch: Any, **_: Any) -> int:
        if patch:
            r.record("patch_attributes", key, _short(dict(patch)))
        return 1 if patch else 0

    async def set_consent(key: str, topic: str, channel: str, type: str, **_: Any) -> str:
        r.record("set_consent", key, f"{topic}/{channel}={type}")
        return "changed"

    async def opt_in(key: str, topic: str, channel: str, **kw: Any) -> str:
        return await set_consent(key, topic, channel, "opt-in")

    async def opt_out(key: str, topic: str, channel: str, **kw: Any) -> str:
        return await set_consent(key, topic, channel, "opt-out")

    return {"upsert_profile": upsert_profile, "patch_tags": patch_tags, "import_profiles": import_profiles,
            "create_profile": create_profile, "patch_attributes": patch_attributes, "set_consent": set_consent,
            "opt_in": opt_in, "opt_out": opt_out}


def _efficy(r: WriteRecorder) -> dict[str, Callable[..., Any]]:
    async def unlink_profile(contact_id: Any, profile_id: Any) -> None:
        r.record("unlink_profile", contact_id, f"remove CRM Profile {profile_id} from the contact card")

    async def link_profile(contact_id: Any, profile_id: Any) -> None:
        r.record("link_profile", contact_id, f"add CRM Profile {profile_id} to the contact card")

    return {"unlink_profile": unlink_profile, "link_profile": link_profile}


_WRITES: dict[str, Callable[[WriteRecorder], dict[str, Callable[..., Any]]]] = {
    "everyaction": _everyaction, "mobilecommons": _mobilecommons, "apsis": _apsis, "efficy": _efficy,
}


# -- the store, read-only ------------------------------------------------------------------------------------

class _Rollback(Exception):
    def __init__(self, result: Any):
        super().__init__("rolled back")
        self.result = result


class ReadOnlyDatabase:
    """A :class:`Database` whose transactions always roll back (their results are still returned)."""

    def __init__(self, inner: Database):
        self._inner = inner
        self.path = inner.path

    async def tx(self, fn: Callable[..., T], *args: Any) -> T:
        def rolled_back(c: sqlite3.Connection, *a: Any) -> T:
            raise _Rollback(fn(c, *a))

        try:
            await self._inner.tx(rolled_back, *args)
        except _Rollback as done:
            result: T = done.result
            return result
        raise AssertionError("unreachable")  # pragma: no cover
