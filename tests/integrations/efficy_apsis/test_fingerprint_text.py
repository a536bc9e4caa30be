"""Fingerprints are stored: a no-change rerun after an upgrade writes nothing only if the text of the same
payload never changes. The direct writer of the usual profile must give ``json.dumps``'s text exactly."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from crmsync.connectors.apsis.records import CHANNEL_EMAIL, CHANNEL_SMS, ApsisProfile, ConsentKey
from crmsync.daemon.integrations.efficy_apsis import rules
from crmsync.daemon.integrations.efficy_apsis.rules import fingerprint, profile_from_fingerprint


def dumps_text(profile: ApsisProfile) -> str:
    """The definition the stored fingerprints were made with (kept here as the reference)."""
    return json.dumps({
        "attributes": dict(sorted(profile.attributes.items())),
        "consents": sorted([ck.topic, ck.channel, kind] for ck, kind in profile.consents.items()),
        "tags": sorted(profile.tags),
    }, sort_keys=True, separators=(",", ":"), default=str)


texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=8) | st.sampled_from(
    ['a"b', "back\\slash", "tab\tnew\nline", "\x00\x1f\x7f", "é", "\u2028", "😀", "</script>", ""])
values = (st.none() | st.booleans() | texts | st.integers(min_value=-10**30, max_value=10**30)
          | st.floats(allow_nan=True, allow_infinity=True)
          | st.sampled_from([datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), date(2026, 1, 2)]))
slots = st.builds(ConsentKey, texts, st.sampled_from([CHANNEL_EMAIL, CHANNEL_SMS]))
profiles = st.builds(ApsisProfile, st.just("42"), st.dictionaries(texts, values, max_size=6),
                     st.dictionaries(slots, st.sampled_from(["opt-in", "opt-out"]), max_size=3),
                     st.frozensets(texts, max_size=3))


@settings(max_examples=500, deadline=None)
@given(profiles)
def test_fingerprint_text_is_the_json_dumps_text(profile: ApsisProfile) -> None:
    assert fingerprint(profile) == dumps_text(profile)


def test_a_demo_profile_reads_back_to_the_same_text() -> None:
    profile = ApsisProfile("7", {"com.apsis1.attributes.email": "zoë@example.com", "x": None, "n": 12, "b": True},
                           {ConsentKey("news", CHANNEL_EMAIL): "opt-in", ConsentKey("sms", CHANNEL_SMS): "opt-out"},
                           frozenset({"vip", "b"}))
    text = fingerprint(profile)
    assert text == dumps_text(profile)
    back = profile_from_fingerprint("7", text)
    assert back is not None and fingerprint(back) == text


def test_the_same_text_as_name_topic_kind_and_tag_and_more_names_than_remembered() -> None:
    """The direct writer remembers the JSON text of names, slots and tags (bounded): one string in every role,
    and more distinct ones than it keeps, still give json.dumps's text."""
    for word in ("name", "opt-in", 'q"uote', "é"):
        profile = ApsisProfile("1", {word: word, "x": None}, {ConsentKey(word, word): "opt-in",
                                                              ConsentKey("t", CHANNEL_SMS): "opt-out"},
                               frozenset({word, "opt-in"}))
        assert fingerprint(profile) == dumps_text(profile)
    for i in range(10_000):
        profile = ApsisProfile("1", {f"attr{i}": i, "n": f"v{i}"}, {ConsentKey(f"topic{i}", CHANNEL_EMAIL): "opt-in"},
                               frozenset({f"tag{i}", "vip"}))
        assert fingerprint(profile) == dumps_text(profile), i
    assert max(len(rules._name_texts), len(rules._slot_texts), len(rules._tag_texts)) <= 4097  # memory bounded
