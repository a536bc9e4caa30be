"""The simulator's fidelity to the research checklist (A9), checked over raw HTTP, not through our client:
a simulator that merely agrees with the client would hide the client's mistakes."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

import httpx
import pytest
import trio

from crmsync.clock import WallClock
from crmsync.connectors.everyaction.records import OptInStatus, parse_contacts_csv
from crmsync.connectors.everyaction.simulator import SIM_API_KEY, EveryActionSimulator
from crmsync.connectors.simkit import asgi_client

from .conftest import BASE


def auth(key: str = SIM_API_KEY, mode: str = "1", user: str = "app") -> dict[str, str]:
    token = base64.b64encode(f"{user}:{key}|{mode}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_auth_is_checked_in_van_envelope(sim: EveryActionSimulator, http: httpx.AsyncClient) -> None:
    van_id = sim.add_person("Ann", "Lee")
    for headers in ({}, auth(mode="2"), auth(key="not-a-guid"), auth(user=""),
                    {"Authorization": "Bearer " + SIM_API_KEY}, {"Authorization": "Basic %%%"}):
        response = await http.get(f"{BASE}/people/{van_id}", headers=headers)
        assert response.status_code == 401
        assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert (await http.get(f"{BASE}/people/{van_id}", headers=auth())).status_code == 200


async def test_not_found_shape_and_unknown_route(http: httpx.AsyncClient) -> None:
    response = await http.get(f"{BASE}/people/424242", headers=auth())
    assert response.status_code == 404
    assert response.json() == {"errors": [{"code": "NOT_FOUND", "text": "The specified resource cannot be found."}]}
    assert (await http.get(f"{BASE}/nope", headers=auth())).json()["errors"][0]["code"] == "NOT_FOUND"


async def test_json_body_needs_json_content_type(http: httpx.AsyncClient) -> None:
    response = await http.post(f"{BASE}/people/find", headers=auth(), content=b'{"emails":[{"email":"a@b.org"}]}')
    assert response.status_code == 415 and "errors" in response.json()


async def test_expand_null_versus_empty_and_words_out(sim: EveryActionSimulator, http: httpx.AsyncClient
                                                      ) -> None:
    van_id = sim.add_person("Ann", "Lee", phone="4142020792", phone_type="C", phone_opt_in=OptInStatus.OPT_IN)
    bare = (await http.get(f"{BASE}/people/{van_id}", headers=auth())).json()
    assert bare["phones"] is None and bare["emails"] is None and bare["identifiers"] is None
    full = (await http.get(f"{BASE}/people/{van_id}", params={"$expand": "phones,emails,externalIds"},
                           headers=auth())).json()
    assert full["emails"] == [] and full["identifiers"] == [] and full["addresses"] is None
    phone = full["phones"][0]
    assert phone["phoneNumber"] == "4142020792" and phone["phoneType"] == "Cell"
    assert phone["phoneOptInStatus"] == "Opt-In" and phone["smsOptInStatus"] == "Opt-In"


async def test_find_without_minimum_never_matches_and_find_or_create_duplicates(
        sim: EveryActionSimulator, http: httpx.AsyncClient) -> None:
    existing = sim.add_person("Ann", "Lee", email="ann@example.org")
    weak = {"firstName": "Ann", "lastName": "Lee"}
    response = await http.post(f"{BASE}/people/find", json=weak, headers=auth())
    assert response.status_code == 404 and response.content == b""  # no error object on a no-match
    ids = []
    for _ in range(2):
        response = await http.post(f"{BASE}/people/findOrCreate", json=weak, headers=auth())
        assert response.status_code == 201 and response.json()["status"] == "UnmatchedStored"
        ids.append(response.json()["vanId"])
    assert len({existing, *ids}) == 3
    strong = {**weak, "emails": [{"email": "ANN@example.org"}]}
    response = await http.post(f"{BASE}/people/findOrCreate", json=strong, headers=auth())
    assert response.status_code == 200 and response.json()["vanId"] == existing


async def test_find_redirect_style(wall: WallClock) -> None:
    sim = EveryActionSimulator(wall, find_response="redirect")
    async with asgi_client(sim) as http:
        van_id = sim.add_person("Ann", "Lee", email="ann@example.org")
        response = await http.post(f"{BASE}/people/find", json={"emails": [{"email": "ann@example.org"}]},
                                   headers=auth())
    assert response.status_code == 302 and response.headers["location"].endswith(f"/v4/people/{van_id}")


async def test_rate_limit_fault_in_van_shape(sim: EveryActionSimulator, http: httpx.AsyncClient) -> None:
    sim.faults.fail(429, retry_after=12)
    response = await http.get(f"{BASE}/people/1", headers=auth())
    assert response.status_code == 429 and response.headers["retry-after"] == "12"
    assert response.json()["errors"][0]["code"] == "TOO_MANY_REQUESTS"


async def test_search_requires_a_parameter_and_pages(sim: EveryActionSimulator, http: httpx.AsyncClient) -> None:
    assert (await http.get(f"{BASE}/people", headers=auth())).status_code == 400
    for i in range(3):
        sim.add_person(f"Ann{i}", "Lee")
    page = (await http.get(f"{BASE}/people", params={"lastName": "LEE", "$top": "2"}, headers=auth())).json()
    assert page["count"] == 3 and len(page["items"]) == 2
    assert page["nextPageLink"].startswith("http://sim.test/v4/people?") and "%24skip=2" in page["nextPageLink"]
    last = (await http.get(page["nextPageLink"], headers=auth())).json()
    assert len(last["items"]) == 1 and last["nextPageLink"] is None


async def _run_job(http: httpx.AsyncClient, body: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    created = await http.post(f"{BASE}/changedEntityExportJobs", json=body, headers=auth())
    assert created.status_code == 201, created.text
    job = created.json()
    statuses = [job["jobStatus"]]
    while job["jobStatus"] != "Complete":
        job = (await http.get(f"{BASE}/changedEntityExportJobs/{job['exportJobId']}", headers=auth())).json()
        statuses.append(job["jobStatus"])
    return statuses, job


async def test_export_job_progression_files_and_downloads(sim: EveryActionSimulator, http: httpx.AsyncClient,
                                                          wall: WallClock) -> None:
    since = wall.now() - timedelta(minutes=1)
    ids = [sim.add_person(f"P{i}", "Lee") for i in range(3)]
    statuses, job = await _run_job(http, {"dateChangedFrom": since.isoformat(), "resourceType": "Contacts",
                                          "requestedFields": ["FirstName", "Bogus"]})
    assert statuses == ["Pending", "InProcess", "Complete"]
    assert "requestedFields" not in job  # the real API does not echo it (issue 7, item 11)
    assert job["dateChangedFrom"].endswith(("-05:00", "-04:00"))
    assert job["exportedRecordCount"] == 3 and len(job["files"]) == 2  # rows_per_file=2
    rows = []
    for f in job["files"]:
        assert (await http.get(f["downloadUrl"], headers=auth())).status_code == 403  # VAN auth not wanted
        response = await http.get(f["downloadUrl"])
        assert response.status_code == 200 and response.text.startswith("VanID,FirstName\r\n")
        rows += parse_contacts_csv(response.text)
    assert [r.van_id for r in rows] == ids
    tampered = job["files"][0]["downloadUrl"].rsplit("sig=", 1)[0] + "sig=forged"
    assert (await http.get(tampered)).status_code == 403
    assert (await http.get(f"{BASE}/changedEntityExportJobs/{job['exportJobId']}",
                           headers=auth(mode="0"))).status_code == 404  # other dataset


async def test_issue7_11_export_job_answers_do_not_echo_the_request(http: httpx.AsyncClient,
                                                                     wall: WallClock) -> None:
    """The real 201 carries only the fixture's keys (research A5.2): no requestedFields, no resourceType."""
    created = await http.post(f"{BASE}/changedEntityExportJobs", headers=auth(), json={
        "dateChangedFrom": (wall.now() - timedelta(days=1)).isoformat(), "resourceType": "Contacts",
        "requestedFields": ["FirstName", "Bogus"], "fileSizeKbLimit": 40000, "excludeChangesFromSelf": True})
    assert created.status_code == 201
    assert set(created.json()) == {"dateChangedFrom", "dateChangedTo", "files", "message", "code",
                                   "exportedRecordCount", "exportJobId", "jobStatus"}


