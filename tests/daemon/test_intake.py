"""Webhook intake by group commit (issue 8 item 4) and the replay window (issue 9 item 3).

From the issues' words: requests that arrive within a few milliseconds share one transaction and one thread
hop, each still answered 202 only after that commit; a failed commit answers 5xx to every member of the batch
and stores nothing; a request whose client went away after its batch committed is still committed, and
counted once; the same signed body sent again within the replay window is answered 2xx and stores nothing,
counted in ``crmsync_webhook_replays_total``. The commit behind a 202 is fully synchronous.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
import trio.testing

from crmsync.clock import WallClock
from crmsync.daemon.config import Config, config_from_mapping
from crmsync.daemon.http import HttpApp
from crmsync.daemon.metrics import Metrics
from crmsync.daemon.supervisor import Supervisor
from crmsync.daemon.webhook_auth import sign
from crmsync.state import Database
from crmsync.state import queries as q
from tests.conftest import start_supervisor

SECRET = "intake-secret-7c1e"
NAME = "hooks"


def make_config(tmp_path: Path, **http: Any) -> Config:
    (tmp_path / "hook-secret").write_text(SECRET)
    return config_from_mapping({
        "daemon": {"state_dir": str(tmp_path), "plugins": ["tests.fake_kind"],
                   "control_socket": str(tmp_path / "control.sock")},
        "http": {"webhook_listen": "127.0.0.1:0", **http},
        "integrations": {NAME: {"kind": "fake", "webhook": {
            "header": "X-Sig", "secret_file": str(tmp_path / "hook-secret")}}},
    })


def body_of(rid: str, version: int = 1) -> bytes:
    return json.dumps([{"id": rid, "version": version}]).encode()


def clock() -> WallClock:
    return WallClock(start=datetime(2026, 10, 29, 4, 0, tzinfo=UTC))


async def post(app: HttpApp, body: bytes, answers: list[tuple[int, Any]], on_start: Any = None) -> None:
    """One signed POST straight through the ASGI app; records (status, on_start(status)) when the answer
    starts, i.e. at the moment the client would learn the outcome."""
    headers = [(b"x-sig", sign(SECRET, body).encode()), (b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "method": "POST", "path": f"/webhooks/{NAME}", "headers": headers}
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await trio.sleep_forever()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answers.append((message["status"], on_start(message["status"]) if on_start else None))
        elif message["type"] == "http.response.body" and message.get("body"):
            answers[-1] = (answers[-1][0], answers[-1][1], json.loads(message["body"]))

    await app(scope, receive, send)  # type: ignore[arg-type]


def committed_ids(path: Path) -> list[str]:
    """What another connection sees in the store: only committed rows."""
    with sqlite3.connect(path) as other:
        rows = other.execute("SELECT json_extract(payload, '$.id') FROM realtime_queue ORDER BY seq").fetchall()
    return [r[0] for r in rows]


async def test_concurrent_requests_share_one_transaction_and_each_202_follows_its_commit(tmp_path: Path) -> None:
    n = 20
    path = tmp_path / "store.db"
    db = await Database.open(path)  # real worker-thread hops, as in production
    answers: list[Any] = []
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, make_config(tmp_path), db, clock())
        # the batch closes when all n have arrived (a window far longer than they take to arrive)
        supervisor.intake.window_s, supervisor.intake.max_batch = 60.0, n
        app = HttpApp(supervisor, supervisor.metrics, max_body=4096)
        transactions, hops = db.transactions, db.thread_hops
        async with trio.open_nursery() as clients:
            for i in range(n):
                rid = f"r{i}"
                clients.start_soon(post, app, body_of(rid), answers, lambda _s, rid=rid: rid in committed_ids(path))
        assert db.transactions - transactions == 1
        assert db.thread_hops - hops == 1
        assert supervisor.intake.batches == 1
        metrics = supervisor.metrics.render().decode()
        nursery.cancel_scope.cancel()
    await db.aclose()
    # every answer is a 202 and, when it was sent, its own event was already visible to another connection
    assert [(status, visible) for status, visible, _ in answers] == [(202, True)] * n
    assert sorted(committed_ids(path)) == sorted(f"r{i}" for i in range(n))
    assert f'crmsync_realtime_queue_depth{{integration="{NAME}"}} {float(n)}' in metrics


async def test_a_failed_commit_answers_503_to_every_member_and_stores_nothing(tmp_path: Path) -> None:
    n = 5
    path = tmp_path / "store.db"
    db = await Database.open(path)
    answers: list[Any] = []
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, make_config(tmp_path), db, clock())
        supervisor.intake.window_s, supervisor.intake.max_batch = 60.0, n
        app = HttpApp(supervisor, supervisor.metrics, max_body=4096)
        with sqlite3.connect(path) as other:  # the disk refuses the last write of the batch
            other.execute("CREATE TRIGGER refuse BEFORE INSERT ON realtime_queue WHEN NEW.payload LIKE '%r4%' "
                          "BEGIN SELECT RAISE(ABORT, 'disk I/O error (injected)'); END")
        async with trio.open_nursery() as clients:
            for i in range(n):
                clients.start_soon(post, app, body_of(f"r{i}"), answers)
        assert [status for status, *_ in answers] == [503] * n
        assert committed_ids(path) == []
        assert await db.tx(lambda c: c.execute("SELECT COUNT(*) FROM webhook_digests").fetchone()[0]) == 0
        assert supervisor.queue_depth.get(NAME) == 0
        # the committer carries on: the next batch commits
        with sqlite3.connect(path) as other:
            other.execute("DROP TRIGGER refuse")
        supervisor.intake.max_batch = 1
        answers.clear()
        await post(app, body_of("r4"), answers)
        assert [status for status, *_ in answers] == [202]
        nursery.cancel_scope.cancel()
    await db.aclose()
    assert committed_ids(path) == ["r4"]


async def test_a_client_gone_before_its_batch_formed_stores_nothing(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, db: Database
) -> None:
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, make_config(tmp_path), db, clock())
        supervisor.intake.window_s = 5.0
        transactions = db.transactions
        with trio.move_on_after(1) as gone:  # the client goes away at 1 s; the batch would close at 5 s
            await supervisor.accept_webhook(NAME, {}, body_of("r1"))
        assert gone.cancelled_caught
        await trio.sleep(10)
        assert db.transactions == transactions  # an empty batch takes no transaction
        assert await db.tx(q.queue_depth, NAME) == 0 and supervisor.queue_depth.get(NAME) == 0
        nursery.cancel_scope.cancel()


async def test_a_client_gone_after_its_batch_was_taken_is_committed_and_counted_once(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, db: Database
) -> None:
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, make_config(tmp_path), db, clock())
        client = trio.CancelScope()
        supervisor.intake.on_batch = lambda size: client.cancel()  # the client hangs up mid-commit
        with client:
            await supervisor.accept_webhook(NAME, {}, body_of("r1"))
        assert client.cancelled_caught
        await trio.sleep(1)
        assert await db.tx(q.queue_depth, NAME) == 1
        assert supervisor.queue_depth.get(NAME) == 1
        assert f'crmsync_realtime_queue_depth{{integration="{NAME}"}} 1.0' in supervisor.metrics.render().decode()
        nursery.cancel_scope.cancel()


async def test_queue_depth_counter_starts_from_the_store_and_follows_consumption(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, db: Database
) -> None:
    config = make_config(tmp_path)
    await db.tx(q.enqueue, NAME, [(None, {"id": "old1", "version": 1}), (None, {"id": "old2", "version": 1})],
                "2026-10-29T03:00:00+00:00")
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, config, db, clock())
        assert supervisor.queue_depth.get(NAME) == 2  # initialised from the store at start
        await supervisor.accept_webhook(NAME, {}, body_of("r1"))
        assert supervisor.queue_depth.get(NAME) == 3
        await supervisor.activate(NAME)
        await trio.sleep(30)  # the consumer drains the queue
        assert supervisor.queue_depth.get(NAME) == 0 == await db.tx(q.queue_depth, NAME)
        metrics = supervisor.metrics.render().decode()
        nursery.cancel_scope.cancel()
    assert f'crmsync_realtime_queue_depth{{integration="{NAME}"}} 0.0' in metrics


async def test_the_store_commits_fully_synchronously(tmp_path: Path) -> None:
    # a 202 must survive a power loss: WAL with synchronous = FULL (2), not NORMAL (1), as the daemon opens it
    db = await Database.open(tmp_path / "daemon.db")
    try:
        assert await db.tx(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2
        assert await db.tx(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
    finally:
        await db.aclose()


# -- issue 9 item 3: replayed deliveries --------------------------------------------------------------------


async def test_regression_issue9_a_replayed_signed_body_is_not_queued_again(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, db: Database
) -> None:
    sim = clock()
    answers: list[Any] = []
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, make_config(tmp_path, webhook_replay_window="10m"), db, sim)
        app = HttpApp(supervisor, supervisor.metrics, max_body=4096)
        body = body_of("r1")
        await post(app, body, answers)
        await trio.sleep(120)
        await post(app, body, answers)  # the same signed body, replayed two minutes later
        depth = await db.tx(q.queue_depth, NAME)
        metrics = supervisor.metrics.render().decode()
        nursery.cancel_scope.cancel()
    first, second = answers
    assert first[0] == 202 and first[2]["accepted"] == 1
    # the sender must not retry a duplicate: a 2xx, saying nothing new was stored
    assert second[0] == 200 and second[2]["accepted"] == 0 and second[2]["replay"] is True
    assert depth == 1
    assert f'crmsync_webhook_replays_total{{integration="{NAME}"}} 1.0' in metrics
    assert f'crmsync_webhook_requests_total{{integration="{NAME}",status="200"}} 1.0' in metrics


async def test_regression_issue9_a_replay_inside_the_same_batch_is_refused_too(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    db = await Database.open(path)
    answers: list[Any] = []
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, make_config(tmp_path), db, clock())
        supervisor.intake.window_s, supervisor.intake.max_batch = 60.0, 3
        app = HttpApp(supervisor, supervisor.metrics, max_body=4096)
        async with trio.open_nursery() as clients:
            for body in (body_of("r1"), body_of("r1"), body_of("r2")):
                clients.start_soon(post, app, body, answers)
        assert supervisor.intake.batches == 1
        nursery.cancel_scope.cancel()
    await db.aclose()
    assert sorted(status for status, *_ in answers) == [200, 202, 202]
    assert sorted(committed_ids(path)) == ["r1", "r2"]


async def test_replay_digests_expire_with_the_window_and_are_pruned(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, db: Database
) -> None:
    sim = clock()
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, make_config(tmp_path, webhook_replay_window="10m"), db, sim)
        first = await supervisor.accept_webhook(NAME, {}, body_of("r1", 1))
        await supervisor.accept_webhook(NAME, {}, body_of("r2", 1))
        await trio.sleep(11 * 60)  # past the window: the same body counts as a new delivery again
        again = await supervisor.accept_webhook(NAME, {}, body_of("r1", 1))
        digests = await db.tx(lambda c: c.execute("SELECT COUNT(*) FROM webhook_digests").fetchone()[0])
        metrics = supervisor.metrics.render().decode()
        nursery.cancel_scope.cancel()
    assert first.accepted == 1 and not first.replay
    assert not again.replay  # per-event dedupe still holds: the same event is not queued twice
    assert digests == 1  # r2's digest, older than the window, was pruned; r1's was renewed
    assert f'crmsync_webhook_replays_total{{integration="{NAME}"}} 1.0' not in metrics


async def test_no_supervisor_intake_means_503_not_a_hang(tmp_path: Path, db: Database) -> None:
    # a supervisor that is not running (no committer) refuses rather than blocking the request forever
    supervisor = Supervisor(make_config(tmp_path), db, Metrics(), clock())
    app = HttpApp(supervisor, supervisor.metrics, max_body=4096)
    answers: list[Any] = []
    await post(app, body_of("r1"), answers)
    assert answers[0][0] == 503
    assert await db.tx(q.queue_depth, NAME) == 0


async def test_queue_depth_counter_drops_a_dead_lettered_event(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, db: Database
) -> None:
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, make_config(tmp_path), db, clock())
        await supervisor.accept_webhook(NAME, {}, json.dumps([{"id": "poison1", "version": 1},
                                                              {"id": "r1", "version": 1}]).encode())
        assert supervisor.queue_depth.get(NAME) == 2
        await supervisor.activate(NAME)
        await trio.sleep(3600)  # r1 is processed; poison1 fails until it is set aside
        assert await db.tx(q.count_dead_letters, NAME) == 1
        assert supervisor.queue_depth.get(NAME) == 0 == await db.tx(q.queue_depth, NAME)
        nursery.cancel_scope.cancel()
