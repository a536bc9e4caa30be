"""A hypothesis stateful test of EveryAction <-> Mobile Commons against the reference model.

Steps: people opt in and out and edit their records in either system at generated times; ``ea_to_mc`` and
``mc_to_ea`` run, with injected API faults (5xx, 429) and with a crash before any API call (the process dies:
nothing unflushed survives), followed by a restart on the same store. After every step the four consent
invariants of architecture.md are checked against the simulators' state and the true history of each person;
after a ``settle`` step (both flows run to completion) the model's expectations are checked too.

Every API write of an opt-in (a subscription through the opt-in path, an EveryAction ``phoneOptInStatus``
``I``) is checked *when it is sent*, against the true history at that instant (invariants 1 and 2).

Runs under the hypothesis profile loaded in tests/conftest.py ("ci" by default, ``HYPOTHESIS_PROFILE=nightly``
for 10^5 examples); see docs/everyaction_mobilecommons.md.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import phonenumbers
import trio
import trio.testing
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from crmsync.clock import WallClock
from crmsync.connectors.errors import ApiError
from crmsync.connectors.everyaction import SIM_API_KEY, EveryActionClient, EveryActionSimulator, OptInStatus
from crmsync.connectors.mobilecommons import MobileCommonsClient, MobileCommonsSimulator
from crmsync.daemon.integrations.base import FlowError
from crmsync.daemon.integrations.everyaction_mobilecommons.config import EveryActionMobileCommonsConfig
from crmsync.daemon.integrations.everyaction_mobilecommons.ea_to_mc import run_ea_to_mc
from crmsync.daemon.integrations.everyaction_mobilecommons.mc_to_ea import run_mc_to_ea
from crmsync.daemon.runs import RunContext
from crmsync.state import Database
from crmsync.state import queries as q
from tests.integrations.everyaction_mobilecommons import reference_model as model
from tests.integrations.everyaction_mobilecommons.harness import NAME, make_config

START = datetime(2026, 10, 28, 17, 0, tzinfo=UTC)
PHONES = ("3125550601", "3125550602", "4165550603")  # the last is a Toronto number: not US
FLOWS = {"ea_to_mc": run_ea_to_mc, "mc_to_ea": run_mc_to_ea}


class SimulatedCrash(BaseException):
    """The daemon process dies here (kill -9): nothing unflushed survives."""


class StepClock(WallClock):
    """Simulated wall time that the steps move by hand; inside a run it also follows trio's (mock) clock, so
    retries and export polls take time."""

    def now(self) -> datetime:
        assert self._start is not None
        try:
            current = trio.current_time()
        except RuntimeError:
            return self._start
        if self._origin is None:
            self._origin = current
        return self._start + timedelta(seconds=current - self._origin)

    def end_run(self) -> None:
        self._start, self._origin = self.now(), None


def digits10(raw: str) -> str:
    return "".join(c for c in raw if c.isdigit())[-10:]


def is_us(phone: str) -> bool:
    number = phonenumbers.parse(phone, "US")
    return phonenumbers.is_valid_number_for_region(number, "US")


@dataclass
class Wire(httpx.AsyncBaseTransport):
    """The network between the daemon and one simulator: checks opt-in writes as they are sent, and kills the
    process before a chosen call."""

    app: Any
    system: str
    world: EaMcMachine
    inner: httpx.ASGITransport = field(init=False)

    def __post_init__(self) -> None:
        self.inner = httpx.ASGITransport(app=self.app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        self.world.before_call(self.system, request, body)
        return await self.inner.handle_async_request(request)


person_setup = st.fixed_dictionaries({
    "ea": st.booleans(), "mobile": st.booleans(), "email": st.booleans(),
    "country": st.sampled_from(["US", "US", "CA", None]), "mc": st.booleans(), "mc_email": st.booleans(),
})


class EaMcMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.clock = StepClock(start=START)
        self.ea = EveryActionSimulator(self.clock, polls_to_complete=1, rows_per_file=2)
        self.mc = MobileCommonsSimulator(self.clock)
        campaign = self.mc.add_campaign("Supporters")
        self.path_id = self.mc.add_opt_in_path(campaign.id, "Web join").id
        self.db = Database.open_sync(":memory:")
        self.db.inline = True
        self.events: dict[str, list[model.ConsentEvent]] = {p: [] for p in PHONES}
        self.van_ids: dict[str, int] = {}
        self.violations: list[str] = []
        self.api_welcomes: Counter[str] = Counter()
        self.crash_at: int | None = None
        self.calls = 0
        self.config: EveryActionMobileCommonsConfig | None = None

    def teardown(self) -> None:
        self.db.close()
        self.tmp.cleanup()

    # -- set-up ------------------------------------------------------------------------------------------

    @initialize(liberal=st.booleans(), people=st.lists(person_setup, min_size=len(PHONES), max_size=len(PHONES)))
    def setup(self, liberal: bool, people: list[dict[str, Any]]) -> None:
        config = make_config(Path(self.tmp.name), self.path_id, liberal_sync=liberal, field_mappings={})
        section = config.integrations[NAME]
        assert isinstance(section, EveryActionMobileCommonsConfig)
        self.config = section
        for i, (phone, p) in enumerate(zip(PHONES, people, strict=True)):
            if p["ea"]:
                self.van_ids[phone] = self.ea.add_person(
                    f"First{i}", f"Last{i}", email=f"p{i}@example.org" if p["email"] else None, phone=phone,
                    phone_type="C" if p["mobile"] else "H", address_line1=f"{i + 1} Main St", city="Chicago",
                    zip="60601", country_code=p["country"] or "")
            if p["mc"]:
                self.mc.add_profile(phone, email=f"p{i}@example.org" if p["mc_email"] else "",
                                    first_name=f"First{i}")

    # -- what people do ----------------------------------------------------------------------------------

    def _event(self, phone: str, system: model.System, status: model.Status) -> None:
        self.events[phone].append(model.ConsentEvent(system, status, self.clock.now()))

    @rule(i=st.integers(0, len(PHONES) - 1), opt_in=st.booleans())
    def everyaction_consent(self, i: int, opt_in: bool) -> None:
        phone = PHONES[i]
        if phone not in self._ea_people(phone):
            return
        status = OptInStatus.OPT_IN if opt_in else OptInStatus.OPT_OUT
        if self._ea_status(phone) == status:
            return  # setting the status it already has changes nothing in VAN: not a consent change
        self.ea.set_phone_opt_in(self._ea_people(phone)[phone][0], phone, status)  # per phone: everyone's
        self._event(phone, "ea", "in" if opt_in else "out")

    @rule(i=st.integers(0, len(PHONES) - 1))
    def mobilecommons_keyword(self, i: int) -> None:
        phone = PHONES[i]
        before = len(self.mc.welcome_messages)
        profile = self.mc.opt_in(phone, self.path_id)
        if len(self.mc.welcome_messages) > before:  # joined, or re-joined after STOP: a consent change
            self._event(phone, "mc", "in")
        assert profile.status == "Active Subscriber"

    @rule(i=st.integers(0, len(PHONES) - 1))
    def mobilecommons_stop(self, i: int) -> None:
        phone = PHONES[i]
        if self.mc.profile(phone) is None:
            return
        self.mc.opt_out(phone)
        self._event(phone, "mc", "out")

    @rule(i=st.integers(0, len(PHONES) - 1), name=st.sampled_from(["Ann", "Bo", "Cy"]), email=st.booleans())
    def everyaction_edit(self, i: int, name: str, email: bool) -> None:
        phone = PHONES[i]
        people = self._ea_people(phone).get(phone, [])
        if people:
            self.ea.edit_person(people[0], first_name=name, email=f"{name.lower()}{i}@example.org" if email else None)

    @rule(i=st.integers(0, len(PHONES) - 1), name=st.sampled_from(["Dee", "Eli"]))
    def mobilecommons_edit(self, i: int, name: str) -> None:
        profile = self.mc.profile(PHONES[i])
        if profile is not None and profile.first_name != name:
            profile.first_name, profile.updated_at = name, self.clock.now().replace(microsecond=0)

    @rule(minutes=st.sampled_from([0, 1, 7, 60, 6 * 60, 20 * 60]))
    def time_passes(self, minutes: int) -> None:
        assert self.clock._start is not None
        self.clock._start += timedelta(minutes=minutes)

    # -- what the daemon does ----------------------------------------------------------------------------

    @rule(flow=st.sampled_from(sorted(FLOWS)), faults=st.integers(0, 3),
          status=st.sampled_from([429, 500, 502, 503]), system=st.sampled_from(["ea", "mc"]),
          crash_at=st.none() | st.integers(1, 14))
    def run_flow(self, flow: str, faults: int, status: int, system: str, crash_at: int | None) -> None:
        sim = self.ea if system == "ea" else self.mc
        sim.faults.fail(status, times=faults)
        self._run(flow, crash_at)
        sim.faults.clear()

    @rule()
    def settle(self) -> None:
        """Both flows run to completion (no faults): then the model's expectations must hold."""
        for flow in ("ea_to_mc", "mc_to_ea", "ea_to_mc"):
            assert self._run(flow, None) in ("success", "partial")
        self.check_settled()

    def _run(self, flow: str, crash_at: int | None) -> str:
        self.calls, self.crash_at = 0, crash_at
        result: list[str] = []
        try:
            trio.run(self._run_async, flow, result, clock=trio.testing.MockClock(autojump_threshold=0))
        except SimulatedCrash:
            return "crashed"  # a restart is simply the next run on the same store
        except BaseExceptionGroup as group:
            if group.subgroup(SimulatedCrash) is None:
                raise
            return "crashed"
        finally:
            self.crash_at = None
        return result[0]

    async def _run_async(self, flow: str, result: list[str]) -> None:
        config = self.config
        assert config is not None
        ea = EveryActionClient("crmsyncTest", SIM_API_KEY, base_url="http://ea.test/v4", poll_interval=1.0,
                               contact_columns=config.everyaction.contact_columns(),
                               transport=Wire(self.ea, "ea", self))
        mc = MobileCommonsClient("http://mc.test/api", login="api@example.org", password="sim-password",
                                 transport=Wire(self.mc, "mc", self))
        try:
            run_id = await self.db.tx(q.start_run, NAME, flow, "test", self.clock.now().isoformat())
            run = RunContext(db=self.db, clock=self.clock, integration=NAME, flow=flow, run_id=run_id)
            try:
                await FLOWS[flow](config, ea, mc, run)
                status = run.final_status()
            except (ApiError, FlowError) as exc:
                run.error, status = str(exc), "failed"
            now = self.clock.now().isoformat()
            await run.flush(lambda c: q.finish_run(c, run_id, status, run.counts.as_dict(), run.error, now))
            result.append(status)
        finally:
            await ea.aclose()
            await mc.aclose()
            self.clock.end_run()

    def before_call(self, system: str, request: httpx.Request, body: bytes) -> None:
        """Every API call: maybe the process dies first; opt-in writes are judged as they are sent."""
        self.calls += 1
        if self.crash_at is not None and self.calls >= self.crash_at:
            raise SimulatedCrash()
        path = request.url.path
        if system == "mc" and path.endswith("/profile_update"):
            params = dict(parse_qsl(body.decode())) | dict(request.url.params)
            if params.get("opt_in_path_id"):
                phone = digits10(params["phone_number"])
                ea_in = self._ea_status(phone) == OptInStatus.OPT_IN
                if not model.subscribe_allowed(self.events[phone], ea_in):
                    self.violations.append(f"subscribed {phone} at {self.clock.now()}: {self.events[phone]}, "
                                           f"EveryAction opt-in {ea_in}")
                profile = self.mc.profile(phone)
                if profile is None or not any(s.campaign_id for s in profile.subscriptions):
                    self.api_welcomes[phone] += 1
        if system == "ea" and request.method == "POST" and "/people" in path and not path.endswith("/find"):
            data = json.loads(body or b"{}")
            for ph in data.get("phones") or []:
                if ph.get("phoneOptInStatus") == "I":
                    phone = digits10(str(ph["phoneNumber"]))
                    if not model.opt_in_write_allowed(self.events.get(phone, [])):
                        self.violations.append(f"opt-in written to EveryAction for {phone} at "
                                               f"{self.clock.now()}: {self.events.get(phone)}")

    # -- reading the simulators --------------------------------------------------------------------------

    def _ea_people(self, phone: str) -> dict[str, list[int]]:
        ids = self.ea.van_ids_with_phone(phone)
        return {phone: ids} if ids else {}

    def _ea_status(self, phone: str) -> OptInStatus:
        return self.ea.phone_opt_in(phone)

    def _ea_record(self, phone: str) -> model.EaRecord | None:
        ids = self._ea_people(phone).get(phone, [])
        if not ids:
            return None
        raw = self.ea.person_json(ids[0], expand=("phones", "emails", "addresses"))
        ph = next(p for p in raw["phones"] if p["phoneNumber"] == phone)
        email = next((e["email"] for e in raw["emails"] if e["isPreferred"]), None) or next(
            (e["email"] for e in raw["emails"]), None)
        address = next((a for a in raw["addresses"] if a["isPreferred"]), None)
        return model.EaRecord(phone_is_listed_mobile=ph["phoneType"] in ("Cell", "Mobile"), phone_is_us=is_us(phone),
                              email=email, country=(address or {}).get("countryCode") or None)

    def _mc_status(self, phone: str) -> str:
        profile = self.mc.profile(phone)
        if profile is None:
            return "none"
        if profile.status.casefold() == "active subscriber":
            return "in"
        return "out" if profile.opted_out_at is not None else "unknown"

    # -- invariants --------------------------------------------------------------------------------------

    @invariant()
    def opt_ins_were_written_only_when_newer_and_real(self) -> None:
        assert not self.violations, self.violations  # invariants 1 and 2, judged when each write was sent

    @invariant()
    def no_second_welcome_no_duplicate_record(self) -> None:  # invariant 3
        for phone in PHONES:
            assert model.welcomes_allowed(self.api_welcomes[phone]), phone
            assert model.records_allowed(len(self._ea_people(phone).get(phone, []))), phone
        ids = Counter(p.identifier("MobileCommonsID") for p in self.ea.people())
        ids.pop(None, None)
        assert all(n == 1 for n in ids.values()), ids

    def check_settled(self) -> None:
        """Invariant 4 once both flows have run, and the seed's promises."""
        config = self.config
        assert config is not None
        for phone in PHONES:
            events = self.events[phone]
            record = self._ea_record(phone)
            profile = self.mc.profile(phone)
            won = model.winner(events)
            if won == "out":
                if model.mc_opt_out_reaches_ea(record is not None):
                    assert self._ea_status(phone) != OptInStatus.OPT_IN, (phone, events)
                if record is not None and model.ea_opt_out_reaches_mc(record, profile is not None):
                    assert self._mc_status(phone) != "in", (phone, events)
            if record is not None and model.ea_opt_in_subscribes(events, record, config.liberal_sync):
                assert self._mc_status(phone) == "in", (phone, events, record)
            mc_email = profile.email if profile is not None else None
            if model.mc_opt_in_reaches_matched_record(events, record, mc_email or None):
                assert self._ea_status(phone) == OptInStatus.OPT_IN, (phone, events, record)
            if model.mc_opt_in_creates_record(events, record is not None, mc_email or None) and is_us(phone):
                created = self._ea_record(phone)
                assert created is not None and self._ea_status(phone) == OptInStatus.OPT_IN, (phone, events)


EaMcMachine.TestCase.settings = settings(EaMcMachine.TestCase.settings, stateful_step_count=25)
TestEveryActionMobileCommonsStateful = EaMcMachine.TestCase