async def test_export_splits_by_file_size(sim: EveryActionSimulator, http: httpx.AsyncClient,
                                          wall: WallClock) -> None:
    sim.rows_per_file = None
    since = wall.now() - timedelta(minutes=1)
    for i in range(3):
        sim.add_person("x" * 600_000, f"Big{i}")  # two rows would exceed 1000 KB
    _statuses, job = await _run_job(http, {"dateChangedFrom": since.isoformat(), "resourceType": "Contacts",
                                           "requestedFields": ["FirstName"], "fileSizeKbLimit": 1000})
    assert len(job["files"]) == 3
    for f in job["files"]:
        assert len((await http.get(f["downloadUrl"])).content) <= 1000 * 1024


async def test_export_validation(http: httpx.AsyncClient, wall: WallClock) -> None:
    now = wall.now()
    cases = [
        {"dateChangedFrom": (now - timedelta(days=91)).isoformat(), "resourceType": "Contacts"},
        {"dateChangedFrom": (now - timedelta(days=1)).isoformat(), "resourceType": "Contacts",
         "dateChangedTo": (now + timedelta(hours=1)).isoformat()},
        {"dateChangedFrom": now.isoformat(), "resourceType": "Contacts",
         "dateChangedTo": (now - timedelta(hours=1)).isoformat()},
        {"dateChangedFrom": (now - timedelta(days=1)).isoformat(), "resourceType": "Contacts",
         "fileSizeKbLimit": 100001},
        {"dateChangedFrom": (now - timedelta(days=1)).isoformat(), "resourceType": "Martians"},
        {"resourceType": "Contacts"},
    ]
    for body in cases:
        response = await http.post(f"{BASE}/changedEntityExportJobs", json=body, headers=auth())
        assert response.status_code == 400, body
        assert response.json()["errors"][0]["code"] == "INVALID_PARAMETER"


