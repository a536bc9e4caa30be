"""EveryActionClient against the simulator: auth, error envelope, retries, people, exports."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import httpx
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from crmsync.clock import WallClock
from crmsync.connectors.errors import (
    AuthError,
    FatalApiError,
    NotFoundError,
    RateLimitedError,
    RetriableApiError,
)
from crmsync.connectors.everyaction.client import EveryActionClient
from crmsync.connectors.everyaction.errors import (
    ExportColumnMissingError,
    ExportFileExpiredError,
    ExportJobFailedError,
    ExportJobTimeoutError,
    UnmatchableCandidateError,
)
from crmsync.connectors.everyaction.records import OptInStatus, match_candidate
from crmsync.connectors.everyaction.simulator import SIM_API_KEY, EveryActionSimulator, decode_basic
from crmsync.connectors.simkit import asgi_client

from .conftest import APP_NAME, make_client

OTHER_KEY = "00000000-1111-2222-3333-444444444444"

# -- auth and errors ---------------------------------------------------------------------------------------


async def test_basic_auth_is_app_name_and_key_with_mode(sim: EveryActionSimulator, http: httpx.AsyncClient
                                                        ) -> None:
    seen: list[str] = []

    async def hook(request: httpx.Request) -> None:
        seen.append(request.headers.get("authorization", ""))

    http.event_hooks["request"] = [hook]
    van_id = sim.add_person("Ann", "Lee", email="ann@example.org")
    client = make_client(http, db_mode=1)
    assert (await client.get_person(van_id)).first_name == "Ann"
    assert decode_basic(seen[-1]) == (APP_NAME, f"{SIM_API_KEY}|1")
    assert SIM_API_KEY not in repr(client)

    # Mode 0 is another dataset: the same vanId does not exist there.
    with pytest.raises(NotFoundError):
        await make_client(http, db_mode=0).get_person(van_id)
    assert decode_basic(seen[-1]) == (APP_NAME, f"{SIM_API_KEY}|0")


def test_constructor_validates_without_echoing_key() -> None:
    with pytest.raises(ValueError) as info:
        EveryActionClient(APP_NAME, SIM_API_KEY, db_mode=2)
    assert SIM_API_KEY not in str(info.value)
    with pytest.raises(ValueError):
        EveryActionClient("", SIM_API_KEY)


async def test_wrong_key_is_auth_error_not_retried_and_not_leaked(sim: EveryActionSimulator,
                                                                  http: httpx.AsyncClient) -> None:
    van_id = sim.add_person("Ann", "Lee", email="ann@example.org")
    client = make_client(http, api_key=OTHER_KEY)
    before = len(sim.requests)
    with capture_logs() as logs, pytest.raises(AuthError) as info:
        await client.get_person(van_id)
    assert info.value.status == 401 and info.value.code == "UNAUTHORIZED"
    assert "Authorization has been denied" in info.value.message
    assert len(sim.requests) == before + 1
    assert OTHER_KEY not in str(info.value) and OTHER_KEY not in repr(logs)


async def test_error_envelope_message_code_and_properties(sim: EveryActionSimulator,
                                                          client: EveryActionClient) -> None:
    van_id = sim.add_person("Ann", "Lee", email="ann@example.org")
    with pytest.raises(FatalApiError) as info:
        await client.update_person(van_id, {"phones": [{"phoneNumber": "1507"}]})
    err = info.value
    assert not isinstance(err, RetriableApiError)
    assert err.status == 400 and err.code == "INVALID_PARAMETER"
    assert "'phoneNumber' (1507) is not a valid phone number for NorthAmerica." in err.message
    assert "phones[0].phoneNumber" in err.message

    # Words are output-only: sending one where VAN wants a code is refused.
    with pytest.raises(FatalApiError, match="phoneOptInStatus"):
        await client.update_person(van_id, {"phones": [{"phoneNumber": "4142020792",
                                                        "phoneOptInStatus": "Opt-Out"}]})


async def test_unknown_van_id_is_not_found(client: EveryActionClient) -> None:
    with pytest.raises(NotFoundError) as info:
        await client.get_person(999)
    assert info.value.code == "NOT_FOUND"
    with pytest.raises(NotFoundError):
        await client.set_phone_opt_in(999, "4142020792", OptInStatus.OPT_OUT)


async def test_restricted_expansion_is_forbidden(sim: EveryActionSimulator, client: EveryActionClient) -> None:
    van_id = sim.add_person("Ann", "Lee", email="ann@example.org")
    with pytest.raises(AuthError) as info:
        await client.get_person(van_id, expand=("phones", "scores"))
    assert info.value.status == 403 and info.value.code == "FORBIDDEN"


# -- retries -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["429", "503", "drop", "malformed"])
async def test_transient_failures_are_retried(fault: str, sim: EveryActionSimulator, client: EveryActionClient,
                                              autojump_clock: trio.testing.MockClock) -> None:
    van_id = sim.add_person("Ann", "Lee", email="ann@example.org")
    if fault == "429":
        sim.faults.fail(429, retry_after=7, path_contains="/people/")
    elif fault == "503":
        sim.faults.fail(503, times=2, path_contains="/people/")
    elif fault == "drop":
        sim.faults.drop(path_contains="/people/")
    else:
        sim.faults.malformed(path_contains="/people/")
    injected = len(sim.faults.pending)
    started = trio.current_time()
    with capture_logs() as logs:
        person = await client.get_person(van_id)
    assert person.van_id == van_id and person.preferred_email == "ann@example.org"
    assert sim.faults.injected == injected and not sim.faults.pending
    retries = [e for e in logs if e["event"] == "api_retry"]
    assert len(retries) == injected
    assert SIM_API_KEY not in repr(logs)
    if fault == "429":
        assert trio.current_time() - started >= 7  # honoured Retry-After


async def test_retries_give_up(sim: EveryActionSimulator, client: EveryActionClient,
                               autojump_clock: trio.testing.MockClock) -> None:
    van_id = sim.add_person("Ann", "Lee", email="ann@example.org")
    sim.faults.fail(429, times=10, retry_after=1)
    with pytest.raises(RateLimitedError) as info:
        await client.get_person(van_id)
    assert info.value.code == "TOO_MANY_REQUESTS"
    assert sim.faults.injected == client.retry.attempts


async def test_400_internal_server_error_is_not_retried(sim: EveryActionSimulator, client: EveryActionClient
                                                       ) -> None:
    sim.faults.fail(400, path_contains="/people/")
    with pytest.raises(FatalApiError) as info:
        await client.get_person(1)
    assert info.value.status == 400 and len(sim.requests) == 1


# -- people: find / findOrCreate / update ------------------------------------------------------------------


async def test_find_matches_by_minimum_combinations(sim: EveryActionSimulator, client: EveryActionClient
                                                    ) -> None:
    josé = sim.add_person("José", "Núñez", email="jose@example.org", phone="4142020792", zip="60622",
                          address_line1="900 N Washtenaw Ave", date_of_birth="1975-09-18")
    sim.add_person("Other", "Person", email="other@example.org", phone="2025550143")
    found = client.find_person
    assert await found(match_candidate(email="JOSE@example.org")) == josé
    assert await found(match_candidate(first_name="jose", last_name="nunez", phone="+1 414 202 0792")) == josé
    assert await found(match_candidate(first_name="Jose", last_name="Nunez", zip="60622-1234",
                                       date_of_birth="1975-09-18")) == josé
    assert await found(match_candidate(first_name="Jose", last_name="Nunez", zip="60622",
                                       address_line1="900 n washtenaw ave")) == josé
    # Right phone, wrong name: no combination holds, so no match (404 -> None).
    assert await found(match_candidate(first_name="Ann", last_name="Nunez", phone="4142020792")) is None
    assert await found(match_candidate(email="nobody@example.org")) is None


async def test_find_refuses_unmatchable_candidate_locally(sim: EveryActionSimulator,
                                                          client: EveryActionClient) -> None:
    sim.add_person("Ann", "Lee", email="ann@example.org")
    with pytest.raises(UnmatchableCandidateError):
        await client.find_person(match_candidate(first_name="Ann", last_name="Lee"))
    with pytest.raises(UnmatchableCandidateError):
        await client.find_or_create(match_candidate(first_name="Ann", last_name="Lee", zip="60622"))
    assert sim.requests == []  # nothing was sent
    assert len(sim.people()) == 1


@pytest.mark.parametrize("style", ["match", "person", "redirect"])
async def test_find_reads_van_id_from_any_match_shape(style: str, wall: WallClock) -> None:
    sim = EveryActionSimulator(wall, find_response=style)  # type: ignore[arg-type]
    async with asgi_client(sim) as http:
        van_id = sim.add_person("Ann", "Lee", email="ann@example.org")
        assert await make_client(http).find_person(match_candidate(email="ann@example.org")) == van_id


async def test_find_or_create_creates_then_matches(sim: EveryActionSimulator, client: EveryActionClient) -> None:
    candidate = match_candidate(first_name="Ann", last_name="Lee", phone="4142020792",
                                phone_opt_in=OptInStatus.OPT_IN, email="ann@example.org")
    created = await client.find_or_create(candidate)
    assert created.created and created.status == "UnmatchedStored"
    again = await client.find_or_create(candidate)
    assert not again.created and again.van_id == created.van_id
    assert [p.van_id for p in sim.people()] == [created.van_id]
    phone = sim.person(created.van_id).phone("4142020792")
    assert phone is not None and phone.opt_in is OptInStatus.OPT_IN and phone.phone_type == "Cell"


async def test_opt_in_and_identifier_visible_with_expand(sim: EveryActionSimulator, client: EveryActionClient
                                                         ) -> None:
    van_id = sim.add_person("Ann", "Lee", email="ann@example.org", phone="4142020792")
    assert (await client.get_person(van_id)).phones[0].opt_in is OptInStatus.UNKNOWN  # type: ignore[index]

    await client.set_phone_opt_in(van_id, "+14142020792", OptInStatus.OPT_OUT)
    await client.add_identifier(van_id, "mc-profile-42", id_type="mobilecommonsid")

    person = await client.get_person(van_id, expand=("phones", "externalIds"))
    phone = person.phone("4142020792")
    assert phone is not None and phone.opt_in is OptInStatus.OPT_OUT and phone.sms_opt_in is OptInStatus.OPT_OUT
    assert person.identifier("mobilecommonsid") == "mc-profile-42"
    assert person.emails is None  # not expanded
    # The alternate-ID route finds the same person.
    assert (await client.get_person("mobilecommonsid:mc-profile-42")).van_id == van_id

    # A phone the person does not have yet is added with its status.
    await client.set_phone_opt_in(van_id, "2025550143", OptInStatus.OPT_IN)
    added = (await client.get_person(van_id)).phone("2025550143")
    assert added is not None and added.opt_in is OptInStatus.OPT_IN


async def test_opt_in_is_per_phone_not_per_person(sim: EveryActionSimulator, client: EveryActionClient) -> None:
    a = sim.add_person("Ann", "Lee", phone="4142020792", phone_opt_in=OptInStatus.OPT_IN)
    b = sim.add_person("Bo", "Lee", phone="4142020792")
    await client.set_phone_opt_in(a, "4142020792", OptInStatus.OPT_OUT)
    shared = (await client.get_person(b)).phone("4142020792")
    assert shared is not None and shared.opt_in is OptInStatus.OPT_OUT


async def test_null_collections_without_expand(sim: EveryActionSimulator, client: EveryActionClient) -> None:
    van_id = sim.add_person("Ann", "Lee", email="ann@example.org", phone="4142020792")
    bare = await client.get_person(van_id, expand=None)
    assert bare.first_name == "Ann"
    assert bare.phones is None and bare.emails is None and bare.addresses is None and bare.identifiers is None
    expanded = await client.get_person(van_id, expand=("addresses", "phones"))
    assert expanded.addresses == () and expanded.phones is not None and len(expanded.phones) == 1


async def test_search_people_follows_next_page_link(sim: EveryActionSimulator, client: EveryActionClient
                                                    ) -> None:
    ids = [sim.add_person(f"Ann{i}", "Lee", email=f"ann{i}@example.org") for i in range(5)]
    sim.add_person("Bo", "Kim")
    found = [p async for p in client.search_people(lastName="le", page_size=2)]
    assert [p.van_id for p in found] == ids
    assert found[0].emails is not None  # default expansions applied on every page
    assert sum(1 for _m, path in sim.requests if path == "/v4/people") == 3


# -- changed-entity exports --------------------------------------------------------------------------------


async def test_export_window_across_several_files(sim: EveryActionSimulator, client: EveryActionClient,
                                                  wall: WallClock, autojump_clock: trio.testing.MockClock
                                                  ) -> None:
    before = sim.add_person("Early", "Bird", phone="2025550143")
    await trio.sleep(3600)
    since = wall.now()
    changed = [sim.add_person(f"P{i}", "Lee", phone="4142020792", phone_opt_in=OptInStatus.OPT_IN)
               for i in range(4)]
    await trio.sleep(60)
    sim.set_phone_opt_in(before, "2025550143", OptInStatus.OPT_OUT)  # a user change inside the window
    await trio.sleep(60)
    until = wall.now()
    await trio.sleep(60)
    sim.add_person("Late", "Comer")  # after the window

    started = trio.current_time()
    with capture_logs() as logs:
        rows = [r async for r in client.changed_contacts(since, until)]
    assert not [e for e in logs if e["event"] == "everyaction_export_count_mismatch"]

    assert sorted(r.van_id for r in rows) == sorted([before, *changed])
    assert len(sim.downloads) == 3  # 5 rows at 2 rows per file: all three files were read
    assert sim.downloads_with_auth == 0
    assert trio.current_time() - started >= 2 * client.poll_interval  # polled on trio time
    by_id = {r.van_id: r for r in rows}
    assert by_id[before].phone_opt_in is OptInStatus.OPT_OUT and by_id[before].phone == "+12025550143"
    assert by_id[changed[0]].phone_opt_in is OptInStatus.OPT_IN and by_id[changed[0]].first_name == "P0"


async def test_export_tab_delimited_float_codes(wall: WallClock, autojump_clock: trio.testing.MockClock
                                                ) -> None:
    sim = EveryActionSimulator(wall, csv_delimiter="\t", opt_in_as_float=True, polls_to_complete=1)
    async with asgi_client(sim) as http:
        since = wall.now()
        await trio.sleep(1)
        van_id = sim.add_person("Ann", "Lee", phone="4142020792", phone_opt_in=OptInStatus.OPT_OUT)
        await trio.sleep(1)
        rows = [r async for r in make_client(http).changed_contacts(since, wall.now())]
    assert [(r.van_id, r.phone_opt_in, r.phone) for r in rows] == [(van_id, OptInStatus.OPT_OUT, "+14142020792")]


async def test_export_excludes_own_changes_and_reports_window(sim: EveryActionSimulator,
                                                              client: EveryActionClient, wall: WallClock,
                                                              autojump_clock: trio.testing.MockClock) -> None:
    mine = sim.add_person("Ann", "Lee", phone="4142020792")
    theirs = sim.add_person("Bo", "Kim", phone="2025550143")
    await trio.sleep(10)
    since = wall.now()
    await client.set_phone_opt_in(mine, "4142020792", OptInStatus.OPT_OUT)  # our own write: an echo
    sim.edit_person(theirs, first_name="Bob")
    await trio.sleep(10)
    job = await client.run_contacts_export(since)  # until=None: the server picks "now"
    rows = [r async for r in client.iter_export_rows(job)]
    assert [r.van_id for r in rows] == [theirs] and rows[0].first_name == "Bob"
    assert job.date_changed_to is not None and job.date_changed_to >= since
    assert job.date_changed_to.utcoffset() in (timedelta(hours=-4), timedelta(hours=-5))  # server offset


async def test_issue7_11_a_column_missing_from_the_first_file_is_an_error_naming_it(
        sim: EveryActionSimulator, http: httpx.AsyncClient, wall: WallClock,
        autojump_clock: trio.testing.MockClock) -> None:
    sim.add_person("Ann", "Lee", phone="4142020792")
    await trio.sleep(1)  # export windows are [from, to)
    client = make_client(http, contact_fields=("VanID", "FirstName", "FavouriteColour"))
    job = await client.run_contacts_export(wall.now() - timedelta(days=1))
    with pytest.raises(ExportColumnMissingError) as info:
        [r async for r in client.iter_export_rows(job)]
    assert info.value.columns == ("FavouriteColour",)
    assert "FavouriteColour" in str(info.value)


async def test_export_rows_are_read_by_the_requested_column_names(
        sim: EveryActionSimulator, http: httpx.AsyncClient, wall: WallClock,
        autojump_clock: trio.testing.MockClock) -> None:
    van = sim.add_person("Ann", "Lee", phone="4142020792")
    await trio.sleep(1)  # export windows are [from, to)
    client = make_client(http, contact_fields=("VanID", "FirstName", "Phone"))
    job = await client.run_contacts_export(wall.now() - timedelta(days=1))
    rows = [r async for r in client.iter_export_rows(job)]
    assert [(r.van_id, r.first_name, r.phone) for r in rows] == [(van, "Ann", "+14142020792")]


async def test_export_older_than_90_days_is_refused(client: EveryActionClient, wall: WallClock) -> None:
    with pytest.raises(FatalApiError) as info:
        await client.create_contacts_export_job(wall.now() - timedelta(days=91))
    assert info.value.status == 400 and "dateChangedFrom" in info.value.message


async def test_export_job_error_and_timeout(sim: EveryActionSimulator, client: EveryActionClient,
                                            wall: WallClock, autojump_clock: trio.testing.MockClock) -> None:
    sim.fail_next_export("Export failed: disk on fire")
    with pytest.raises(ExportJobFailedError) as info:
        await client.run_contacts_export(wall.now() - timedelta(hours=1))
    assert "disk on fire" in info.value.message and info.value.code

    sim.polls_to_complete = 10_000
    job = await client.create_contacts_export_job(wall.now() - timedelta(hours=1))
    with pytest.raises(ExportJobTimeoutError):
        await client.wait_for_export_job(job, give_up_after=60)
    assert sim.export_job_polls(job.export_job_id) == 6


async def test_export_link_expires(sim: EveryActionSimulator, client: EveryActionClient, wall: WallClock,
                                   autojump_clock: trio.testing.MockClock) -> None:
    since = wall.now()
    sim.add_person("Ann", "Lee")
    await trio.sleep(1)
    job = await client.run_contacts_export(since)
    await trio.sleep(25 * 3600)
    with pytest.raises(ExportFileExpiredError):
        await client.download_export_file(job.files[0])


async def test_download_retries_storage_hiccup(sim: EveryActionSimulator, client: EveryActionClient,
                                               wall: WallClock, autojump_clock: trio.testing.MockClock) -> None:
    since = wall.now()
    sim.add_person("Ann", "Lee")
    await trio.sleep(1)
    job = await client.run_contacts_export(since)
    sim.faults.fail(503, path_contains="/blob/")
    rows = [r async for r in client.iter_export_rows(job)]
    assert len(rows) == 1 and sim.faults.injected == 1


async def test_row_count_mismatch_is_reported(sim: EveryActionSimulator, client: EveryActionClient,
                                              wall: WallClock, autojump_clock: trio.testing.MockClock) -> None:
    since = wall.now()
    for i in range(3):
        sim.add_person(f"P{i}", "Lee")
    await trio.sleep(1)
    job = await client.run_contacts_export(since)
    truncated = dataclasses.replace(job, files=job.files[:1])  # what reading only files[0] would do
    with capture_logs() as logs:
        rows = [r async for r in client.iter_export_rows(truncated)]
    assert len(rows) == 2
    mismatch = [e for e in logs if e["event"] == "everyaction_export_count_mismatch"]
    assert mismatch and mismatch[0]["rows"] == 2 and mismatch[0]["exported_record_count"] == 3


async def test_an_answer_is_decoded_once(sim: EveryActionSimulator, client: EveryActionClient,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 8 (daemon CPU per record): the answer checked by ``check_response`` is the one the endpoint reads;
    its JSON is decoded once, not once by each."""
    import crmsync.connectors.everyaction.client as module

    van_id = sim.add_person("Ada", "Lovelace", email="ada@example.org")
    decoded: list[bytes] = []
    real = module.parse_json_answer

    def counting(content: bytes) -> object:
        decoded.append(content)
        return real(content)

    monkeypatch.setattr(module, "parse_json_answer", counting)
    got = await client.get_person(van_id)
    assert got.first_name == "Ada" and len(decoded) == 1
