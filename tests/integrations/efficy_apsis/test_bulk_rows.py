"""Where a write goes in the import files (:func:`bulk.import_row`) is made once per written contact of a bulk
sync, so it is written for speed; it must place every write exactly as its first definition (kept here as the
reference) did: the same slots in the same files, the same tag changes in or after the file, the same
attributes to clear and opt-outs to send per profile."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from crmsync.connectors.apsis.records import CHANNEL_EMAIL, CHANNEL_SMS, ApsisProfile, Consent, ConsentKey
from crmsync.daemon.integrations.efficy_apsis.bulk import ImportRow, addressed, import_row
from crmsync.daemon.integrations.efficy_apsis.rules import OPT_IN, OPT_OUT


def import_row_definition(desired: ApsisProfile, current: ApsisProfile | None, seen: ApsisProfile | None,
                          reported: Sequence[Consent], *, managed_tags: frozenset[str], tags_in_import: bool,
                          clear_in_import: bool, per_profile_optouts: Sequence[ConsentKey] = ()) -> ImportRow:
    opted_out = {c.key for c in reported if c.type == OPT_OUT}
    main: list[ConsentKey] = []
    resub: list[ConsentKey] = []
    outs: list[ConsentKey] = []
    for ck, kind in sorted(desired.consents.items(), key=lambda kv: (kv[0].topic, kv[0].channel)):
        if (seen is not None and seen.consents.get(ck) == kind) or ck in per_profile_optouts:
            continue
        if kind == OPT_OUT:
            outs.append(ck)
        elif ck in opted_out:
            resub.append(ck)
        else:
            main.append(ck)
    have = current.tags if current is not None else frozenset()
    add = desired.tags - have
    remove = (managed_tags - desired.tags) if current is None else (have & managed_tags) - desired.tags
    clear: tuple[str, ...] = ()
    if not clear_in_import and current is not None:
        clear = tuple(sorted(a for a, v in desired.attributes.items()
                             if v is None and current.attributes.get(a) is not None))
    in_file_add, in_file_remove = (tuple(sorted(add)), tuple(sorted(remove))) if tags_in_import else ((), ())
    post_add, post_remove = ((), ()) if tags_in_import else (tuple(sorted(add)), tuple(sorted(remove)))
    return ImportRow(tuple(main), tuple(resub), tuple(outs), in_file_add, in_file_remove, post_add,
                     post_remove, clear, tuple(per_profile_optouts))


slots = st.builds(ConsentKey, st.sampled_from(["news", "offers", "b"]), st.sampled_from([CHANNEL_EMAIL, CHANNEL_SMS]))
kinds = st.sampled_from([OPT_IN, OPT_OUT])
tags = st.frozensets(st.sampled_from(["vip", "gold", "q1", "other"]))
attributes = st.dictionaries(st.sampled_from(["a", "b", "c"]), st.none() | st.sampled_from(["x", ""]))
profiles = st.builds(ApsisProfile, st.just("7"), attributes, st.dictionaries(slots, kinds, max_size=4), tags)
reports = st.lists(st.builds(lambda ck, kind: Consent(ck.topic, ck.channel, kind), slots,
                             st.sampled_from([OPT_IN, OPT_OUT, "pending"])), max_size=3)


@settings(max_examples=500, deadline=None)
@given(profiles, st.none() | profiles, st.none() | profiles, reports, tags, st.booleans(), st.booleans(),
       st.lists(slots, unique=True, max_size=2).map(tuple))
def test_import_row_places_every_write_as_its_definition(
        desired: ApsisProfile, current: ApsisProfile | None, seen: ApsisProfile | None, reported: list[Consent],
        managed: frozenset[str], tags_in_import: bool, clear_in_import: bool,
        per_profile: tuple[ConsentKey, ...]) -> None:
    kwargs = {"managed_tags": managed, "tags_in_import": tags_in_import, "clear_in_import": clear_in_import,
              "per_profile_optouts": per_profile}
    got = import_row(desired, current, seen, reported, **kwargs)  # type: ignore[arg-type]
    want = import_row_definition(desired, current, seen, reported, **kwargs)  # type: ignore[arg-type]
    assert got == want and repr(got) == repr(want)
    assert list(vars(got)) == list(vars(want))


ADDRESSES = {CHANNEL_EMAIL: "a", CHANNEL_SMS: "b"}


def addressed_definition(desired: ApsisProfile, current: ApsisProfile | None
                         ) -> tuple[ApsisProfile, tuple[ConsentKey, ...]]:
    """addressed as first written: consents on channels without an address left out, except an opt-out
    where crmsync last sent an opt-in (kept, and written per profile)."""
    keep: dict[ConsentKey, str] = {}
    per_profile: list[ConsentKey] = []
    for ck, kind in desired.consents.items():
        if desired.attributes.get(ADDRESSES.get(ck.channel, "")):
            keep[ck] = kind
        elif kind == OPT_OUT and current is not None and current.consents.get(ck) == OPT_IN:
            keep[ck] = kind
            per_profile.append(ck)
    if len(keep) == len(desired.consents):
        return desired, tuple(per_profile)
    return ApsisProfile(desired.key, desired.attributes, keep, desired.tags), tuple(per_profile)


@settings(max_examples=500, deadline=None)
@given(profiles, st.none() | profiles)
def test_addressed_is_its_definition(desired: ApsisProfile, current: ApsisProfile | None) -> None:
    got, got_slots = addressed(desired, current, ADDRESSES)
    want, want_slots = addressed_definition(desired, current)
    assert got == want and got_slots == want_slots
    assert (got is desired) == (want is desired)  # the profile itself when nothing is left out
