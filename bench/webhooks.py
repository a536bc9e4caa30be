"""Webhook intake, measured from outside (issue 8 item 6): the daemon runs as its own process (``crmsync run``),
a load generator in another process sends single-event signed requests over loopback keep-alive connections,
each answered 202 only once its event is committed (group commit, fully synchronous). Prints requests/s
committed, latency percentiles and the daemon's CPU per request (from /proc), beside the targets.

Usage: .venv/bin/python bench/webhooks.py [REQUESTS] [CONCURRENCY] [MAX_PER_COMMIT]   (defaults 20000, 50, 256)

``MAX_PER_COMMIT = 1`` turns group commit off (one transaction and one fsync per request), for comparison.

``--trace`` (first argument) also traces both processes (bench/webhook_trace.py): every GC pause, the trio task
steps that hold the daemon's event loop longest, and the group commit's wait and commit times; the tracing
costs CPU itself, so take the rate and latency figures from an untraced run.

crmsync's own part without any HTTP server (the ASGI app called directly, same process):
.venv/bin/python bench/webhooks.py app [REQUESTS] [CONCURRENCY]

Real-time latency (webhook to APSIS write), target p95 <= 1 s:
.venv/bin/python bench/webhooks.py realtime [EVENTS] [PER_SECOND]   (defaults 100, 5)
The Efficy and APSIS simulators run in their own process and note when each APSIS profile is first written;
the daemon runs as ``crmsync run`` with the integration active; this process sends one signed
generic-connector webhook per contact at the given pace and notes when it sent each.

The generator is deliberately lean (pre-signed bodies, hand-written HTTP/1.1 on raw sockets) so that it is not
the bottleneck on a small machine; both processes share the same cores, so the figures are a floor.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import trio

from crmsync.daemon.webhook_auth import sign

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-webhook-secret"
TARGET_RPS = 2000.0
TARGET_P99_MS = 50.0
TARGET_CONCURRENCY = 50


# -- the load generator (its own process) ---------------------------------------------------------------------


def _requests(host: str, port: int, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        body = json.dumps([{"record_id": str(100000 + i), "operation": "updated"}]).encode()
        head = (f"POST /webhooks/bench HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nX-Justin-Signature: sha256={sign(SECRET, body)}\r\n\r\n")
        out.append(head.encode() + body)
    return out


async def _generate(host: str, port: int, n: int, concurrency: int, trace: bool = False) -> dict[str, Any]:
    wire = _requests(host, port, n)
    pauses = None
    if trace:
        from bench.webhook_trace import GcPauses
        pauses = GcPauses()
        pauses.install()
    cpu0 = time.process_time()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    next_index = 0

    async def connection() -> None:
        nonlocal next_index
        stream = await trio.open_tcp_stream(host, port)
        buf = b""
        async with stream:
            while next_index < n:
                i = next_index
                next_index += 1
                t0 = time.perf_counter()
                await stream.send_all(wire[i])
                while b"\r\n\r\n" not in buf:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        raise RuntimeError("the daemon closed the connection")
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                status = int(lines[0].split()[1])
                length = next(int(v) for k, _, v in (line.partition(b":") for line in lines[1:])
                              if k.strip().lower() == b"content-length")
                while len(buf) < length:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        raise RuntimeError("the daemon closed the connection")
                    buf += chunk
                buf = buf[length:]
                latencies.append(time.perf_counter() - t0)
                statuses[status] = statuses.get(status, 0) + 1

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(connection)
    elapsed = time.perf_counter() - started
    latencies.sort()
    out = {"elapsed_s": elapsed, "latencies_ms": [x * 1000 for x in latencies], "statuses": statuses,
           "cpu_s": time.process_time() - cpu0}
    if pauses is not None:
        out["gc"] = pauses.summary()
    return out


# -- the floor: a trivial ASGI app on the daemon's own Hypercorn settings (its own process) --------------------


async def _floor_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 202,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"14")]})
    await send({"type": "http.response.body", "body": b'{"accepted":1}'})


def _serve_floor(port: int, plumbing: str) -> None:
    """``stock``: Hypercorn's own ``serve``; ``daemon``: the daemon's ``serve_http`` (its per-connection server,
    connection cap and keep-alive timer), both on the daemon's Hypercorn settings."""
    from hypercorn.trio import serve

    from crmsync.daemon.http import hypercorn_config, serve_http
    if plumbing == "stock":
        trio.run(serve, _floor_app, hypercorn_config(f"127.0.0.1:{port}", 1.0))  # type: ignore[arg-type]
    else:
        trio.run(serve_http, _floor_app, f"127.0.0.1:{port}", 1.0, trio.Event())  # type: ignore[arg-type]


