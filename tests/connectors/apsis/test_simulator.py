"""The simulator's own contract, over raw HTTP: what the real APSIS One does per the research checklist."""

from __future__ import annotations

import base64
import json

import httpx
import trio
from trio.testing import MockClock

from crmsync.connectors.apsis.simulator import S3_PATH, ApsisSimulator
from crmsync.connectors.simkit import asgi_client

from .conftest import SECRET

SEC = "com.apsis1.sections.default"
KS = "com.apsis1.keyspaces.crm-id"
NEWS = "usercreated.topics.newsletter-a1b2c3"
EMAIL = "com.apsis1.channels.email"


async def token(http: httpx.AsyncClient, secret: str = SECRET) -> httpx.Response:
    body = {"grant_type": "client_credentials", "client_id": "crmsync", "client_secret": secret}
    return await http.post("/oauth/token", json=body)


async def bearer(http: httpx.AsyncClient) -> dict[str, str]:
    return {"authorization": f"Bearer {(await token(http)).json()['access_token']}"}


def claims(jwt: str) -> dict[str, int]:
    part = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


async def test_token_is_a_24h_jwt_and_expires_on_the_clock(autojump_clock: MockClock, sim: ApsisSimulator) -> None:
    async with asgi_client(sim) as http:
        response = await token(http)
        assert response.status_code == 200
        body = response.json()
        assert body["expires_in"] == 86400 and body["token_type"] == "Bearer"
        assert claims(body["access_token"])["exp"] - sim.clock.timestamp() == 86400
        auth = {"authorization": f"Bearer {body['access_token']}"}
        assert (await http.get("/audience/keyspaces", headers=auth)).status_code == 200
        await trio.sleep(86400)
        expired = await http.get("/audience/keyspaces", headers=auth)
        assert expired.status_code == 401
        assert expired.headers["content-type"] == "application/problem+json"
        assert expired.json()["detail"] == "Access token has expired"
        assert (await http.get("/audience/keyspaces")).status_code == 401
        bad = await token(http, "nope")
        assert bad.status_code == 401 and bad.json()["title"] == "Unauthorized"


async def test_token_endpoint_allows_10_a_minute(autojump_clock: MockClock, sim: ApsisSimulator) -> None:
    async with asgi_client(sim) as http:
        statuses = [(await token(http)).status_code for _ in range(11)]
        assert statuses == [200] * 10 + [429]
        await trio.sleep(60)
        assert (await token(http)).status_code == 200
    assert sim.token_requests == 12 and sim.tokens_issued == 11


async def test_100_requests_per_second_then_429(autojump_clock: MockClock, sim: ApsisSimulator) -> None:
    async with asgi_client(sim) as http:
        auth = await bearer(http)
        statuses = [(await http.get("/audience/keyspaces", headers=auth)).status_code for _ in range(101)]
        assert statuses.count(200) == 100 and statuses[-1] == 429
        await trio.sleep(1)
        assert (await http.get("/audience/keyspaces", headers=auth)).status_code == 200


async def test_body_over_100kb_gets_413(autojump_clock: MockClock, sim: ApsisSimulator) -> None:
    async with asgi_client(sim) as http:
        auth = await bearer(http)
        response = await http.post(
            f"/audience/keyspaces/{KS}/sections/{SEC}/profiles", headers=auth, json={"profile_key": "x" * 100_001}
        )
        assert response.status_code == 413
        problem = response.json()
        assert (problem["title"], problem["status"]) == ("Payload too large", 413)
        assert problem["detail"].endswith("the limit is 100 kB")
        just_under = await http.post(
            f"/audience/keyspaces/{KS}/sections/{SEC}/profiles",
            headers=auth,
            json={"profile_key": "x" * 99_950},
        )
        assert just_under.status_code == 201


