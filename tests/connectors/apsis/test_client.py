"""ApsisClient against the simulator: auth, idempotent writes, limits, splitting, imports, errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
from structlog.testing import capture_logs
from trio.testing import MockClock

from crmsync.clock import WallClock
from crmsync.connectors.apsis.client import ApsisClient
from crmsync.connectors.apsis.problems import (
    ApsisAuthError,
    ApsisNotFoundError,
    ApsisPayloadTooLargeError,
    ApsisValidationError,
)
from crmsync.connectors.apsis.records import (
    ATTR_EMAIL,
    ATTR_FIRSTNAME,
    CHANNEL_EMAIL,
    CHANNEL_SMS,
    KEYSPACE_EXPORT,
    ApsisProfile,
    ConsentKey,
)
from crmsync.connectors.apsis.simulator import DEFAULT_ATTRIBUTES, ApsisSimulator
from crmsync.connectors.errors import RateLimitedError
from crmsync.connectors.http import RetryPolicy

from .conftest import SECRET

NEWS = "usercreated.topics.newsletter-a1b2c3"
OFFERS = "usercreated.topics.offers-d4e5f6"
VIP = "usercreated.tags.vip-ab12cd"
PROSPECT = "usercreated.tags.prospect-ef34gh"
MakeClient = Callable[..., ApsisClient]


def attr_calls(sim: ApsisSimulator) -> int:
    return sum(1 for method, path in sim.requests if method == "PATCH" and path.endswith("/attributes"))


# -- token handling -----------------------------------------------------------------------------------------


async def test_token_is_cached_across_many_requests(
    autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator
) -> None:
    for i in range(40):
        await client.create_profile(str(i))
    assert sim.token_requests == 1
    assert len(sim.profiles()) == 40


async def test_concurrent_requests_share_one_token_request(
    autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator
) -> None:
    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(client.create_profile, str(i))
    assert sim.token_requests == 1
    assert client.tokens.fetches == 1


async def test_token_renewed_before_expiry_without_a_401(
    autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator
) -> None:
    await client.create_profile("1")
    await trio.sleep(86400 - 300)  # inside the 10-minute renewal margin of a 24 h token
    await client.create_profile("2")
    assert sim.token_requests == 2
    # the second create went out once: no refused attempt was needed
    assert sum(1 for m, p in sim.requests if m == "POST" and p.endswith("/profiles")) == 2
    await trio.sleep(86400)
    await client.create_profile("3")
    assert sim.token_requests == 3


async def test_401_refreshes_once_and_retries(
    autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator
) -> None:
    await client.create_profile("1")
    sim.expire_tokens()
    await client.patch_attributes("1", {ATTR_EMAIL: "a@x.be"})
    assert sim.token_requests == 2
    assert attr_calls(sim) == 2  # refused once, then accepted with the new token
    assert sim.profile("1").attributes[ATTR_EMAIL] == "a@x.be"  # type: ignore[union-attr]


async def test_concurrent_401s_cause_a_single_refresh(
    autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator
) -> None:
    for i in range(10):
        sim.add_profile(str(i))
    await client.create_profile("x")
    sim.expire_tokens()
    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(client.patch_attributes, str(i), {ATTR_FIRSTNAME: f"n{i}"})
    assert sim.token_requests == 2
    assert all(sim.profile(str(i)).attributes[ATTR_FIRSTNAME] == f"n{i}" for i in range(10))  # type: ignore[union-attr]


async def test_persistent_401_gives_up_after_exactly_one_refresh(
    autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator
) -> None:
    sim.add_profile("1")
    sim.faults.fail(401, times=5, path_contains="/attributes")
    with pytest.raises(ApsisAuthError) as info:
        await client.patch_attributes("1", {ATTR_EMAIL: "a@x.be"})
    assert info.value.status == 401
    assert sim.token_requests == 2
    assert attr_calls(sim) == 2
    assert len(sim.faults.pending) == 3


async def test_expired_token_answered_with_403_is_refreshed(
    autojump_clock: MockClock, make_client: MakeClient, clock: WallClock
) -> None:
    sim = ApsisSimulator(
        clock,
        client_id="crmsync",
        client_secret=SECRET,
        expired_token_status=403,
    )
    client = make_client(sim, token_margin=0.0)
    await client.create_profile("1")
    await trio.sleep(86400 + 5)
    await client.create_profile("2")
    assert sim.token_requests == 2
    assert sim.profile("2") is not None


async def test_403_on_a_fresh_token_is_a_permission_error_not_a_refresh(
    autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator
) -> None:
    sim.add_profile("1", keyspace=KEYSPACE_EXPORT)
    await client.create_profile("1")
    with pytest.raises(ApsisAuthError) as info:
        await client.opt_in("1", NEWS, CHANNEL_EMAIL, keyspace=KEYSPACE_EXPORT)
    assert info.value.status == 403
    assert "manag" in info.value.message  # the API's own detail: subscriptions not manageable
    assert sim.token_requests == 1


async def test_bad_credentials_fail_without_leaking_the_secret(
    autojump_clock: MockClock, make_client: MakeClient
) -> None:
    client = make_client(client_secret="wrong-" + SECRET)
    with capture_logs() as logs, pytest.raises(ApsisAuthError) as info:
        await client.list_keyspaces()
    assert "Invalid client credentials" in str(info.value)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    assert SECRET not in repr(logs)


async def test_logs_never_carry_secret_or_token(
    autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator
) -> None:
    with capture_logs() as logs:
        await client.create_profile("1")
        sim.expire_tokens()
        await client.create_profile("2")
    token = client.tokens.current.value  # type: ignore[union-attr]
    assert logs, "expected token renewal and refusal events"
    assert SECRET not in repr(logs) and token not in repr(logs)
    assert token not in repr(client.tokens.current)


# -- profile writes ---------------------------------------------------------------------------------------


async def test_create_profile_409_is_success(
    autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator
) -> None:
    assert await client.create_profile("42") is True
    assert await client.create_profile("42") is False
    assert sim.writes["create_profile"] == 2
    assert sim.profile("42").attributes["com.apsis1.attributes.crmid"] == "42"  # type: ignore[union-attr]


async def test_merge_patch_attributes_sets_and_clears(
    autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator
) -> None:
    await client.create_profile("7")
    await client.patch_attributes("7", {ATTR_EMAIL: "j@x.be", ATTR_FIRSTNAME: "Jane"})
    assert await client.patch_attributes("7", {ATTR_FIRSTNAME: None}) == 1
    assert dict(sim.profile("7").attributes) == {  # type: ignore[union-attr]
        "com.apsis1.attributes.crmid": "7",
        ATTR_EMAIL: "j@x.be",
    }
    assert await client.patch_attributes("7", {}) == 0
    assert sim.writes["patch_attributes"] == 2


async def test_v2_attributes_never_create_a_profile(
    autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator
) -> None:
    with pytest.raises(ApsisNotFoundError):
        await client.patch_attributes("nobody", {ATTR_EMAIL: "n@x.be"})
    assert sim.profile("nobody") is None


async def test_problem_json_is_parsed_into_a_typed_error(
    autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator
) -> None:
    sim.add_profile("1")
    with pytest.raises(ApsisValidationError) as info:
        await client.patch_attributes("1", {"usercreated.attributes.nope": 1})
    assert info.value.status == 400
    assert "Validation failed" in info.value.message
    assert "Unknown attribute(s): usercreated.attributes.nope" in info.value.message


async def test_list_attributes_gives_discriminators_and_versions(
    autojump_clock: MockClock, client: ApsisClient
) -> None:
    versions = await client.attribute_versions()
    assert set(versions) == {d for d, _, _ in DEFAULT_ATTRIBUTES}
    assert all(v.endswith("-v1") for v in versions.values())


# -- consents -----------------------------------------------------------------------------------------------


async def test_consent_opt_in_out_and_409_as_success(
    autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator
) -> None:
    await client.create_profile("1")
    assert await client.opt_in("1", NEWS, CHANNEL_EMAIL) == "created"
    assert await client.opt_in("1", NEWS, CHANNEL_EMAIL) == "unchanged"  # 409 from the API
    assert await client.opt_out("1", NEWS, CHANNEL_EMAIL, reason="CRM profile removed") == "changed"
    await client.opt_in("1", OFFERS, CHANNEL_SMS)
    assert sim.consents_of("1") == {
        ConsentKey(NEWS, CHANNEL_EMAIL): "opt-out",
        ConsentKey(OFFERS, CHANNEL_SMS): "opt-in",
    }
    outs = await client.get_consents("1", types=["opt-out"])
    assert [(c.topic, c.channel, c.type, c.reason) for c in outs] == [
        (NEWS, CHANNEL_EMAIL, "opt-out", "CRM profile removed")
    ]
    assert len(await client.get_consents("1")) == 2


async def test_backflow_finds_profiles_that_unsubscribed(
    autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator
) -> None:
    for i in range(8):
        sim.add_profile(str(i), {ATTR_EMAIL: f"p{i}@x.be"}, consents={ConsentKey(NEWS, CHANNEL_EMAIL): "opt-in"})
    sim.opt_out("3", NEWS, CHANNEL_EMAIL)
    sim.opt_out("6", NEWS, CHANNEL_EMAIL)
    sim.opt_out("5", NEWS, CHANNEL_SMS)  # other channel: not this mapping
    keys = [str(i) for i in range(8)] + ["unknown"]
    assert await client.opted_out_profiles(keys, NEWS, CHANNEL_EMAIL) == ["3", "6"]
    [c] = await client.get_consents("3", types=["opt-out"])
    assert c.source == "Unsubscribe link" and c.modified_at is not None
    assert sim.write_calls == 0


# -- tags -------------------------------------------------------------------------------------------------


async def test_tags_add_and_remove(autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator) -> None:
    await client.create_profile("1")
    assert await client.patch_tags("1", add=[VIP, PROSPECT]) == 1
    assert await client.get_tags("1") == {VIP, PROSPECT}
    await client.patch_tags("1", remove=[PROSPECT])
    assert sim.tags_of("1") == {VIP}
    assert await client.patch_tags("1") == 0
    assert sim.writes["patch_tags"] == 2


# -- upsert -------------------------------------------------------------------------------------------------


async def test_upsert_writes_only_what_changed(
    autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator
) -> None:
    first = ApsisProfile(
        key="9",
        attributes={ATTR_EMAIL: "n@x.be"},
        consents={ConsentKey(NEWS, CHANNEL_EMAIL): "opt-in"},
        tags=frozenset({VIP}),
    )
    result = await client.upsert_profile(first, managed_tags=[VIP, PROSPECT])
    assert result.created and result.writes == 4
    assert sim.tags_of("9") == {VIP}
    before = sim.write_calls
    unchanged = await client.upsert_profile(first, current=first)
    assert unchanged.writes == 0 and sim.write_calls == before
    second = ApsisProfile(
        key="9",
        attributes={ATTR_EMAIL: "n@x.be", ATTR_FIRSTNAME: "N"},
        consents={ConsentKey(NEWS, CHANNEL_EMAIL): "opt-in"},
    )
    changed = await client.upsert_profile(second, current=first, managed_tags=[VIP])
    assert (changed.attribute_requests, changed.consents_written, changed.tag_requests) == (1, 0, 1)
    assert sim.writes["patch_attributes"] == 2 and sim.tags_of("9") == frozenset()


# -- body size --------------------------------------------------------------------------------------------


async def test_large_attribute_patch_is_split_so_no_413(
    autojump_clock: MockClock, make_client: MakeClient, clock: WallClock
) -> None:
    attrs = [(f"usercreated.attributes.f{i}", f"F{i}", "string") for i in range(250)]
    sim = ApsisSimulator(
        clock,
        client_id="crmsync",
        client_secret=SECRET,
        attributes=attrs,
    )
    client = make_client(sim)
    sim.add_profile("1")
    patch = {d: "é" * 500 for d, _, _ in attrs}  # ~250 kB of UTF-8
    sent = await client.patch_attributes("1", patch)
    assert sent >= 3
    assert sim.writes["patch_attributes"] == sent
    assert {k: v for k, v in sim.profile("1").attributes.items() if k in patch} == patch  # type: ignore[union-attr]
    # the same body unsplit is what the API refuses: the simulator would answer 413
    careless = make_client(sim, max_body_bytes=10_000_000)
    with pytest.raises(ApsisPayloadTooLargeError) as info:
        await careless._send_json(
            "PATCH",
            careless._profile_path("1", "attributes", v2=True),
            patch,
            content_type="application/merge-patch+json",
        )
    assert info.value.status == 413


async def test_oversized_body_is_refused_locally(
    autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator
) -> None:
    sent_before = len(sim.requests)
    with pytest.raises(ApsisPayloadTooLargeError):
        await client.create_profile("k" * 200_000)
    assert len(sim.requests) == sent_before


# -- retries and rate limits ------------------------------------------------------------------------------


async def test_injected_429_is_retried_honouring_retry_after(
    autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator
) -> None:
    await client.list_keyspaces()
    sim.faults.fail(429, times=2, retry_after=3, path_contains="/profiles")
    start = trio.current_time()
    assert await client.create_profile("1") is True
    assert trio.current_time() - start >= 6
    assert sim.faults.injected == 2 and sim.profile("1") is not None


async def test_429_beyond_the_retry_budget_surfaces(
    autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator
) -> None:
    sim.faults.fail(429, times=10, retry_after=1, path_contains="/profiles")
    with pytest.raises(RateLimitedError) as info:
        await client.create_profile("1")
    assert "Too many requests" in info.value.message


async def test_malformed_body_is_retried(autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator) -> None:
    sim.faults.malformed(times=2, path_contains="/attributes")
    attrs = await client.list_attributes()
    assert len(attrs) == len(DEFAULT_ATTRIBUTES)
    assert sum(1 for m, p in sim.requests if p.endswith("/sections/com.apsis1.sections.default/attributes")) == 3


async def test_client_rate_keeps_under_100_per_second(
    autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator
) -> None:
    async with trio.open_nursery() as nursery:
        for i in range(300):
            nursery.start_soon(client.create_profile, str(i))
    assert len(sim.profiles()) == 300
    assert sim.rate_limited == 0


async def test_without_client_rate_the_simulator_throttles_and_retries_recover(
    autojump_clock: MockClock, make_client: MakeClient, sim: ApsisSimulator
) -> None:
    # a generous retry budget: with 300 simultaneous callers, full jitter needs a few rounds
    client = make_client(rate_limit=None, max_concurrency=300, retry=RetryPolicy(attempts=30))
    async with trio.open_nursery() as nursery:
        for i in range(300):
            nursery.start_soon(client.create_profile, str(i))
    assert sim.rate_limited > 0
    assert len(sim.profiles()) == 300


# -- bulk imports -----------------------------------------------------------------------------------------


def _profiles(n: int, start: int = 0) -> list[ApsisProfile]:
    return [
        ApsisProfile(
            key=str(i),
            attributes={ATTR_EMAIL: f"p{i}@x.be", ATTR_FIRSTNAME: f"P{i}"},
            consents={ConsentKey(NEWS, CHANNEL_EMAIL): "opt-in" if i % 3 else "opt-out"},
        )
        for i in range(start, start + n)
    ]


async def test_import_end_to_end(autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator) -> None:
    sim.add_profile("0", consents={ConsentKey(NEWS, CHANNEL_EMAIL): "opt-in"})
    sim.add_profile("1", consents={ConsentKey(NEWS, CHANNEL_EMAIL): "opt-out"})
    results = await client.import_profiles(_profiles(30))
    assert [r.status for r in results] == ["completed", "completed"]
    assert [r.rows for r in results] == [30, 10]
    assert len(sim.profiles()) == 30
    assert sim.profile("4").attributes[ATTR_FIRSTNAME] == "P4"  # type: ignore[union-attr]
    assert sim.consents_of("3") == {ConsentKey(NEWS, CHANNEL_EMAIL): "opt-out"}
    assert sim.consents_of("0") == {ConsentKey(NEWS, CHANNEL_EMAIL): "opt-out"}
    # an existing opt-out is not overwritten by a bulk opt-in (resubscribe_if_opted_out defaults to False)
    assert sim.consents_of("1") == {ConsentKey(NEWS, CHANNEL_EMAIL): "opt-out"}
    assert sim.writes["upload"] == 2 and sim.rate_limited == 0


async def test_import_limiter_respects_3_pending_and_10_per_minute(
    autojump_clock: MockClock, make_client: MakeClient, sim: ApsisSimulator
) -> None:
    client = make_client(import_poll_interval=0.5)
    versions = await client.attribute_versions()
    from crmsync.connectors.apsis.records import build_imports

    files = [
        f
        for i in range(12)
        for f in build_imports([ApsisProfile(key=f"{i}", attributes={ATTR_EMAIL: f"{i}@x.be"})], versions)
    ]
    assert len(files) == 12
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for f in files:
            nursery.start_soon(client.run_import, f)
    assert sim.rate_limited == 0
    assert sim.max_concurrent_imports_seen == 3
    assert trio.current_time() - start >= 60  # the 11th creation waited for the minute to pass
    assert len(sim.profiles()) == 12


async def test_import_ending_in_error_raises(
    autojump_clock: MockClock, client: ApsisClient, sim: ApsisSimulator
) -> None:
    from crmsync.connectors.apsis.problems import ImportFailedError
    from crmsync.connectors.apsis.records import ImportFile

    versions = await client.attribute_versions()
    request = {
        "keyspace_mapping": {"keyspace_discriminator": "com.apsis1.keyspaces.crm-id", "field_selector": "crm_id"},
        "attribute_mappings": [{"field_selector": "mail", "attribute_version_id": versions[ATTR_EMAIL]}],
    }
    with pytest.raises(ImportFailedError, match="error"):
        await client.run_import(ImportFile(request=request, csv=b"id,mail\n1,a@x.be\n", rows=1))