# -- crmsync's own part: the ASGI app called directly, no HTTP server ------------------------------------------


async def _app_only(requests: int, concurrency: int) -> None:
    from crmsync.clock import WallClock
    from crmsync.daemon.config import config_from_mapping
    from crmsync.daemon.http import HttpApp
    from crmsync.daemon.metrics import Metrics
    from crmsync.daemon.supervisor import Supervisor
    from crmsync.state import Database

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for name in ("key", "secret", "hook"):
            (d / name).write_text(SECRET)
        config = config_from_mapping({
            "daemon": {"state_dir": str(d), "control_socket": str(d / "c.sock")},
            "http": {"webhook_listen": "127.0.0.1:0"},
            "integrations": {"bench": {
                "kind": "efficy_apsis",
                "efficy": {"url": "http://127.0.0.1:9", "api_key_file": str(d / "key")},
                "apsis": {"url": "http://127.0.0.1:9", "client_id": "c", "client_secret_file": str(d / "secret")},
                "webhook": {"header": "X-Justin-Signature", "prefix": "sha256=", "secret_file": str(d / "hook")},
            }},
        })
        db = await Database.open(d / "crmsync.db")
        wire = []
        for i in range(requests):
            body = json.dumps([{"record_id": str(100000 + i), "operation": "updated"}]).encode()
            wire.append((body, [(b"x-justin-signature", f"sha256={sign(SECRET, body)}".encode()),
                                (b"content-length", str(len(body)).encode())]))
        statuses: dict[int, int] = {}
        async with trio.open_nursery() as nursery:
            supervisor = Supervisor(config, db, Metrics(), WallClock())
            await nursery.start(supervisor.run)
            app = HttpApp(supervisor, supervisor.metrics, 1 << 20)
            next_index = 0

            async def client() -> None:
                nonlocal next_index
                while next_index < requests:
                    body, headers = wire[next_index]
                    next_index += 1

                    async def receive(body: bytes = body) -> dict[str, Any]:
                        return {"type": "http.request", "body": body, "more_body": False}

                    async def send(message: MutableMapping[str, Any]) -> None:
                        if message["type"] == "http.response.start":
                            statuses[message["status"]] = statuses.get(message["status"], 0) + 1

                    await app({"type": "http", "method": "POST", "path": "/webhooks/bench", "headers": headers},
                              receive, send)

            cpu0, wall0 = time.process_time(), time.perf_counter()
            async with trio.open_nursery() as clients:
                for _ in range(concurrency):
                    clients.start_soon(client)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            batches = supervisor.intake.batches
            nursery.cancel_scope.cancel()
        await db.aclose()
    print(f"crmsync's own part (ASGI app called directly, no HTTP server): {requests} requests, concurrency "
          f"{concurrency}: {requests / wall:.0f} requests/s, {cpu / requests * 1e6:.0f} us CPU per request "
          f"(store thread included), {requests / max(1, batches):.0f} requests per commit; answers {statuses}")


# -- real time: the simulators' process --------------------------------------------------------------------------

PROFILE_WRITE = re.compile(r"/profiles/([^/]+)/")