async def test_shared_phone_opt_out_marks_everyone_changed(sim: EveryActionSimulator, http: httpx.AsyncClient,
                                                           wall: WallClock,
                                                           autojump_clock: trio.testing.MockClock) -> None:
    a = sim.add_person("Ann", "Lee", phone="4142020792")
    b = sim.add_person("Bo", "Lee", phone="4142020792")
    sim.add_person("Cy", "Do", phone="2025550143")
    await trio.sleep(60)
    since = wall.now()
    sim.set_phone_opt_in(a, "4142020792", OptInStatus.OPT_OUT)
    assert sim.phone_opt_in("14142020792") is OptInStatus.OPT_OUT
    sim.set_phone_opt_in(a, "4142020792", OptInStatus.OPT_OUT)  # no-op: no second change
    assert len(sim.change_times(a)) == 2
    await trio.sleep(1)
    _statuses, job = await _run_job(http, {"dateChangedFrom": since.isoformat(), "resourceType": "Contacts",
                                           "requestedFields": ["PhoneOptInStatus"]})
    rows = [r for f in job["files"] for r in parse_contacts_csv((await http.get(f["downloadUrl"])).text)]
    assert sorted((r.van_id, r.phone_opt_in) for r in rows) == [(a, OptInStatus.OPT_OUT), (b, OptInStatus.OPT_OUT)]
    assert sim.van_ids_with_phone("4142020792") == [a, b]


def test_constructor_rejects_impossible_settings() -> None:
    with pytest.raises(ValueError):
        EveryActionSimulator(WallClock(), polls_to_complete=0)
    with pytest.raises(ValueError):
        EveryActionSimulator(WallClock(), rows_per_file=0)
