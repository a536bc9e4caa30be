"""Issue 9 item 3, in the issue's own case: "The same signed generic-connector body sent twice is queued twice,
forever (its signature has no timestamp)." A replay within the window is answered 2xx and stores nothing."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from crmsync.clock import WallClock
from crmsync.connectors.efficy.webhooks import sign_contract_body
from crmsync.state import queries as q
from tests.integrations.efficy_apsis.harness import HOOK_SECRET, NAME, world


async def test_regression_issue9_a_replayed_generic_connector_body_is_queued_once(
        autojump_clock: trio.testing.MockClock, tmp_path: Path, clock: WallClock) -> None:
    async with world(tmp_path, clock, activate=False) as w:  # inactive: the queue keeps what arrives
        body = json.dumps([{"record_id": "10001", "operation": "updated"}]).encode()
        headers = {"X-Justin-Signature": sign_contract_body(body, HOOK_SECRET), "Content-Type": "application/json"}
        first = await w.http.post(f"/webhooks/{NAME}", content=body, headers=headers)
        await trio.sleep(30)
        replay = await w.http.post(f"/webhooks/{NAME}", content=body, headers=headers)
        depth = await w.db.tx(q.queue_depth, NAME)
        metrics = (await w.http.get("/metrics")).text
    assert first.status_code == 202 and first.json() == {"accepted": 1}
    assert replay.status_code == 200 and replay.json()["replay"] is True and replay.json()["accepted"] == 0
    assert depth == 1
    assert f'crmsync_webhook_replays_total{{integration="{NAME}"}} 1.0' in metrics
