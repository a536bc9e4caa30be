"""The plan of every contact uses helpers made for speed (what a spec knows computed once per spec, a
contact's creation time read once for all its links). Each must give exactly what the function it stands
for gives: :func:`link_not_before` per mapped profile, :func:`observe_contact`."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crmsync.connectors.apsis.records import CHANNEL_EMAIL, CHANNEL_SMS, ApsisProfile, ConsentKey
from crmsync.connectors.efficy.records import EfficyContact
from crmsync.daemon.integrations.efficy_apsis.rules import (
    ConsentRule,
    LinkObservation,
    Plan,
    SyncSpec,
    _new_plan,
    _observe,
    _upper_case_names,
    link_not_before,
    link_times,
    observe_contact,
    observe_link,
    profile_tags,
    version_str,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
times = st.integers(min_value=0, max_value=5).map(lambda s: T0 + timedelta(seconds=s))
maybe_times = st.none() | times
pids = st.sampled_from(["1", "2", "3", "10"])
# a creation column that may hold a time, text, a number or nothing (only a datetime is a bound)
created_values = st.none() | times | st.sampled_from(["2024-01-01", "", 7])
observations = st.builds(LinkObservation, maybe_times, maybe_times)


@st.composite
def contacts(draw: st.DrawFn) -> EfficyContact:
    fields: dict[str, object] = {"NAME": "x"}
    created = draw(created_values)
    if draw(st.booleans()):
        fields["D_CREATE"] = created
    held = draw(st.none() | st.lists(pids, unique=True).map(lambda ids: tuple(sorted(ids))))
    changed = draw(st.dictionaries(pids, times, max_size=3))
    return EfficyContact("42", None, None, None, fields, held, None, changed)


specs = st.builds(
    lambda rules, created: SyncSpec(consents=tuple(rules), created_field=created),
    st.lists(st.builds(ConsentRule, pids, st.builds(ConsentKey, st.sampled_from(["news", "offers"]),
                                                    st.sampled_from([CHANNEL_EMAIL, CHANNEL_SMS]))),
             max_size=4),
    st.sampled_from(["D_CREATE", "d_create", None, "OTHER"]))


@settings(max_examples=300, deadline=None)
@given(contacts(), specs)
def test_link_times_are_link_not_before_of_each_rule(contact: EfficyContact, spec: SyncSpec) -> None:
    expected = {rule.profile_id: link_not_before(contact, rule.profile_id, spec.created_field)
                for rule in spec.consents}
    assert link_times(contact, (rule.profile_id for rule in spec.consents), spec.created_column) == expected


@settings(max_examples=300, deadline=None)
@given(contacts(), specs, st.dictionaries(pids, observations, max_size=3), maybe_times)
def test_observing_with_the_specs_profile_ids_is_observe_contact(
        contact: EfficyContact, spec: SyncSpec, previous: dict[str, LinkObservation],
        read_at: datetime | None) -> None:
    assert _observe(contact, spec.observed_profile_ids, previous, read_at) == \
        observe_contact(contact, spec.consents, previous, read_at) == \
        observe_contact_definition(contact, spec.consents, previous, read_at)


def observe_contact_definition(contact: EfficyContact, rules: tuple[ConsentRule, ...],
                               previous: dict[str, LinkObservation], read_at: datetime | None
                               ) -> tuple[dict[str, LinkObservation], tuple[tuple[str, bool], ...]]:
    """observe_contact as first written: every mapped CRM Profile, sorted, through observe_link."""
    out = dict(previous)
    if contact.profile_ids is None or read_at is None:
        return out, ()
    sightings = []
    for pid in sorted({rule.profile_id for rule in rules}):
        present = contact.has_profile(pid)
        out[pid] = observe_link(previous.get(pid), present, read_at)
        sightings.append((pid, present))
    return out, tuple(sightings)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["NAME", "name", "Name", "EMAIL1", "D_CREATE", "É", "é", "ß", "K1"]),
                          st.integers(0, 3)), max_size=6))
def test_upper_case_names_is_whether_upper_casing_changes_nothing(items: list[tuple[str, int]]) -> None:
    fields = dict(items)
    upper = {k.upper(): v for k, v in fields.items()}
    same = list(upper.items()) == list(fields.items())
    assert _upper_case_names(fields) == same
    assert _upper_case_names(dict(fields)) == same  # asked again (remembered)


@settings(max_examples=300, deadline=None)
@given(st.lists(pids, max_size=3), st.dictionaries(st.sampled_from(["vip", "gold"]), pids, max_size=2))
def test_profile_tags_are_the_tags_of_held_profiles(holds: list[str], tag_profiles: dict[str, str]) -> None:
    assert profile_tags(holds, tag_profiles) == frozenset(t for t, pid in tag_profiles.items() if pid in holds)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3), st.booleans()), min_size=1, max_size=12))
def test_a_first_sighting_is_the_observation_of_that_read(reads: list[tuple[bool, int, bool]]) -> None:
    """First sightings are made once per read time (shared): whatever the order of reads and times (equal
    times as distinct objects too), each is exactly the observation its definition builds."""
    for present, second, fresh in reads:
        at = T0 + timedelta(seconds=second)
        if fresh:
            at = at.replace()  # an equal time, another object
        got = observe_link(None, present, at)
        assert got == (LinkObservation(at, None) if present else LinkObservation(None, at))
        assert (got.present_since if present else got.absent_at) is at


_slots = st.builds(ConsentKey, st.sampled_from(["news", "offers"]), st.sampled_from([CHANNEL_EMAIL, CHANNEL_SMS]))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=3), st.dictionaries(st.sampled_from(["a", "b", "c"]), st.none() | st.text(max_size=3)),
       st.dictionaries(_slots, st.sampled_from(["opt-in", "opt-out", "pending", "confirmed"]), max_size=3),
       st.frozensets(st.sampled_from(["vip", "x"])), st.booleans())
def test_a_profile_made_owning_its_dicts_is_the_profile_made_by_copying(
        key: str, attributes: dict[str, object], consents: dict[ConsentKey, str], tags: frozenset[str],
        as_set: bool) -> None:
    given_tags = set(tags) if as_set else tags
    try:
        expected = ApsisProfile(key, dict(attributes), dict(consents), given_tags)
    except ValueError as exc:
        with pytest.raises(ValueError) as refused:
            ApsisProfile.owning(key, dict(attributes), dict(consents), given_tags)
        assert str(refused.value) == str(exc)
        return
    got = ApsisProfile.owning(key, dict(attributes), dict(consents), given_tags)
    assert got == expected and repr(got) == repr(expected)
    assert type(got.attributes) is type(expected.attributes) and type(got.consents) is type(expected.consents)
    assert type(got.tags) is frozenset
    # another profile's read-only mappings are shared, and the result is still that profile's value
    derived = ApsisProfile.owning(key, got.attributes, got.consents, got.tags | {"new"})
    assert derived == ApsisProfile(key, attributes, consents, tags | {"new"})
    with pytest.raises(TypeError):
        derived.attributes["a"] = "changed"  # type: ignore[index]


_evidence = st.fixed_dictionaries(
    {"read_at": maybe_times, "observations": st.dictionaries(pids, observations, max_size=2),
     "sightings": st.lists(st.tuples(pids, st.booleans()), max_size=2).map(tuple),
     "merge_refused": st.none() | st.just("409"), "own_optouts": st.dictionaries(_slots, times, max_size=1)},
    optional={"notes": st.lists(st.sampled_from(["a note", "another"]), max_size=2).map(tuple)})


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["skip", "unchanged", "write"]), _evidence, st.none() | st.just("stale_read"),
       st.none() | st.builds(ApsisProfile, st.just("7")), st.none() | st.builds(ApsisProfile, st.just("7")))
def test_a_plan_made_directly_is_the_plan_the_dataclass_makes(
        action: str, evidence: dict[str, object], reason: str | None, desired: ApsisProfile | None,
        current: ApsisProfile | None) -> None:
    got = _new_plan(action, "7", dict(evidence), reason=reason, desired=desired, current=current)
    want = Plan(action, "7", reason=reason, desired=desired, current=current, **evidence)  # type: ignore[arg-type]
    assert got == want and repr(got) == repr(want)
    assert list(vars(got)) == [f.name for f in fields(Plan)] == list(vars(want))  # every field, none more


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.none() | st.integers(0, 3), st.booleans()), min_size=1, max_size=10))
def test_a_version_text_is_the_times_isoformat(reads: list[tuple[int | None, bool]]) -> None:
    """Repeated time objects, equal times as other objects (in another zone too), and None in between."""
    shared = {s: T0 + timedelta(seconds=s) for s in range(4)}
    for second, fresh in reads:
        when = None if second is None else (
            shared[second].astimezone(timezone(timedelta(hours=2))) if fresh else shared[second])
        assert version_str(when) == (when.isoformat() if when is not None else None)
