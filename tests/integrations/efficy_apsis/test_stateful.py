"""A hypothesis stateful test of efficy_apsis against the reference model (issue 7).

Steps: CRM Profile links added and removed and fields edited in Efficy at generated times, footer
unsubscribes in APSIS, webhook deliveries (duplicated, replayed, out of order, both push forms), runs of
realtime / full_sync (per-profile path) / consent_backflow, a crash between two API calls followed by a
restart on the same store, and injected API faults. After every step the four invariants of
architecture.md are checked on every consent transition APSIS recorded; after a ``settle`` step (every flow
run without faults) each consent is compared with what the reference model says.

The default hypothesis profile ("ci", tests/conftest.py) runs a few hundred examples;
``HYPOTHESIS_PROFILE=nightly`` runs 10^5 and prints the count.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import structlog
import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from crmsync.clock import WallClock
from crmsync.connectors.apsis import ApsisSimulator
from crmsync.connectors.apsis.records import KEYSPACE_CRM_ID
from crmsync.connectors.efficy.simulator import EfficySimulator
from crmsync.connectors.errors import ApiError
from crmsync.daemon.integrations.base import FlowError
from crmsync.state import queries as q
from tests.integrations.efficy_apsis import reference_model as ref
from tests.integrations.efficy_apsis.direct import Flows, flows
from tests.integrations.efficy_apsis.harness import NAME, NEWS, NEWS_SMS, OFFERS, make_config

T = TypeVar("T")
START = datetime(2024, 2, 1, 9, 0, tzinfo=UTC)
CONDITIONS = {"OPENED": True, "ROBINSON": False}
PROFILE_SLOTS = {"1": [(NEWS.topic, NEWS.channel), (NEWS_SMS.topic, NEWS_SMS.channel)],
                 "2": [(OFFERS.topic, OFFERS.channel)]}
SLOT_PROFILE = {slot: pid for pid, slots in PROFILE_SLOTS.items() for slot in slots}
#: (MOBILE, COUNTRY) pairs the generator uses, and which of them are (or can be made) international
MOBILES = [("+32470123456", "BE"), ("0470 12 34 56", "BE"), ("0470 12 34 56", ""), ("12", "BE"), ("", "BE")]
VALID_MOBILES = [("+32470123456", "BE"), ("0470 12 34 56", "BE")]
STEPS = [0.0, 0.3, 1.0, 59.0, 3600.0, 3 * 86400.0]


class SimulatedCrash(BaseException):
    """kill -9 between two API calls: nothing after this point runs, nothing is cleaned up by the flow."""


class CrashingTransport(httpx.AsyncBaseTransport):
    """Passes requests to a simulator until the shared budget runs out, then crashes the process."""

    def __init__(self, inner: httpx.AsyncBaseTransport, budget: list[int | None]):
        self.inner = inner
        self.budget = budget

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        left = self.budget[0]
        if left is not None:
            if left <= 0:
                raise SimulatedCrash()
            self.budget[0] = left - 1
        return await self.inner.handle_async_request(request)


class SpyEfficy(EfficySimulator):
    """Efficy, logging every link change (who made it) and every field state for the model."""

    def __init__(self, clock: WallClock, **kw: Any):
        super().__init__(clock, **kw)
        self.link_log: list[ref.LinkEvent] = []
        self.fields_log: list[ref.FieldsEvent] = []
        self.by_test = False

    def add_profile_to_contact(self, contact_id: int, profile_id: int) -> None:
        had = profile_id in self._links.get(contact_id, set())
        super().add_profile_to_contact(contact_id, profile_id)
        if not had:
            self.link_log.append(ref.LinkEvent(self.clock.now(), str(contact_id), str(profile_id), True,
                                               by_crmsync=not self.by_test))

    def remove_profile_from_contact(self, contact_id: int, profile_id: int) -> None:
        had = profile_id in self._links.get(contact_id, set())
        super().remove_profile_from_contact(contact_id, profile_id)
        if had:
            self.link_log.append(ref.LinkEvent(self.clock.now(), str(contact_id), str(profile_id), False,
                                               by_crmsync=not self.by_test))

    def log_fields(self, contact_id: int) -> None:
        row = self.contact(contact_id)
        self.fields_log.append(ref.FieldsEvent(self.clock.now(), str(contact_id), {
            "OPENED": bool(row["OPENED"]), "ROBINSON": bool(row["ROBINSON"]), "MOBILE": row["MOBILE"],
            "COUNTRY": row["COUNTRY"], "EMAIL1": row["EMAIL1"]}))


class SpyApsis(ApsisSimulator):
    """APSIS, logging every consent transition: (time, profile keys, slot, type, source)."""

    def __init__(self, clock: WallClock, **kw: Any):
        super().__init__(clock, **kw)
        self.transitions: list[tuple[datetime, frozenset[tuple[str, str]], tuple[str, str], str, str]] = []

    def _set_consent(self, data: Any, topic: str, channel: str, kind: str, *, source: str | None,
                     reason: str | None) -> None:
        super()._set_consent(data, topic, channel, kind, source=source, reason=reason)
        keys = frozenset(ref for ref, sections in self._profiles.items() if data in sections.values())
        self.transitions.append((self.clock.now(), keys, (topic, channel), kind, source or "One API"))


class Portal:
    """One trio loop (with trio's mock clock, autojumping) in a thread; hypothesis' rules are synchronous."""

    def __init__(self) -> None:
        ready = threading.Event()
        self._stop: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None

        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            ready.set()
            await self._stop.wait()

        self._thread = threading.Thread(
            target=lambda: trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)), daemon=True)
        self._thread.start()
        ready.wait()

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """A synchronous function on the trio thread (the simulated wall clock reads trio's time)."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def close(self) -> None:
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join()


class EfficyApsisMachine(RuleBasedStateMachine):
    portal: Portal
    examples = 0

    def __init__(self) -> None:
        super().__init__()
        EfficyApsisMachine.examples += 1
        self.tmp = Path(tempfile.mkdtemp(prefix="efap-stateful-"))
        self.f: Flows | None = None
        self.stack: AsyncExitStack | None = None
        self.contacts: list[int] = []
        self.unsubscribes: list[ref.Unsubscribe] = []
        self.sightings: list[ref.Sighting] = []
        # a contact's fields as each sync that may have written read them (a crashed or failed run included:
        # what it wrote before it stopped stays in APSIS)
        self.synced_fields: dict[str, list[Any]] = {}
        self.checked = 0
        self.history: list[bytes] = []
        self.told_since_sync: set[str] = set()  # contacts whose changes were delivered since the last realtime
        self.budget: list[int | None] = [None]
        self.exposed = False

    # -- the world ---------------------------------------------------------------------------------------

    @initialize(exposed=st.booleans(), method=st.sampled_from(["poll", "report"]),
                links=st.lists(st.sampled_from([[], [1], [2], [1, 2]]), min_size=2, max_size=2),
                mobiles=st.lists(st.sampled_from(MOBILES), min_size=2, max_size=2))
    def start(self, exposed: bool, method: str, links: list[list[int]], mobiles: list[tuple[str, str]]) -> None:
        self.exposed = exposed
        self.clock = WallClock(start=START)
        self.efficy = SpyEfficy(self.clock, api_key="efficy-test-key")
        self.efficy.link_changed_field = "D_CHANGE" if exposed else None
        self.apsis = SpyApsis(self.clock, client_id="crmsync", client_secret="apsis-test-secret",
                              public_url="http://apsis.test")
        self.efficy.add_profile("Newsletter", 1)
        self.efficy.add_profile("Offers", 2)
        self.config = make_config(self.tmp, efficy={"profile_link_changed_field": "D_CHANGE"} if exposed else {},
                                  consent_backflow={"method": method})


        def create() -> None:
            self.efficy.by_test = True
            for i, (profiles, (mobile, country)) in enumerate(zip(links, mobiles, strict=True)):
                cid = self.efficy.add_contact(name=f"Last{i}", first_name=f"First{i}",
                                              email=f"p{i}@example.be", profiles=profiles, MOBILE=mobile,
                                              COUNTRY=country, ROBINSON=False)
                self.contacts.append(cid)
                self.efficy.log_fields(cid)
            self.efficy.by_test = False
            self.efficy.drain_outbox()

        self.portal.call(create)
        self._start_process()

    def _start_process(self) -> None:
        """Start "the daemon": a store on disk (the same file across restarts) and the kind's clients."""

        async def open_process() -> tuple[AsyncExitStack, Flows]:
            stack = AsyncExitStack()
            efficy_t = CrashingTransport(httpx.ASGITransport(app=self.efficy), self.budget)  # type: ignore[arg-type]
            apsis_t = CrashingTransport(httpx.ASGITransport(app=self.apsis), self.budget)  # type: ignore[arg-type]
            f = await stack.enter_async_context(flows(
                self.tmp, self.clock, config=self.config, efficy=self.efficy, apsis=self.apsis,
                transports={"efficy": efficy_t, "apsis": apsis_t}))
            return stack, f

        self.stack, self.f = self.portal.run(open_process)

    def _stop_process(self) -> None:
        if self.stack is not None:
            stack, self.stack, self.f = self.stack, None, None
            self.budget[0] = None
            self.portal.run(stack.aclose)

    def teardown(self) -> None:
        try:
            self._stop_process()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def now(self) -> datetime:
        return self.portal.call(self.clock.now)

    def _advance(self, seconds: float) -> None:
        if seconds:
            self.clock.advance_origin(seconds)

    def _run(self, fn: Callable[[Flows], Awaitable[Any]]) -> bool:
        """One flow run as the daemon runs it: an API error fails the run (the daemon stays up)."""
        assert self.f is not None
        f = self.f
        try:
            self.portal.run(fn, f)
        except (ApiError, FlowError):
            return False
        except BaseExceptionGroup as group:
            crash, rest = group.split(SimulatedCrash)
            if crash is not None and rest is None:
                raise SimulatedCrash() from None
            _, other = group.split((ApiError, FlowError))
            if other is not None:
                raise
            return False
        return True

    # -- Efficy: a CRM user on the contact card ----------------------------------------------------------

    @rule(i=st.integers(0, 1), profile=st.sampled_from([1, 2]), present=st.booleans(), dt=st.sampled_from(STEPS))
    def change_link(self, i: int, profile: int, present: bool, dt: float) -> None:
        self._advance(dt)

        def change() -> None:
            self.efficy.by_test = True
            try:
                if present:
                    self.efficy.add_profile_to_contact(self.contacts[i], profile)
                else:
                    self.efficy.remove_profile_from_contact(self.contacts[i], profile)
            finally:
                self.efficy.by_test = False

        self.portal.call(change)

    @rule(i=st.integers(0, 1), change=st.sampled_from(["name", "robinson", "mobile"]),
          mobile=st.sampled_from(MOBILES), dt=st.sampled_from(STEPS))
    def edit_contact(self, i: int, change: str, mobile: tuple[str, str], dt: float) -> None:
        self._advance(dt)
        cid = self.contacts[i]

        def edit() -> None:
            row = self.efficy.contact(cid)
            if change == "name":
                self.efficy.update_contact(cid, first_name=str(row["FIRSTNAME"]) + "x")
            elif change == "robinson":
                self.efficy.update_contact(cid, ROBINSON=not row["ROBINSON"])
            else:
                self.efficy.update_contact(cid, MOBILE=mobile[0], COUNTRY=mobile[1])
            self.efficy.log_fields(cid)

        self.portal.call(edit)

    # -- APSIS: the footer link --------------------------------------------------------------------------

    @rule(i=st.integers(0, 1), slot=st.sampled_from(sorted(SLOT_PROFILE)), dt=st.sampled_from(STEPS))
    def footer_unsubscribe(self, i: int, slot: tuple[str, str], dt: float) -> None:
        key = str(self.contacts[i])
        if self.apsis.profile(key) is None:
            return  # no marketing profile, no email with a footer
        self._advance(dt)
        self.portal.call(self.apsis.opt_out, key, slot[0], slot[1])
        self.unsubscribes.append(ref.Unsubscribe(self.now(), key, slot))

    # -- webhooks ------------------------------------------------------------------------------------------

    @rule(native=st.booleans(), duplicate=st.booleans(), reverse=st.booleans(), replay=st.booleans())
    def deliver_webhooks(self, native: bool, duplicate: bool, reverse: bool, replay: bool) -> None:
        changes = self.efficy.drain_outbox()
        bodies = []
        for change in changes:
            if native:
                record = {"table": change.table, "key": change.key, "operation": change.operation,
                          "user": change.user, "subject": change.subject, "fields": {},
                          "date": change.date.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
                bodies.append(json.dumps({"database": "EFFICY_SIM", "version": "12.1", "records": [record]}))
            else:
                op = {"Create": "created", "Update": "updated", "Delete": "deleted"}[change.operation]
                bodies.append(json.dumps([{"record_id": str(change.key), "operation": op}]))
        if reverse:
            bodies.reverse()
        if duplicate:
            bodies = bodies + bodies
        if replay and self.history:
            bodies.append(self.history[0].decode())
        assert self.f is not None
        self.told_since_sync.update(str(change.key) for change in changes)
        for body in bodies:
            self.portal.run(self.f.deliver, body.encode())
            self.history.append(body.encode())
        self.history = self.history[-20:]

    # -- the flows -------------------------------------------------------------------------------------------

    def _cards(self, contact_ids: list[str]) -> dict[str, tuple[list[int], Any]]:
        """The contact cards as a sync about to run will read them: links, and fields for the model."""
        return {cid: (self.efficy.contact(int(cid))["profile_ids"],
                      ref.fields_at(self.efficy.fields_log, cid, self.efficy.fields_log[-1].at))
                for cid in contact_ids}

    def _note_attempt(self, cards: dict[str, tuple[list[int], Any]]) -> None:
        """A sync ran, completed or not: it may have written what it read of these cards."""
        for cid, (_links, fields) in cards.items():
            self.synced_fields.setdefault(cid, []).append(fields)

    def _note_reads(self, cards: dict[str, tuple[list[int], Any]], at: datetime) -> None:
        """A sync completed: it read these cards at or after ``at`` (before any later test event)."""
        for cid, (links, _fields) in cards.items():
            for pid in PROFILE_SLOTS:
                self.sightings.append(ref.Sighting(at, cid, pid, int(pid) in links))

    def _realtime(self) -> bool:
        assert self.f is not None
        at = self.now()
        pending = self.portal.run(self.f.db.tx, q.peek_pending, NAME, 100)
        named = sorted({str(e.payload.get("contact_id")) for e in pending if e.payload})
        cards = self._cards(named)
        self._note_attempt(cards)
        ok = self._run(lambda f: f.realtime())
        if ok:
            self._note_reads(cards, at)
            self.told_since_sync.clear()
        return ok

    @rule(dt=st.sampled_from(STEPS))
    def run_realtime(self, dt: float) -> None:
        self._advance(dt)
        self._realtime()

    @rule(dt=st.sampled_from(STEPS))
    def run_full_sync(self, dt: float) -> None:
        self._advance(dt)
        at = self.now()
        cards = self._cards([str(c) for c in self.contacts])
        self._note_attempt(cards)
        if self._run(lambda f: f.full_sync()):
            self._note_reads(cards, at)

    @rule(dt=st.sampled_from(STEPS))
    def run_backflow(self, dt: float) -> None:
        self._advance(dt)
        self._run(lambda f: f.backflow())

    @rule(flow=st.sampled_from(["realtime", "full_sync", "consent_backflow"]), calls=st.integers(0, 12))
    def crash_and_restart(self, flow: str, calls: int) -> None:
        self.budget[0] = calls
        if flow == "full_sync":  # it may write what it read before the crash
            self._note_attempt(self._cards([str(c) for c in self.contacts]))
        elif flow == "realtime":
            pending = self.portal.run(self.f.db.tx, q.peek_pending, NAME, 100) if self.f is not None else []
            self._note_attempt(self._cards(sorted({str(e.payload.get("contact_id")) for e in pending
                                                   if e.payload})))
        try:
            if flow == "realtime":
                self._run(lambda f: f.realtime())
            elif flow == "full_sync":
                self._run(lambda f: f.full_sync())
            else:
                self._run(lambda f: f.backflow())
        except SimulatedCrash:
            pass
        self.budget[0] = None
        self._stop_process()  # the process is gone; what the store committed stays
        self._start_process()

    @rule(system=st.sampled_from(["apsis", "efficy"]), status=st.sampled_from([429, 500, 503, 504]),
          times=st.integers(1, 8))
    def inject_faults(self, system: str, status: int, times: int) -> None:
        sim = self.apsis if system == "apsis" else self.efficy
        sim.faults.fail(status, times=times)

    @rule(style=st.sampled_from(["exception", "efficy_u", "context_object", "function_flag"]),
          message=st.sampled_from(["Transaction was deadlocked, try again", "Simulated Efficy error"]),
          times=st.integers(1, 3))
    def inject_efficy_error(self, style: str, message: str, times: int) -> None:
        """Efficy's business errors come back as HTTP 200 with #error in the body (research 1.4)."""
        self.efficy.inject_error(style, message, times=times)  # type: ignore[arg-type]

    # -- settling: every flow without faults, then the model decides ---------------------------------------

    @precondition(lambda self: self.f is not None)
    @rule()
    def settle(self) -> None:
        self.apsis.faults.clear()
        self.efficy.faults.clear()
        self.efficy._errors.clear()
        self.deliver_webhooks(native=True, duplicate=False, reverse=False, replay=False)
        told = set(self.told_since_sync)
        assert self._realtime()
        # real-time alone (no full sync yet) has carried every removal it was told about: the seed's
        # real-time sync sends "the contents of the created or updated persons"
        now = self.now()
        for cid in sorted(told):
            if self.apsis.profile(cid) is None or not ref.passes_conditions(
                    ref.fields_at(self.efficy.fields_log, cid, now), CONDITIONS):
                continue
            consents = {(ck.topic, ck.channel): kind for ck, kind in self.apsis.consents_of(cid).items()}
            for slot, pid in SLOT_PROFILE.items():
                if ref.link_since(self.efficy.link_log, cid, pid, now) is None:
                    assert consents.get(slot) == "opt-out", (cid, slot, "removal not carried by real-time")
        self._advance(1.0)
        self.run_full_sync(0.0)
        self._advance(1.0)
        self.run_backflow(0.0)
        self._advance(1.0)
        self.deliver_webhooks(native=True, duplicate=False, reverse=False, replay=False)
        for _ in range(3):
            assert self._realtime()
        self._advance(1.0)
        self.run_full_sync(0.0)
        now = self.now()
        problems = []
        for c in self.contacts:
            cid = str(c)
            fields = ref.fields_at(self.efficy.fields_log, cid, now)
            has_profile = self.apsis.profile(cid) is not None
            problem = ref.never_synced_has_no_profile(self.synced_fields.get(cid, []), CONDITIONS, has_profile)
            if problem:
                problems.append((cid, problem))
            for pid, slots in PROFILE_SLOTS.items():
                problem = ref.newer_link_removed_violation(
                    contact=cid, profile=pid, slots=slots, links=self.efficy.link_log,
                    unsubscribes=self.unsubscribes, sightings=self.sightings, link_time_exposed=self.exposed)
                if problem:
                    problems.append((cid, problem))
            if not ref.passes_conditions(fields, CONDITIONS):
                continue
            consents = {(ck.topic, ck.channel): kind for ck, kind in self.apsis.consents_of(cid).items()}
            for slot, pid in SLOT_PROFILE.items():
                problem = ref.settled_consent_violation(
                    now=now, contact=cid, profile=pid, slot=slot, apsis_value=consents.get(slot),
                    links=self.efficy.link_log, fields=self.efficy.fields_log, unsubscribes=self.unsubscribes,
                    valid_mobiles=VALID_MOBILES)
                if problem:
                    problems.append((cid, f"{slot[1].rsplit('.', 1)[-1]} {slot[0]}: {problem}"))
        assert not problems, problems

    # -- the invariants, after every step ------------------------------------------------------------------

    @invariant()
    def consent_invariants(self) -> None:
        if not hasattr(self, "apsis"):
            return
        new = self.apsis.transitions[self.checked:]
        self.checked = len(self.apsis.transitions)
        for at, keys, slot, kind, source in new:
            crm = [k for ks, k in keys if ks == KEYSPACE_CRM_ID]
            assert len(crm) == 1, f"a consent on a profile without one CRM id: {keys}"
            if kind != "opt-in":
                continue
            assert source != "Unsubscribe link"
            problem = ref.optin_write_violation(
                at=at, contact=crm[0], profile=SLOT_PROFILE[slot], slot=slot, links=self.efficy.link_log,
                fields=self.efficy.fields_log, unsubscribes=self.unsubscribes, conditions=CONDITIONS,
                valid_mobiles=VALID_MOBILES)
            assert problem is None, (crm[0], slot, at, problem)

    @invariant()
    def no_duplicate_records(self) -> None:
        """Invariant 3: writes keyed by identifier links: one profile per contact, none for anyone else, and
        never a second opt-in (welcome) on a slot without an opt-out in between."""
        if not hasattr(self, "apsis"):
            return
        keys = {p.key for p in self.apsis.profiles()}
        assert keys <= {str(c) for c in self.contacts}, keys
        last: dict[tuple[frozenset[tuple[str, str]], tuple[str, str]], str] = {}
        for _, refs, slot, kind, _ in self.apsis.transitions:
            assert not (kind == "opt-in" and last.get((refs, slot)) == "opt-in"), "a second welcome"
            last[(refs, slot)] = kind


@pytest.fixture
def quiet_logs() -> Iterator[None]:
    previous = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    try:
        yield
    finally:
        structlog.configure(**previous)


def test_efficy_apsis_consent_rules_hold_in_every_generated_history(quiet_logs: None) -> None:
    portal = Portal()
    EfficyApsisMachine.portal = portal
    EfficyApsisMachine.examples = 0
    try:
        run_state_machine_as_test(EfficyApsisMachine, settings=settings(
            settings.default, stateful_step_count=15,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    finally:
        portal.close()
        print(f"efficy_apsis stateful test: {EfficyApsisMachine.examples} examples")

