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


def test_consent_decision() -> None:
    record = r.OptOutRecord("42", "1", NEWS, T0, None)
    unlinked = r.OptOutRecord("42", "1", NEWS, T0, T0 + timedelta(minutes=1))
    assert r.decide_consent(True, T0, None) == ("opt-in", False)
    assert r.decide_consent(False, T0, None) == ("opt-out", False)
    # an APSIS opt-out not yet confirmed removed in Efficy: the profile's presence is older news
    assert r.decide_consent(True, T0 + timedelta(days=1), record) == ("opt-out", False)
    # after the removal: a read not newer than it is stale (tie -> opt-out) ...
    assert r.decide_consent(True, T0 + timedelta(minutes=1), unlinked) == ("opt-out", False)
    assert r.decide_consent(True, T0, unlinked) == ("opt-out", False)
    # ... and a later one is a CRM user re-adding the profile: newer wins
    assert r.decide_consent(True, T0 + timedelta(minutes=2), unlinked) == ("opt-in", True)
    assert r.decide_consent(False, T0 + timedelta(minutes=2), unlinked) == ("opt-out", False)


def test_apsis_optout_wins_when_newer_or_tied() -> None:
    assert r.apsis_optout_wins(T0, T0)
    assert r.apsis_optout_wins(T0 + timedelta(seconds=1), T0)
    assert not r.apsis_optout_wins(T0, T0 + timedelta(seconds=1))
    assert r.apsis_optout_wins(T0, None)  # unknown Efficy time: never re-subscribe on doubt
    assert not r.apsis_optout_wins(None, T0)


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
    assert [e.payload["contact_id"] for e in native] == ["7"] and native[0].dedupe_key
    contract = parse_body(b'[{"record_id":"8","operation":"created"},'
                          b'{"record_id":"9","consent_base_id":"1","has_consented":false}]')
    assert [(e.payload["contact_id"], e.payload["operation"]) for e in contract] == [("8", "created"),
                                                                                     ("9", "updated")]
    for bad in (b"nope", b"3", b'{"records":[{"table":11000,"operation":"Update"}]}',
                b'[{"record_id":"1","operation":"boom"}]'):
        with pytest.raises(WebhookRejected):
            parse_body(bad)
