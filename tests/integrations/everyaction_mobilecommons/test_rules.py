"""Unit tests of the pure sync rules (no trio, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from crmsync.connectors.everyaction import OptInStatus, VanAddress, VanEmail, VanPerson, VanPhone
from crmsync.connectors.mobilecommons import Profile, Subscription
from crmsync.daemon.integrations.everyaction_mobilecommons import rules
from crmsync.daemon.integrations.everyaction_mobilecommons.ea_to_mc import window_start
from crmsync.daemon.integrations.everyaction_mobilecommons.kind import first_nightly_not_before
from crmsync.daemon.integrations.everyaction_mobilecommons.rules import Consent, ConsentFact, Contact

T0 = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)
IN, OUT, UNK = Consent.IN, Consent.OUT, Consent.UNKNOWN


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def fact(status: Consent, after: float | None, by: float | None) -> ConsentFact:
    return ConsentFact(status, at(after) if after is not None else None, at(by) if by is not None else None)


US = Contact(phone="+13125550100", email="a@example.org", first_name="A", last_name="B", country="US",
             city="Chicago", has_phone=True)


# -- eligibility -------------------------------------------------------------------------------------------

def test_eligibility_needs_a_mobile_number_then_us_then_required_fields() -> None:
    assert rules.ineligible_reason(US, frozenset()) is None
    assert rules.ineligible_reason(Contact(country="US"), frozenset()) == "no_mobile_number"
    assert rules.ineligible_reason(Contact(phone="+13125550100", country="CA"), frozenset()) == "country_not_us"
    assert rules.ineligible_reason(Contact(phone="+13125550100"), frozenset()) == "country_not_us"
    e = "a@example.org"
    assert rules.ineligible_reason(Contact(phone="+13125550100", email=e), frozenset(),
                                   missing_country_is_us=True) is None
    assert rules.ineligible_reason(Contact(phone="+13125550100", email=e, country="usa"), frozenset()) is None
    # the seed: "The following fields are required: Phone number, Email, Opt-in status" (issue 7, item 1)
    assert rules.ineligible_reason(Contact(phone="+13125550100", country="US"), frozenset()) == "no_email"
    # a listed mobile that is not a US number is a country matter, not a missing number (issue 7, item 6)
    assert rules.ineligible_reason(Contact(mobile_not_us=True, country="CA"), frozenset()) == "country_not_us"
    assert rules.ineligible_reason(US, frozenset({"zip_code"})) == "required_field_empty:zip_code"
    assert rules.ineligible_reason(US, frozenset({"first_name", "city"})) is None
    blank = Contact(phone="+13125550100", email=e, country="US", first_name="  ")
    assert rules.ineligible_reason(blank, frozenset({"first_name"})) == "required_field_empty:first_name"


def test_van_contact_uses_the_listed_mobile_and_the_preferred_address() -> None:
    person = VanPerson(
        van_id=1, first_name="Ann", last_name="Lee",
        phones=(VanPhone("3125550100", "Home", is_preferred=True, opt_in=OptInStatus.OPT_OUT),
                VanPhone("3125550101", "Cell", opt_in=OptInStatus.OPT_IN)),
        emails=(VanEmail("ann@example.org", is_preferred=True),),
        addresses=(VanAddress(line1="1 Main", city="Chicago", zip="60601", country_code="US", is_preferred=True),))
    contact = rules.contact_from_van(person)
    assert contact.phone == "+13125550101" and contact.email == "ann@example.org" and contact.country == "US"
    assert rules.van_consent(person, contact.phone) == IN  # the mobile's status, not the home phone's
    landline = VanPerson(van_id=2, phones=(VanPhone("3125550100", "Home"),))
    assert rules.contact_from_van(landline).phone is None and rules.contact_from_van(landline).has_phone


def test_mc_contact_and_consent() -> None:
    sub = Subscription("1", "C", "9", "Active", activated_at=at(1))
    active = Profile(id="7", phone_number="+13125550100", raw_phone_number="13125550100", status="Active Subscriber",
                     subscriptions=(sub,), country="US")
    assert rules.contact_from_profile(active).phone == "+13125550100"
    second = timedelta(seconds=1)  # Mobile Commons stamps whole seconds
    assert rules.mc_consent(active) == ConsentFact(IN, at(1), at(1) + second)
    out = Profile(id="8", phone_number=None, raw_phone_number="13125550100", status="Texted a STOP word",
                  opted_out_at=at(2))
    assert rules.mc_consent(out) == ConsentFact(OUT, at(2), at(2) + second)
    assert rules.mc_consent(None).status == UNK
    assert rules.mc_consent(Profile(id="9", phone_number=None, raw_phone_number="1", status="No Subscriptions")
                            ).status == UNK
    foreign = Profile(id="9", phone_number=None, raw_phone_number="14165550100")  # Toronto: not US
    assert rules.contact_from_profile(foreign).phone is None


# -- consent -----------------------------------------------------------------------------------------------

def test_equal_and_known_beats_unknown() -> None:
    assert rules.resolve_consent(fact(IN, 0, 0), fact(IN, 5, 5)) == IN
    assert rules.resolve_consent(fact(UNK, None, None), fact(OUT, 1, 1)) == OUT
    assert rules.resolve_consent(fact(IN, None, 3), ConsentFact(UNK)) == IN


def test_newer_change_wins_and_a_tie_or_doubt_means_opt_out() -> None:
    assert rules.resolve_consent(fact(IN, 5, 6), fact(OUT, 2, 2)) == IN  # opt-in certainly newer
    assert rules.resolve_consent(fact(OUT, 5, 6), fact(IN, 2, 2)) == OUT  # opt-out newer
    assert rules.resolve_consent(fact(IN, 3, 3), fact(OUT, 3, 3)) == OUT  # tie
    assert rules.resolve_consent(fact(IN, 1, 6), fact(OUT, 3, 3)) == OUT  # maybe older: never overwrite
    assert rules.resolve_consent(fact(IN, None, 9), fact(OUT, 3, 3)) == OUT  # unknown age
    assert rules.resolve_consent(fact(OUT, None, 1), fact(IN, 2, 2)) == IN  # opt-out certainly older
    assert rules.resolve_consent(fact(OUT, None, 2), fact(IN, 2, 2)) == OUT


def test_observations_place_everyaction_changes_in_time() -> None:
    first = rules.observe_ea(None, OUT, at(0))
    assert first.fact() == ConsentFact(OUT, None, at(0))
    same = rules.observe_ea(first, OUT, at(10))
    assert same.fact() == first.fact() and same.seen == at(10)
    changed = rules.observe_ea(same, IN, at(20))
    assert changed.fact() == fact(IN, 10, 20)
    assert rules.EaObservation.loads(changed.dumps()) == changed
    assert rules.written_ea(OUT, at(3)).fact() == fact(OUT, 3, 3)


# -- plans -------------------------------------------------------------------------------------------------

def ea_plan(contact: Contact = US, ea: ConsentFact = fact(IN, None, 0), profile: Contact | None = None,
            mc: ConsentFact = ConsentFact(UNK), liberal: bool = False, constituent: str | None = None,
            unchanged: bool = False, required: frozenset[str] = frozenset()) -> rules.Plan:
    return rules.plan_ea_to_mc(contact=contact, ea=ea, profile=profile, mc=mc, van_id="42",
                               profile_constituent_id=constituent, liberal=liberal, required=required,
                               opt_in_path="9", payload_unchanged=unchanged)


def test_ea_to_mc_subscribes_new_opt_ins_and_writes_the_van_id() -> None:
    plan = ea_plan()
    assert plan.subscribe and plan.link_id == "42" and plan.data["email"] == "a@example.org" and not plan.skip


def test_ea_to_mc_never_resubscribes_an_opt_out() -> None:
    stale = Contact(phone=US.phone, email="old@example.org", country="US")
    plan = ea_plan(profile=stale, mc=fact(OUT, 5, 5), ea=fact(IN, None, 9))
    # issue 7, item 2: the data and the Constituent ID still sync; consent stays opted out, and says why
    assert plan.skip is None and not plan.subscribe and not plan.opt_out
    assert plan.data["email"] == "a@example.org" and plan.link_id == "42"
    assert plan.note and plan.note.startswith("Mobile Commons opt-out wins")
    newer = ea_plan(profile=US, mc=fact(OUT, 5, 5), ea=fact(IN, 6, 9))  # EA re-opt-in certainly newer
    assert not newer.subscribe and newer.skip is None and newer.note and "re-subscribe" in newer.note


def test_ea_to_mc_opt_outs_travel_even_when_the_data_is_skipped() -> None:
    plan = ea_plan(contact=Contact(phone="+13125550100", country="CA"), ea=fact(OUT, None, 9),
                   profile=US, mc=fact(IN, 1, 1))
    assert plan.skip == "country_not_us" and plan.opt_out
    stale = ea_plan(ea=fact(OUT, None, 0), profile=US, mc=fact(IN, 1, 1))  # MC opt-in certainly newer
    assert not stale.opt_out


def test_liberal_moves_data_whatever_the_status_conservative_only_for_opt_ins() -> None:
    assert ea_plan(ea=fact(UNK, None, 0)).skip == "not_opted_in"
    liberal = ea_plan(ea=fact(UNK, None, 0), liberal=True)
    assert liberal.skip is None and liberal.data and not liberal.subscribe  # data, never consent
    assert ea_plan(ea=fact(OUT, None, 0), liberal=True).opt_out


def test_unchanged_payload_writes_nothing() -> None:
    plan = ea_plan(profile=US, mc=fact(IN, 1, 1), constituent="42", unchanged=True)
    assert not plan.writes
    same = ea_plan(profile=US, mc=fact(IN, 1, 1), constituent="42")
    assert not same.writes  # nothing differs either


def test_data_diff_never_blanks() -> None:
    assert rules.data_diff(Contact(email="x@example.org"), US) == {"email": "x@example.org"}
    assert rules.data_diff(Contact(), US) == {}
    assert rules.data_diff(Contact(city="chicago"), US) == {}  # case-insensitive


def mc_plan(mc: ConsentFact, person: Contact | None = US, ea: ConsentFact = ConsentFact(UNK),
            contact: Contact = US, liberal: bool = False) -> rules.Plan:
    return rules.plan_mc_to_ea(contact=contact, mc=mc, person=person, ea=ea, liberal=liberal,
                               required=frozenset({"first_name"}), payload_unchanged=False, has_identifier=False)


def test_mc_to_ea_new_opt_in_creates_only_with_an_email() -> None:
    assert mc_plan(fact(IN, 1, 1), person=None).opt_in
    no_email = Contact(phone="+13125550100", country="US", first_name="A")
    assert mc_plan(fact(IN, 1, 1), person=None, contact=no_email).skip == "no_email"
    assert mc_plan(fact(OUT, 1, 1), person=None).skip == "no_matching_record"


def test_mc_to_ea_opt_out_updates_the_match_and_an_opt_in_the_match() -> None:
    out = mc_plan(fact(OUT, 5, 5), ea=fact(IN, None, 1))
    assert out.opt_out and out.skip == "not_opted_in"  # Conservative: consent only
    opt_in = mc_plan(fact(IN, 5, 5), ea=fact(UNK, None, 1))
    assert opt_in.opt_in and opt_in.link_id
    kept_out = mc_plan(fact(IN, 5, 5), ea=fact(OUT, None, 9))  # EA opt-out maybe newer
    assert kept_out.skip == "opted_out_in_everyaction" and not kept_out.opt_in


def test_mc_to_ea_only_an_opt_in_skipped_for_the_records_data_waits() -> None:
    """An opt-in skipped because the record cannot sync yet waits (it syncs once the record can: the seed's
    required fields "must ... exist in both databases in order to sync data"); opt-outs always travel."""
    def waits(mc: ConsentFact, person: Contact | None, ea: ConsentFact = ConsentFact(UNK),
              contact: Contact = US) -> bool:
        return rules.opt_in_waits(mc_plan(mc, person=person, ea=ea, contact=contact), contact, mc, ea)

    keyword = Contact(phone="+13125550100", first_name="A")  # a keyword joiner: no email, no address
    no_email_record = Contact(phone="+13125550199", first_name="A", country="US")
    assert mc_plan(fact(IN, 5, 5), person=no_email_record, contact=keyword).skip == "no_email"
    assert waits(fact(IN, 5, 5), no_email_record, contact=keyword)
    assert waits(fact(IN, 5, 5), Contact(email="a@example.org", first_name="A", country="CA"), contact=keyword)
    assert waits(fact(IN, 5, 5), None, contact=keyword)  # no record to match and no email to create one
    assert not waits(fact(IN, 5, 5), US, contact=keyword)  # it syncs now: nothing to wait for
    assert not waits(fact(OUT, 5, 5), no_email_record, ea=fact(IN, None, 1), contact=keyword)  # opt-outs travel
    assert not waits(fact(IN, 5, 5), no_email_record, ea=fact(IN, None, 1), contact=keyword)  # already in
    assert not waits(fact(IN, 5, 5), no_email_record, ea=fact(OUT, None, 9), contact=keyword)  # EA out wins
    foreign = Contact(other_mobile="+14165550100", mobile_not_us=True, first_name="A")
    assert not waits(fact(IN, 5, 5), None, contact=foreign)  # a non-US mobile never syncs


def test_fingerprint_is_stable_and_sensitive() -> None:
    a = rules.ea_payload(US, IN, "1")
    assert rules.fingerprint(a) == rules.fingerprint(dict(reversed(list(a.items()))))
    assert rules.fingerprint(a) != rules.fingerprint(rules.ea_payload(US, OUT, "1"))


def test_window_widens_to_the_cursor_and_is_capped_at_90_days() -> None:
    now = at(0)
    assert window_start(now, None, timedelta(hours=48)) == now - timedelta(hours=48)
    assert window_start(now, now - timedelta(hours=1), timedelta(hours=48)) == now - timedelta(hours=48)
    assert window_start(now, now - timedelta(days=5), timedelta(hours=48)) == now - timedelta(days=5)
    assert window_start(now, now - timedelta(days=200), timedelta(hours=48)) == now - timedelta(days=90, hours=-1)


def test_first_nightly_run_is_never_the_activation_evening() -> None:
    from zoneinfo import ZoneInfo

    ny = ZoneInfo("America/New_York")
    afternoon = datetime(2026, 10, 28, 15, 0, tzinfo=ny)
    assert first_nightly_not_before(afternoon, ny) == datetime(2026, 10, 28, 23, 59, 59, tzinfo=ny)
    morning = datetime(2026, 10, 28, 1, 0, tzinfo=ny)
    assert first_nightly_not_before(morning, ny) == morning


def test_mobile_commons_times_have_one_second_resolution_so_an_opt_out_may_be_up_to_a_second_later() -> None:
    """Found by the stateful test: Mobile Commons writes whole seconds (2022-06-29 17:28:24 UTC), so an opt-out
    stamped 17:00:05 may have happened at 17:00:05.9. An EveryAction opt-in known to be after 17:00:05.2 is not
    certainly newer: opt-out (invariant 1)."""
    out = Profile(id="8", phone_number=None, raw_phone_number="13125550100", status="Texted a STOP word",
                  opted_out_at=at(0))
    mc = rules.mc_consent(out)
    ea = ConsentFact(IN, at(0) + timedelta(milliseconds=200), at(1))
    assert rules.resolve_consent(ea, mc) == OUT
