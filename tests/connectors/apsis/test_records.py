"""Pure record builders: merge-patches, consent bodies, tags, import files and the byte-size chunker."""

from __future__ import annotations

import base64
import csv
import io
import json

import pytest

from crmsync.connectors.apsis.auth import ClientCredentials, token_lifetime
from crmsync.connectors.apsis.records import (
    ATTR_EMAIL,
    ATTR_FIRSTNAME,
    ATTR_MOBILE,
    CHANNEL_EMAIL,
    CHANNEL_SMS,
    ApsisProfile,
    ConsentKey,
    ImportSettings,
    ItemTooLargeError,
    attributes_patch,
    build_imports,
    chunk_by_size,
    consent_body,
    consent_column,
    dumps,
    parse_tags,
    split_list,
    split_patch,
    tags_patch,
)

NEWS = "usercreated.topics.newsletter-a1b2c3"
OFFERS = "usercreated.topics.offers-d4e5f6"
VERSIONS = {ATTR_EMAIL: "v-email", ATTR_FIRSTNAME: "v-first", ATTR_MOBILE: "v-mobile"}


def test_chunk_by_size_keeps_order_and_every_group_within_limit() -> None:
    items = [{"id": i, "pad": "x" * (i % 7 * 10)} for i in range(500)]
    groups = split_list(items, max_bytes=1_000)
    assert len(groups) > 1
    assert [item for group in groups for item in group] == items
    assert all(len(dumps(group)) <= 1_000 for group in groups)


def test_chunk_by_size_fills_groups_exactly_to_the_limit() -> None:
    # 10 items of 9 bytes: [a,b] = 2 + 9 + 1 + 9 = 21 bytes; a limit of 21 fits two, not three.
    groups = list(chunk_by_size(["123456789"] * 10, 21, size=len))
    assert [len(g) for g in groups] == [2] * 5


def test_chunk_by_size_refuses_an_item_that_can_never_fit() -> None:
    with pytest.raises(ItemTooLargeError):
        list(chunk_by_size(["x" * 50], 40, size=len))


def test_split_patch_parts_fit_and_recombine() -> None:
    patch: dict[str, str | None] = {f"usercreated.attributes.f{i}": "v" * 900 for i in range(300)}
    patch["usercreated.attributes.gone"] = None
    parts = split_patch(patch, 100_000)
    assert len(parts) == 3
    assert all(len(dumps(p)) <= 100_000 for p in parts)
    merged: dict[str, object] = {}
    for p in parts:
        merged.update(p)
    assert merged == patch
    assert split_patch({}) == []


def test_attributes_patch_sends_only_changes_and_null_clears() -> None:
    current = {ATTR_EMAIL: "a@x.be", ATTR_FIRSTNAME: "Jane", "usercreated.attributes.old": "1"}
    desired = {ATTR_EMAIL: "a@x.be", ATTR_FIRSTNAME: "Janet"}
    assert attributes_patch(desired, current, clear=["usercreated.attributes.old", "usercreated.x"]) == {
        ATTR_FIRSTNAME: "Janet", "usercreated.attributes.old": None}
    assert attributes_patch(desired, dict(desired)) == {}
    assert attributes_patch(desired) == desired


def test_consent_body_shape_and_refusals() -> None:
    assert consent_body(NEWS, CHANNEL_EMAIL, "opt-out", reason="CRM") == {
        "topic_discriminator": NEWS, "channel_discriminator": CHANNEL_EMAIL, "type": "opt-out", "reason": "CRM"}
    with pytest.raises(ValueError):
        consent_body(NEWS, CHANNEL_EMAIL, "confirmed-opt-in")
    with pytest.raises(ValueError):
        consent_body(NEWS, "com.apsis1.channels.fax", "opt-in")


def test_tags_patch_and_parse() -> None:
    assert tags_patch(add=["a"], remove=["b", "a"]) == {"a": True, "b": False}
    assert parse_tags({"a": True, "b": False, "c": None}) == {"a"}
    assert parse_tags({"items": [{"discriminator": "a"}, "b"]}) == {"a", "b"}


