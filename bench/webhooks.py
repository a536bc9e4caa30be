"""Webhook intake, measured from outside (issue 8 item 6): the daemon runs as its own process (``crmsync run``),
a load generator in another process sends single-event signed requests over loopback keep-alive connections,
each answered 202 only once its event is committed (group commit, fully synchronous). Prints requests/s
committed, latency percentiles and the daemon's CPU per request (from /proc), beside the targets.

Usage: .venv/bin/python bench/webhooks.py [REQUESTS] [CONCURRENCY] [MAX_PER_COMMIT]   (defaults 20000, 50, 256)

``MAX_PER_COMMIT = 1`` turns group commit off (one transaction and one fsync per request), for comparison.

The generator is deliberately lean (pre-signed bodies, hand-written HTTP/1.1 on raw sockets) so that it is not
the bottleneck on a small machine; both processes share the same cores, so the figures are a floor.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


async def _generate(host: str, port: int, n: int, concurrency: int) -> dict[str, Any]:
    wire = _requests(host, port, n)
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
    return {"elapsed_s": elapsed, "latencies_ms": [x * 1000 for x in latencies], "statuses": statuses}


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


def _serve_floor(port: int) -> None:
    from hypercorn.trio import serve

    from crmsync.daemon.http import hypercorn_config
    trio.run(serve, _floor_app, hypercorn_config(f"127.0.0.1:{port}", 1.0))  # type: ignore[arg-type]


# -- the orchestrator -------------------------------------------------------------------------------------------


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _measure_floor(requests: int, concurrency: int, env: dict[str, str]) -> tuple[float, float]:
    """(requests/s, server CPU us per request) of a trivial ASGI app behind the same Hypercorn settings."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, __file__, "--floor-server", str(port)], env=env, cwd=ROOT,
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


def main(requests: int, concurrency: int, max_per_commit: int) -> None:
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
        argv = (cmd.split() if cmd else [sys.executable, "-m", "crmsync", "run", "--config"])
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
                                  str(concurrency)], capture_output=True, text=True, env=env, cwd=ROOT)
            if gen.returncode != 0:
                raise SystemExit("the load generator failed:\n" + gen.stderr)
            cpu = _cpu_seconds(daemon.pid) - cpu0
            result = json.loads(gen.stdout)
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
            log.close()
        with sqlite3.connect(d / "crmsync.db") as store:
            queued = store.execute("SELECT COUNT(*) FROM realtime_queue WHERE integration = 'bench'").fetchone()[0]
    floor_rps, floor_us = _measure_floor(requests, concurrency, env)
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
    print(f"  floor, a trivial ASGI app on the same Hypercorn settings: {floor_rps:.0f} requests/s, "
          f"{floor_us:.0f} us CPU per request; crmsync adds {per_request_us - floor_us:.0f} us")
    if concurrency != TARGET_CONCURRENCY:
        print(f"  (the target is stated at concurrency {TARGET_CONCURRENCY})")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--floor-server":
        _serve_floor(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--generate":
        _, _, gen_host, gen_port, gen_n, gen_c = sys.argv
        out = trio.run(_generate, gen_host, int(gen_port), int(gen_n), int(gen_c))
        print(json.dumps(out))
    else:
        args = [int(a) for a in sys.argv[1:4]]
        main(*(args + [20000, 50, 256][len(args):]))
