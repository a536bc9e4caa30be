"""The sync rules, one by one, on plain data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crmsync.connectors.apsis.records import ATTR_CRMID, ATTR_EMAIL, CHANNEL_EMAIL, ApsisProfile, ConsentKey
from crmsync.connectors.efficy.records import EfficyContact
from crmsync.daemon.integrations.base import WebhookRejected
from crmsync.daemon.integrations.efficy_apsis import rules as r
from crmsync.daemon.integrations.efficy_apsis.realtime import parse_body

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
NEWS = ConsentKey("t.news", CHANNEL_EMAIL)
RULE = r.ConsentRule("1", NEWS)


def contact(profiles: tuple[str, ...] = ("1",), at: datetime | None = T0, **fields: object) -> EfficyContact:
    base: dict[str, object] = {"OPENED": True, "ROBINSON": "0", "FIRSTNAME": "Jane"}
    base.update(fields)
    return EfficyContact("42", "jane@x.be", "Jane", "Doe", base, profiles, at)  # type: ignore[arg-type]


@pytest.mark.parametrize("actual,expected,equal", [
    (True, 1, True), (False, 0, True), (True, 0, False), ("0", 0, True), ("1", 0, False), ("0", False, True),
    (None, 0, False), ("", 0, False), (5, "5", True), ("01234", "1234", False), ("BE", "BE", True),
    (3.0, 3, True), (T0, "2026-03-02", True),
])
def test_typed_equal(actual: object, expected: object, equal: bool) -> None:
    assert r.typed_equal(actual, expected) is equal


def test_conditions_are_anded_and_the_reason_names_the_first_failure() -> None:
    conditions = {"OPENED": 1, "ROBINSON": 0}
    assert r.failed_condition({"OPENED": True, "ROBINSON": "0"}, conditions) is None
    assert r.failed_condition({"OPENED": False, "ROBINSON": "1"}, conditions) == "condition_failed:OPENED=1"
    assert r.failed_condition({"OPENED": True, "ROBINSON": "1"}, conditions) == "condition_failed:ROBINSON=0"
    assert r.failed_condition({"OPENED": True}, conditions) == "condition_failed:ROBINSON=0"  # missing fails
    assert r.failed_condition({}, {}) is None


def test_field_mapping_maps_id_and_email_automatically() -> None:
    attrs = r.map_attributes(contact(BIRTH=datetime(1990, 5, 1, tzinfo=UTC), CITY=""),
                             [("FIRSTNAME", "a.first"), ("BIRTH", "a.birth"), ("CITY", "a.city")])
    assert attrs == {ATTR_CRMID: "42", ATTR_EMAIL: "jane@x.be", "a.first": "Jane", "a.birth": "1990-05-01",
                     "a.city": None}


def resolve(present: bool = True, optout: datetime | bool | None = T0, **kw: object) -> str:
    opted_out = optout is not False
    return r.resolve_link_consent(link_present=present, opted_out=opted_out,
                                  opted_out_at=optout if isinstance(optout, datetime) else None,
                                  **kw)  # type: ignore[arg-type]


def test_no_link_is_opt_out_and_a_link_without_apsis_optout_is_opt_in() -> None:
    assert resolve(present=False, optout=False) == "opt-out"
    assert resolve(present=False, optout=T0, link_changed_at=T0 + timedelta(days=9)) == "opt-out"
    assert resolve(present=True, optout=False) == "opt-in"


def test_first_seeing_a_link_says_nothing_about_when_it_was_made() -> None:
    first = r.observe_link(None, True, T0 + timedelta(days=30))
    assert first == r.LinkObservation(T0 + timedelta(days=30), None)
    assert resolve(observation=first, read_at=T0 + timedelta(days=30)) == "opt-out"
    assert resolve(optout=True) == "opt-out"  # an opt-out of unknown time: doubt


def test_a_link_seen_absent_after_the_optout_and_present_since_is_newer() -> None:
    absent = r.observe_link(None, False, T0 + timedelta(days=5))
    again = r.observe_link(absent, True, T0 + timedelta(days=18))
    assert again == r.LinkObservation(T0 + timedelta(days=18), T0 + timedelta(days=5))
    assert resolve(observation=again, read_at=T0 + timedelta(days=18)) == "opt-in"
    # seen absent only before the opt-out: no proof
    early = r.observe_link(r.observe_link(None, False, T0 - timedelta(days=1)), True, T0 + timedelta(days=2))
    assert resolve(observation=early, read_at=T0 + timedelta(days=2)) == "opt-out"
    # a read made before that absence (a full-sync page written late) is stale: no proof
    assert resolve(observation=again, read_at=T0 + timedelta(days=4)) == "opt-out"


def test_the_same_second_goes_to_the_optout() -> None:
    optout = T0.replace(microsecond=700000)
    assert resolve(optout=optout, link_changed_at=T0.replace(microsecond=100000)) == "opt-out"
    assert resolve(optout=optout, link_changed_at=T0 + timedelta(seconds=1)) == "opt-in"
    absent = r.LinkObservation(None, T0.replace(microsecond=900000))
    assert resolve(optout=optout, observation=absent, read_at=T0 + timedelta(seconds=5)) == "opt-out"


def test_sightings_recorded_out_of_order_never_undo_newer_ones() -> None:
    later_absent = r.observe_link(None, False, T0 + timedelta(hours=2))
    assert r.observe_link(later_absent, True, T0 + timedelta(hours=1)) == later_absent
    assert r.observe_link(later_absent, False, T0 + timedelta(hours=1)) == later_absent
    present = r.observe_link(None, True, T0 + timedelta(hours=3))
    assert r.observe_link(present, False, T0 + timedelta(hours=1)) == r.LinkObservation(
        T0 + timedelta(hours=3), T0 + timedelta(hours=1))


def test_the_contact_change_time_is_no_link_time_but_its_creation_is_a_bound() -> None:
    edited = EfficyContact("42", "j@x.be", None, None, {"D_CREATE": T0 - timedelta(days=9)}, ("1",),
                           T0 + timedelta(days=60))
    assert r.link_not_before(edited, "1") == T0 - timedelta(days=9)
    created_later = EfficyContact("42", "j@x.be", None, None, {"D_CREATE": T0 + timedelta(days=1)}, ("1",), T0)
    assert r.link_not_before(created_later, "1") == T0 + timedelta(days=1)
    assert r.link_not_before(created_later, "1", None) is None
    linked = created_later.with_profiles(["1"], {"1": T0 + timedelta(days=3)})
    assert r.link_not_before(linked, "1") == T0 + timedelta(days=3)


def test_desired_consents_drop_a_record_only_when_the_link_is_newer() -> None:
    record = r.OptOutRecord("42", "1", NEWS, T0, None, seen_at=T0 + timedelta(minutes=1))
    kinds, obsolete = r.desired_consents(["1"], [RULE], {("1", NEWS): record})
    assert kinds == {NEWS: "opt-out"} and obsolete == []
    absent = r.LinkObservation(None, T0 + timedelta(days=1))
    kinds, obsolete = r.desired_consents(["1"], [RULE], {("1", NEWS): record}, observations={"1": absent},
                                         read_at=T0 + timedelta(days=2))
    assert kinds == {NEWS: "opt-in"} and obsolete == [record]
    # an opt-out of unknown APSIS time is bounded by when crmsync first saw it
    unknown = r.OptOutRecord("42", "1", NEWS, None, None, seen_at=T0 + timedelta(days=1, hours=1))
    kinds, _ = r.desired_consents(["1"], [RULE], {("1", NEWS): unknown}, observations={"1": absent},
                                  read_at=T0 + timedelta(days=2))
    assert kinds == {NEWS: "opt-out"}


def test_optin_candidates_are_only_optins_not_already_sent() -> None:
    other = ConsentKey("t.other", CHANNEL_EMAIL)
    desired = {NEWS: "opt-in", other: "opt-out"}
    assert r.optin_candidates(desired, None) == [NEWS]
    sent = ApsisProfile("42", consents={NEWS: "opt-in"})
    assert r.optin_candidates(desired, sent) == []
    assert r.optin_candidates(desired, ApsisProfile("42", consents={NEWS: "opt-out"})) == [NEWS]


def test_tags() -> None:
    assert r.profile_tags(["1", "3"], {"tag.a": "1", "tag.b": "2"}) == {"tag.a"}
    assert r.membership_diff(["1", "2"], ["2", "3"]) == ({"3"}, {"1"})
    assert r.retag(frozenset({"a"}), "b", True) == {"a", "b"}
    assert r.retag(frozenset({"a"}), "a", False) == frozenset()


def test_fingerprints_round_trip_and_compare() -> None:
    p = ApsisProfile("42", {"a": 1, "b": None}, {NEWS: "opt-in"}, frozenset({"t"}))
    text = r.fingerprint(p)
    assert r.fingerprint(ApsisProfile("42", {"b": None, "a": 1}, {NEWS: "opt-in"}, frozenset({"t"}))) == text
    back = r.profile_from_fingerprint("42", text)
    assert back is not None and r.fingerprint(back) == text
    assert r.profile_from_fingerprint("42", "garbage") is None


def test_stale_guard() -> None:
    assert r.is_stale(T0, (T0 + timedelta(seconds=1)).isoformat())
    assert not r.is_stale(T0, T0.isoformat())
    assert not r.is_stale(None, T0.isoformat())
    assert not r.is_stale(T0, None)


def test_plan_contact() -> None:
    spec = r.SyncSpec(conditions={"ROBINSON": 0}, attributes=(("FIRSTNAME", "a.first"),), consents=(RULE,),
                      tag_profiles={"tag.p": "1"}, query_tags=frozenset({"tag.q"}))
    skip = r.plan_contact(contact(ROBINSON="1"), spec, current=None, written_version=None, linked=False,
                          optouts={})
    assert (skip.action, skip.reason) == ("skip", "condition_failed:ROBINSON=0")
    first = r.plan_contact(contact(), spec, current=None, written_version=None, linked=False, optouts={})
    assert first.action == "write" and first.desired is not None
    assert first.desired.consents == {NEWS: "opt-in"} and first.desired.tags == {"tag.p"}
    # the query tag last written is kept (the tags flow owns it), and an equal payload is unchanged
    sent = r.ApsisProfile("42", first.desired.attributes, first.desired.consents, frozenset({"tag.p", "tag.q"}))
    again = r.plan_contact(contact(), spec, current=sent, written_version=T0.isoformat(), linked=True, optouts={})
    assert again.action == "unchanged"
    stale = r.plan_contact(contact(at=T0 - timedelta(1)), spec, current=sent, written_version=T0.isoformat(),
                           linked=True, optouts={})
    assert (stale.action, stale.reason) == ("skip", "stale_read")


def test_import_ready() -> None:
    addresses = {CHANNEL_EMAIL: ATTR_EMAIL}
    ok = ApsisProfile("42", {ATTR_EMAIL: "a@b"}, {NEWS: "opt-in"})
    assert r.import_ready(ok, None, addresses)
    assert not r.import_ready(ApsisProfile("42", {ATTR_EMAIL: None}, {NEWS: "opt-out"}), None, addresses)
    assert not r.import_ready(ok, ApsisProfile("42", consents={NEWS: "opt-out"}), addresses)


def test_parse_webhook_forms() -> None:
    native = parse_body(b'{"database":"D","version":"12","records":[{"table":11000,"key":"7","operation":"Update",'
                        b'"date":"2026-03-02T09:00:00Z"},{"table":5000,"key":1,"operation":"Create"}]}')
    # no dedupe key: two changes in one second look alike (test_link_consent_time); redeliveries are harmless
    assert [e.payload["contact_id"] for e in native] == ["7"] and native[0].dedupe_key is None
    contract = parse_body(b'[{"record_id":"8","operation":"created"},'
                          b'{"record_id":"9","consent_base_id":"1","has_consented":false}]')
    assert [(e.payload["contact_id"], e.payload["operation"]) for e in contract] == [("8", "created"),
                                                                                     ("9", "updated")]
    for bad in (b"nope", b"3", b'{"records":[{"table":11000,"operation":"Update"}]}',
                b'[{"record_id":"1","operation":"boom"}]'):
        with pytest.raises(WebhookRejected):
            parse_body(bad)