def test_profile_refuses_unwritable_consent_types() -> None:
    with pytest.raises(ValueError):
        ApsisProfile(key="1", consents={ConsentKey(NEWS, CHANNEL_EMAIL): "pending-opt-in"})


def _rows(file_csv: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(file_csv.decode())))


def test_build_imports_one_file_per_consent_type_with_address_columns() -> None:
    profiles = [
        ApsisProfile(key="1", attributes={ATTR_EMAIL: "a@x.be", ATTR_FIRSTNAME: "Ann"},
                     consents={ConsentKey(NEWS, CHANNEL_EMAIL): "opt-in",
                               ConsentKey(OFFERS, CHANNEL_SMS): "opt-out"}),
        ApsisProfile(key="2", attributes={ATTR_EMAIL: "b@x.be", ATTR_MOBILE: "+3247"},
                     consents={ConsentKey(NEWS, CHANNEL_EMAIL): "opt-out"}),
        ApsisProfile(key="3", attributes={ATTR_FIRSTNAME: "Cy"}),
    ]
    opt_in, opt_out = build_imports(profiles, VERSIONS)
    assert opt_in.rows == 3 and opt_out.rows == 2
    rows = _rows(opt_in.csv)
    assert rows[0] == {"crm_id": "1", ATTR_EMAIL: "a@x.be", ATTR_FIRSTNAME: "Ann", ATTR_MOBILE: "",
                       consent_column(ConsentKey(NEWS, CHANNEL_EMAIL)): "1"}
    assert rows[1][consent_column(ConsentKey(NEWS, CHANNEL_EMAIL))] == "0"
    out_rows = _rows(opt_out.csv)
    assert [r["crm_id"] for r in out_rows] == ["1", "2"]
    assert set(out_rows[0]) == {"crm_id", ATTR_EMAIL, ATTR_MOBILE, consent_column(ConsentKey(NEWS, CHANNEL_EMAIL)),
                                consent_column(ConsentKey(OFFERS, CHANNEL_SMS))}
    req = opt_out.request
    assert req["keyspace_mapping"] == {"keyspace_discriminator": "com.apsis1.keyspaces.crm-id",
                                       "field_selector": "crm_id"}
    assert req["options"] == {"update_existing_profiles": True, "clear_existing_attributes": False}
    by_address = {m["address_field_selector"]: m["consents"] for m in req["consent_mappings"]}
    assert [c["topic_discriminator"] for c in by_address[ATTR_MOBILE]] == [OFFERS]
    assert by_address[ATTR_EMAIL][0]["type"] == "opt-out"
    assert by_address[ATTR_EMAIL][0]["resubscribe_if_opted_out"] is False
    assert {m["attribute_version_id"] for m in opt_in.request["attribute_mappings"]} == set(VERSIONS.values())


def test_build_imports_splits_files_by_size_and_needs_versions() -> None:
    profiles = [ApsisProfile(key=str(i), attributes={ATTR_EMAIL: f"p{i}@example.com"}) for i in range(200)]
    files = build_imports(profiles, VERSIONS, ImportSettings(max_file_bytes=2_000))
    assert len(files) > 1
    assert all(len(f.csv) <= 2_000 for f in files)
    assert sum(f.rows for f in files) == 200
    assert all(f.csv.startswith(b"crm_id,") for f in files)
    with pytest.raises(ValueError, match="version"):
        build_imports(profiles, {})


def _jwt(claims: dict[str, object]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"e30.{body}.sig"


def test_token_lifetime_takes_the_shorter_of_expires_in_and_exp() -> None:
    assert token_lifetime({"access_token": _jwt({"exp": 1_000 + 600}), "expires_in": 86400}, 1_000, 5) == 600
    assert token_lifetime({"access_token": "opaque", "expires_in": 86400}, 1_000, 5) == 86400
    assert token_lifetime({"access_token": "opaque"}, 1_000, 5) == 5


def test_credentials_repr_hides_the_secret() -> None:
    assert "hunter2" not in repr(ClientCredentials("id", "hunter2"))