async def test_profile_attribute_and_consent_statuses(autojump_clock: MockClock, sim: ApsisSimulator) -> None:
    async with asgi_client(sim) as http:
        auth = await bearer(http)
        create = f"/audience/keyspaces/{KS}/sections/{SEC}/profiles"
        assert (await http.post(create, headers=auth, json={"profile_key": "1"})).status_code == 201
        assert (await http.post(create, headers=auth, json={"profile_key": "1"})).status_code == 409
        attrs = f"/v2/audience/keyspaces/{KS}/profiles/2/sections/{SEC}/attributes"
        patch_headers = {**auth, "content-type": "application/merge-patch+json"}
        assert (await http.patch(attrs, headers=patch_headers, content=b"{}")).status_code == 404
        plain = await http.patch(attrs.replace("/2/", "/1/"), headers=auth, json={})
        assert plain.status_code == 415  # merge-patch media type required
        consents = f"/v2/audience/keyspaces/{KS}/profiles/1/sections/{SEC}/consents"
        body = {"topic_discriminator": NEWS, "channel_discriminator": EMAIL, "type": "opt-in"}
        assert (await http.post(consents, headers=auth, json=body)).status_code == 201
        again = await http.post(consents, headers=auth, json=body)
        assert again.status_code == 409 and again.json()["detail"] == "Transition not supported"
        assert (await http.post(consents, headers=auth, json={**body, "type": "opt-out"})).status_code == 204
        pending = await http.post(consents, headers=auth, json={**body, "type": "pending-opt-in"})
        assert pending.status_code == 400
        read = await http.get(consents, headers=auth, params=[("consent_types", "opt-in")])
        assert read.json() == {"items": []}
    assert sim.writes["consent"] == 4


async def test_unsubscribe_link_and_helpers(autojump_clock: MockClock, sim: ApsisSimulator) -> None:
    sim.add_profile("5", {"com.apsis1.attributes.email": "e@x.be"})
    sim.opt_out("5", NEWS, EMAIL)
    assert sim.consents_of("5") == {next(iter(sim.profile("5").consents)): "opt-out"}  # type: ignore[union-attr]
    async with asgi_client(sim) as http:
        auth = await bearer(http)
        read = await http.get(f"/v2/audience/keyspaces/{KS}/profiles/5/sections/{SEC}/consents", headers=auth)
        [item] = read.json()["items"]
        assert item["source"] == "Unsubscribe link" and item["modified_at"].startswith("2024-03-14T09:00")
    assert sim.write_calls == 0


async def _create_import(http: httpx.AsyncClient, auth: dict[str, str]) -> httpx.Response:
    body = {"keyspace_mapping": {"keyspace_discriminator": KS, "field_selector": "crm_id"}}
    return await http.post(f"/v2/audience/sections/{SEC}/imports", headers=auth, json=body)


async def test_imports_limits_upload_and_status_machine(autojump_clock: MockClock, sim: ApsisSimulator) -> None:
    async with asgi_client(sim) as http:
        auth = await bearer(http)
        created = [await _create_import(http, auth) for _ in range(4)]
        assert [r.status_code for r in created] == [201, 201, 201, 429]  # 3 pending at once
        first = created[0].json()
        assert first["file_upload_url"] == "http://sim.test" + S3_PATH
        files = {"file": ("f.csv", b"crm_id\n77\n", "text/csv")}
        with_auth = await http.post(first["file_upload_url"], headers=auth, data=first["file_upload_body"], files=files)
        assert with_auth.status_code == 400 and b"InvalidArgument" in with_auth.content
        forged = {**first["file_upload_body"], "x-amz-signature": "forged"}
        assert (await http.post(first["file_upload_url"], data=forged, files=files)).status_code == 403
        status_path = f"/audience/sections/{SEC}/imports/{first['import_id']}"
        assert (await http.get(status_path, headers=auth)).json()["result"]["status"] == "waiting_for_file"
        upload = await http.post(first["file_upload_url"], data=first["file_upload_body"], files=files)
        assert upload.status_code == 204
        seen = [(await http.get(status_path, headers=auth)).json()["result"]["status"] for _ in range(4)]
        assert seen == ["queued", "in_progress", "in_progress", "completed"]
        assert sim.profile("77") is not None
        # a slot freed: creations continue until the 10-a-minute window is used up
        more = [await _create_import(http, auth) for _ in range(2)]
        assert [r.status_code for r in more] == [201, 429]


async def test_upload_url_expires(autojump_clock: MockClock, sim: ApsisSimulator) -> None:
    async with asgi_client(sim) as http:
        auth = await bearer(http)
        created = (await _create_import(http, auth)).json()
        await trio.sleep(3601)
        late = await http.post(
            created["file_upload_url"],
            data=created["file_upload_body"],
            files={"file": ("f.csv", b"crm_id\n1\n", "text/csv")},
        )
        assert late.status_code == 403 and b"Policy expired" in late.content


async def test_injected_faults_render_as_problem_json(autojump_clock: MockClock, sim: ApsisSimulator) -> None:
    sim.faults.fail(429, retry_after=7)
    async with asgi_client(sim) as http:
        response = await http.get("/audience/keyspaces")
    assert response.status_code == 429 and response.headers["retry-after"] == "7"
    assert response.json()["title"] == "Too many requests"