async def _run_simulators(directory: Path, contacts: int) -> None:
    from crmsync.clock import WallClock
    from crmsync.connectors.apsis import ApsisSimulator
    from crmsync.connectors.efficy.simulator import EfficySimulator
    from crmsync.connectors.simkit import serve_app

    clock = WallClock()
    efficy = EfficySimulator(clock, api_key=SECRET)
    ids = efficy.seed_demo(contacts)
    efficy.drain_outbox()
    apsis = ApsisSimulator(clock, client_id="bench", client_secret=SECRET)
    first_write: dict[str, float] = {}

    async def apsis_noting_writes(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in ("PATCH", "POST", "PUT"):
            m = PROFILE_WRITE.search(scope["path"])
            if m:
                first_write.setdefault(m.group(1), time.time())
        await apsis(scope, receive, send)

    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            efficy_url = await nursery.start(serve_app, efficy)
            apsis_url = await nursery.start(serve_app, apsis_noting_writes)
            apsis.public_url = apsis_url
            contact_ids = [int(c["K_CONTACT"]) for c in efficy.contacts()]
            (directory / "sims.tmp").write_text(json.dumps({"efficy": efficy_url, "apsis": apsis_url, "ids": ids,
                                                            "contacts": contact_ids}))
            (directory / "sims.tmp").rename(directory / "sims.json")
            async for _ in signals:
                (directory / "writes.json").write_text(json.dumps(first_write))
                nursery.cancel_scope.cancel()
                break


def realtime(events: int, per_second: float) -> None:
    from crmsync.connectors.apsis.records import ATTR_FIRSTNAME, ATTR_LASTNAME, ATTR_MOBILE
    from crmsync.daemon.integrations.efficy_apsis.sandbox import NEWSLETTER_TOPIC, OFFERS_TOPIC
    from crmsync.state import Database
    from crmsync.state import queries as q

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("NOTIFY_SOCKET", None)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "secret").write_text(SECRET)
        sims = subprocess.Popen([sys.executable, __file__, "--simulators", str(d), str(events)], env=env, cwd=ROOT)
        daemon: subprocess.Popen[bytes] | None = None
        log = (d / "daemon.log").open("w")
        try:
            deadline = time.monotonic() + 30
            while not (d / "sims.json").exists():
                if sims.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the simulators did not start")
                time.sleep(0.05)
            info = json.loads((d / "sims.json").read_text())
            (d / "config.toml").write_text(f"""
[daemon]
state_dir = "{d}"
control_socket = "{d}/control.sock"
log_level = "warning"

[http]
webhook_listen = "127.0.0.1:0"

[integrations.bench]
kind = "efficy_apsis"
[integrations.bench.efficy]
url = "{info['efficy']}"
api_key_file = "{d}/secret"
[integrations.bench.apsis]
url = "{info['apsis']}"
client_id = "bench"
client_secret_file = "{d}/secret"
[integrations.bench.attributes]
FIRSTNAME = "{ATTR_FIRSTNAME}"
NAME = "{ATTR_LASTNAME}"
MOBILE = "{ATTR_MOBILE}"
[integrations.bench.consents.newsletter]
profile = {info['ids']['newsletter_profile']}
topic = "{NEWSLETTER_TOPIC}"
channel = "email"
[integrations.bench.consents.sms-offers]
profile = {info['ids']['sms_profile']}
topic = "{OFFERS_TOPIC}"
channel = "sms"
[integrations.bench.webhook]
header = "X-Justin-Signature"
prefix = "sha256="
secret_file = "{d}/secret"
""")
            store = Database.open_sync(d / "crmsync.db")
            store.tx_sync(q.set_active, "bench", "efficy_apsis", True, datetime.now(UTC).isoformat())
            store.close()
            daemon = subprocess.Popen([sys.executable, "-m", "crmsync", "run", "--config", str(d / "config.toml")],
                                      stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            while not (d / "control.sock").exists():
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the daemon did not start:\n" + (d / "daemon.log").read_text())
                time.sleep(0.05)
            status = subprocess.run([sys.executable, "-m", "crmsync", "status", "--json", "--socket",
                                     str(d / "control.sock")], capture_output=True, text=True, env=env, cwd=ROOT)
            url = json.loads(status.stdout)["daemon"]["webhooks"] + "/webhooks/bench"
            sent: dict[str, float] = {}
            answers: dict[int, int] = {}
            with httpx.Client(timeout=10) as http:
                start = time.time()
                for i, cid in enumerate(info["contacts"][:events]):
                    time.sleep(max(0.0, start + i / per_second - time.time()))
                    body = json.dumps([{"record_id": str(cid), "operation": "updated"}]).encode()
                    sent[str(cid)] = time.time()
                    r = http.post(url, content=body, headers={"X-Justin-Signature": "sha256=" + sign(SECRET, body),
                                                              "Content-Type": "application/json"})
                    answers[r.status_code] = answers.get(r.status_code, 0) + 1
            # let the real-time flow drain the queue (bounded)
            drain_deadline = time.monotonic() + 60
            while time.monotonic() < drain_deadline:
                st = subprocess.run([sys.executable, "-m", "crmsync", "status", "bench", "--json", "--socket",
                                     str(d / "control.sock")], capture_output=True, text=True, env=env, cwd=ROOT)
                if json.loads(st.stdout)["queue_depth"] == 0:
                    break
                time.sleep(0.5)
            time.sleep(2)
        finally:
            if daemon is not None:
                daemon.terminate()
                daemon.wait(timeout=30)
            log.close()
            sims.send_signal(signal.SIGTERM)
            sims.wait(timeout=30)
        writes = json.loads((d / "writes.json").read_text())
    latencies = sorted(writes[k] - t for k, t in sent.items() if k in writes)
    print(f"real-time latency, webhook to APSIS write: {len(sent)} single-contact webhooks at {per_second:g}/s, "
          f"simulators and daemon in separate processes; answers {answers}")
    if not latencies:
        print("  no APSIS write seen")
        return
    p95 = _pct(latencies, 0.95)
    print(f"  written: {len(latencies)} of {len(sent)} contacts")
    print(f"  {'figure':34} {'measured':>10} {'target':>10} {'ratio':>7}")
    print(f"  {'p95 latency s':34} {p95:10.2f} {'<= 1':>10} {p95 / 1.0:7.2f}")
    print(f"  latency s: p50 {_pct(latencies, 0.5):.2f}  p95 {p95:.2f}  max {latencies[-1]:.2f}")


# -- the orchestrator -------------------------------------------------------------------------------------------


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _measure_floor(requests: int, concurrency: int, env: dict[str, str], plumbing: str) -> tuple[float, float]:
    """(requests/s, server CPU us per request) of a trivial ASGI app behind the same Hypercorn settings."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, __file__, "--floor-server", str(port), plumbing], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                import socket
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the floor server did not start") from None
                time.sleep(0.05)
        cpu0 = _cpu_seconds(server.pid)
        gen = subprocess.run([sys.executable, __file__, "--generate", "127.0.0.1", str(port), str(requests),
                              str(concurrency)], capture_output=True, text=True, env=env, cwd=ROOT)
        cpu = _cpu_seconds(server.pid) - cpu0
    finally:
        server.terminate()
        server.wait(timeout=10)
    result = json.loads(gen.stdout)
    return requests / result["elapsed_s"], cpu / requests * 1e6



def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(p * len(values)))]


def _traced_daemon(out: str, config: str) -> int:
    """``crmsync run`` with the tracers of bench/webhook_trace.py installed; their summary goes to ``out``."""
    from bench.webhook_trace import GcPauses, LoopSteps, intake_summary, trace_intake
    from crmsync.daemon import cli

    pauses, steps = GcPauses(), LoopSteps()
    record: dict[str, list[float]] = {"batch_size": [], "waited_before_commit_s": [], "commit_s": [],
                                      "statements_wall_s": [], "statements_cpu_s": [], "checkpoint_commit_s": []}
    pauses.install()
    trace_intake(record)
    plain_run = trio.run

    def run_instrumented(*args: Any, **kwargs: Any) -> Any:
        return plain_run(*args, instruments=[steps], **kwargs)

    trio.run = run_instrumented  # type: ignore[assignment]
    try:
        return cli.main(["run", "--config", config])
    finally:
        Path(out).write_text(json.dumps({"gc": pauses.summary(), "loop": steps.summary(),
                                         "intake": intake_summary(record)}))


def _print_trace(daemon: dict[str, Any] | None, generator_gc: dict[str, Any] | None) -> None:
    print("  trace (bench/webhook_trace.py; tracing adds its own CPU):")
    if daemon:
        print(f"    daemon GC pauses: {json.dumps(daemon['gc'])}")
        print(f"    daemon event loop: {json.dumps(daemon['loop'])}")
        print(f"    daemon group commit: {json.dumps(daemon['intake'])}")
    if generator_gc:
        print(f"    load generator GC pauses: {json.dumps(generator_gc)}")


def main(requests: int, concurrency: int, max_per_commit: int, trace: bool = False) -> None:
    load_before = os.getloadavg()[0]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("NOTIFY_SOCKET", None)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for name in ("key", "secret", "hook"):
            (d / name).write_text(SECRET)
        # an inactive efficy_apsis integration: the queue holds what arrives, so this measures intake only
        (d / "config.toml").write_text(f"""
[daemon]
state_dir = "{d}"
control_socket = "{d}/control.sock"
log_level = "warning"

[http]
webhook_listen = "127.0.0.1:0"
webhook_commit_max_requests = {max_per_commit}

[integrations.bench]
kind = "efficy_apsis"
[integrations.bench.efficy]
url = "http://127.0.0.1:9"
api_key_file = "{d}/key"
[integrations.bench.apsis]
url = "http://127.0.0.1:9"
client_id = "c"
client_secret_file = "{d}/secret"
[integrations.bench.webhook]
header = "X-Justin-Signature"
prefix = "sha256="
secret_file = "{d}/hook"
""")
        log = (d / "daemon.log").open("w")
        cmd = os.environ.get("BENCH_DAEMON_CMD")  # e.g. a profiler wrapper; the config path is appended
        argv = (cmd.split() if cmd else
                [sys.executable, __file__, "--traced-daemon", str(d / "trace.json")] if trace else
                [sys.executable, "-m", "crmsync", "run", "--config"])
        daemon = subprocess.Popen([*argv, str(d / "config.toml")],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            deadline = time.monotonic() + 30
            while not (d / "control.sock").exists():
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the daemon did not start:\n" + (d / "daemon.log").read_text())
                time.sleep(0.05)
            status = subprocess.run([sys.executable, "-m", "crmsync", "status", "--json", "--socket",
                                     str(d / "control.sock")], capture_output=True, text=True, env=env, cwd=ROOT)
            url = json.loads(status.stdout)["daemon"]["webhooks"]
            host, port = url.removeprefix("http://").rsplit(":", 1)
            cpu0 = _cpu_seconds(daemon.pid)
            gen = subprocess.run([sys.executable, __file__, "--generate", host, port, str(requests),
                                  str(concurrency), *(["trace"] if trace else [])],
                                 capture_output=True, text=True, env=env, cwd=ROOT)
            if gen.returncode != 0:
                raise SystemExit("the load generator failed:\n" + gen.stderr)
            cpu = _cpu_seconds(daemon.pid) - cpu0
            result = json.loads(gen.stdout)
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
            log.close()
        daemon_trace = json.loads((d / "trace.json").read_text()) if (d / "trace.json").exists() else None
        with sqlite3.connect(d / "crmsync.db") as store:
            queued = store.execute("SELECT COUNT(*) FROM realtime_queue WHERE integration = 'bench'").fetchone()[0]
    floors = {plumbing: _measure_floor(requests, concurrency, env, plumbing) for plumbing in ("daemon", "stock")}
    lat = result["latencies_ms"]
    ok = result["statuses"].get("202", 0)
    rps = ok / result["elapsed_s"]
    p50, p90, p99 = _pct(lat, 0.50), _pct(lat, 0.90), _pct(lat, 0.99)
    print(f"webhook intake: {requests} single-event signed requests, concurrency {concurrency}, loopback, "
          f"daemon and generator in separate processes, {os.cpu_count()} CPUs, at most {max_per_commit} "
          f"requests per commit, synchronous = FULL")
    print(f"  answers: {result['statuses']}   events durably queued: {queued}")
    print(f"  {'figure':34} {'measured':>10} {'target':>10} {'ratio':>7}")
    print(f"  {'requests/s committed (202)':34} {rps:10.0f} {'>= 2000':>10} {rps / TARGET_RPS:7.2f}")
    print(f"  {'p99 latency ms':34} {p99:10.1f} {'<= 50':>10} {p99 / TARGET_P99_MS:7.2f}")
    print(f"  latency ms: p50 {p50:.1f}  p90 {p90:.1f}  p99 {p99:.1f}  max {lat[-1]:.1f}")
    per_request_us = cpu / max(1, ok) * 1e6
    print(f"  daemon CPU: {cpu:.2f} s, {per_request_us:.0f} us per request (one trio thread: at most "
          f"{1e6 / per_request_us:.0f} requests/s on one core)")
    floor_rps, floor_us = floors["daemon"]
    print(f"  floor, a trivial ASGI app on the daemon's HTTP plumbing (serve_http): {floor_rps:.0f} requests/s, "
          f"{floor_us:.0f} us CPU per request; crmsync adds {per_request_us - floor_us:.0f} us; ratio "
          f"{rps / floor_rps:.2f} of the floor's rate")
    stock_rps, stock_us = floors["stock"]
    print(f"  the same app on Hypercorn's own serve(), same settings: {stock_rps:.0f} requests/s, "
          f"{stock_us:.0f} us CPU per request")
    print(f"  load generator CPU: {result['cpu_s'] / max(1, requests) * 1e6:.0f} us per request")
    print(f"  machine load average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
          f"(other work on the {os.cpu_count()} CPUs makes requests/s and latency noisy: compare CPU per request "
          f"and the floors of the same run)")
    if concurrency != TARGET_CONCURRENCY:
        print(f"  (the target is stated at concurrency {TARGET_CONCURRENCY})")
    if trace:
        _print_trace(daemon_trace, result.get("gc"))


if __name__ == "__main__":
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(__doc__)
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "app":
        trio.run(_app_only, int(sys.argv[2]) if len(sys.argv) > 2 else 20000,
                 int(sys.argv[3]) if len(sys.argv) > 3 else 50)
    elif len(sys.argv) > 1 and sys.argv[1] == "--simulators":
        trio.run(_run_simulators, Path(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "realtime":
        realtime(int(sys.argv[2]) if len(sys.argv) > 2 else 100, float(sys.argv[3]) if len(sys.argv) > 3 else 5.0)
    elif len(sys.argv) > 1 and sys.argv[1] == "--floor-server":
        _serve_floor(int(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "--generate":
        gen_host, gen_port, gen_n, gen_c, *gen_trace = sys.argv[2:]
        out = trio.run(_generate, gen_host, int(gen_port), int(gen_n), int(gen_c), bool(gen_trace))
        print(json.dumps(out))
    elif len(sys.argv) > 1 and sys.argv[1] == "--traced-daemon":
        sys.exit(_traced_daemon(sys.argv[2], sys.argv[3]))
    else:
        traced = sys.argv[1:2] == ["--trace"]
        args = [int(a) for a in sys.argv[1 + traced:4 + traced]]
        main(*(args + [20000, 50, 256][len(args):]), trace=traced)
