"""Named regression tests for issue 9 (hostile input): one per defect, written from the issue's words."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from crmsync.daemon.config import ConfigError, load_config, parse_config
from crmsync.daemon.control import ControlClient, ControlServer, open_unix_listener
from crmsync.daemon.integrations.base import WebhookRejected
from crmsync.daemon.integrations.efficy_apsis.realtime import parse_body
from tests.conftest import fake_config, start_supervisor

DEEP = b"[" * 5000 + b"]" * 5000


# -- 1. nesting -------------------------------------------------------------------------------------------

async def test_deeply_nested_control_line_is_bad_json_and_daemon_stays_up(tmp_path: Path, db: Any,
                                                                          sim_clock: Any) -> None:
    async with trio.open_nursery() as nursery:
        supervisor = await start_supervisor(nursery, fake_config(tmp_path, {"a": {}}), db, sim_clock)

        async def reload() -> dict[str, Any]:
            return {}

        server = ControlServer(supervisor, idle_timeout=300, reload_config=reload)
        path = tmp_path / "ctl.sock"
        nursery.start_soon(server.serve, await open_unix_listener(path))
        async with ControlClient(path) as client:
            assert client._stream is not None
            await client._stream.send_all(b'{"cmd":"hello","id":' + DEEP + b"}\n")
            reply = await client.read_reply()
            assert reply["ok"] is False and reply["error"]["code"] == "bad_json"
            assert (await client.call("hello"))["ok"]  # same connection still served
        nursery.cancel_scope.cancel()


def test_deeply_nested_webhook_body_is_rejected_not_crashed() -> None:
    for body in (DEEP, b'{"records": ' + DEEP + b"}", b'[{"record_id": ' + DEEP + b', "operation": "updated"}]'):
        with pytest.raises(WebhookRejected):
            parse_body(body)


# -- 2. contact keys --------------------------------------------------------------------------------------

BAD_KEYS: list[Any] = [[1], {"a": 1}, float("inf"), "NaN", "-Infinity", 1.5, -7, 0, "-7", "1.5",
                       "../../etc/passwd", "1; DROP TABLE links", "12\x0034", "\ud800", "\u202e123", "\u00b2",
                       "1" * 5000, True, "", " ", "0x1F", "1e3", "١٢٣"]


@pytest.mark.parametrize("key", BAD_KEYS, ids=lambda k: ascii(k)[:24])
def test_malformed_contract_record_id_rejects_the_whole_body(key: Any) -> None:
    body = json.dumps([{"record_id": 42, "operation": "updated"}, {"record_id": key, "operation": "updated"}])
    with pytest.raises(WebhookRejected):
        parse_body(body.encode())


@pytest.mark.parametrize("raw", [b"1e999", b"NaN", b"-Infinity", b"Infinity", b"1" * 5000])
def test_malformed_contract_record_id_literal_rejects(raw: bytes) -> None:
    with pytest.raises(WebhookRejected):
        parse_body(b'[{"record_id": ' + raw + b', "operation": "updated"}]')


@pytest.mark.parametrize("key", BAD_KEYS, ids=lambda k: ascii(k)[:24])
def test_malformed_native_key_rejects_the_whole_body(key: Any) -> None:
    body = {"records": [{"table": 11000, "key": 42, "operation": "Update"},
                        {"table": 11000, "key": key, "operation": "Update"}]}
    with pytest.raises(WebhookRejected):
        parse_body(json.dumps(body).encode())


@pytest.mark.parametrize("key,expected", [(42, "42"), ("42", "42"), (12345.0, "12345"), ("007", "7")])
def test_good_contact_keys_still_accepted(key: Any, expected: str) -> None:
    events = parse_body(json.dumps([{"record_id": key, "operation": "updated"}]).encode())
    assert [e.payload["contact_id"] for e in events] == [expected]


# -- 6. config --------------------------------------------------------------------------------------------

def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    return err.value.lines()


def test_overflowing_duration_is_a_clean_error_naming_the_key() -> None:
    lines = _problems('[daemon]\ncontrol_idle_timeout = "99999999999d"\n')
    assert any(line.startswith("daemon.control_idle_timeout:") for line in lines), lines


def test_deeply_nested_array_is_a_clean_error() -> None:
    lines = _problems("[daemon]\nplugins = " + "[" * 5000 + "]" * 5000 + "\n")
    assert lines and "nest" in " ".join(lines)


def test_non_utf8_file_is_a_clean_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[daemon]\ntimezone = "Europe/Brussels" # caf\xe9\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "UTF-8" in str(err.value)


@contextlib.contextmanager
def fifo_feeder(path: Path) -> Iterator[None]:
    """A FIFO at ``path``; should the code under test block opening it, a writer unblocks it (so the test
    fails on its assertion instead of hanging)."""
    os.mkfifo(path)
    done = threading.Event()

    def feed() -> None:
        while not done.wait(0.05):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: nobody reads it, which is what should happen
                continue
            with contextlib.suppress(OSError):
                os.write(fd, b"fifo-secret\n")
            os.close(fd)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def test_fifo_secret_file_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "secret.fifo"
    with fifo_feeder(fifo):
        text = f'[integrations.a]\nkind = "fake"\n[integrations.a.webhook]\nsecret_file = "{fifo}"\n'
        with pytest.raises(ConfigError) as err:
            parse_config('[daemon]\nplugins = ["tests.fake_kind"]\n' + text)
    assert any("integrations.a.webhook.secret_file" in line and "regular file" in line
               for line in err.value.lines()), err.value.lines()


def test_fifo_config_file_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "config.fifo"
    with fifo_feeder(fifo), pytest.raises(ConfigError) as err:
        load_config(fifo)
    assert "regular file" in str(err.value)


def test_control_socket_mode_string_is_parsed_as_octal() -> None:
    config = parse_config('[daemon]\ncontrol_socket_mode = "0660"\n')
    assert config.daemon.control_socket_mode == 0o660
    assert parse_config('[daemon]\ncontrol_socket_mode = "0600"\n').daemon.control_socket_mode == 0o600


@pytest.mark.parametrize("mode", ["0o777", "-1", "0o666", "0o1660", '"0777"', '"660x"', "true", '"rw"'])
def test_control_socket_mode_wider_than_0660_or_garbage_is_refused(mode: str) -> None:
    lines = _problems(f"[daemon]\ncontrol_socket_mode = {mode}\n")
    assert any(line.startswith("daemon.control_socket_mode:") for line in lines), lines


@pytest.mark.parametrize("header", ['""', '"  "', '"X Bad"', '"X-Sig:"'])
def test_empty_or_invalid_webhook_header_is_refused(tmp_path: Path, header: str) -> None:
    (tmp_path / "s").write_text("secret-value")
    text = (f'[daemon]\nplugins = ["tests.fake_kind"]\n[integrations.a]\nkind = "fake"\n'
            f'[integrations.a.webhook]\nheader = {header}\nsecret_file = "{tmp_path / "s"}"\n')
    lines = _problems(text)
    assert any(line.startswith("integrations.a.webhook.header:") for line in lines), lines


def test_ea_window_message_names_the_key_path(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("k")
    text = f"""
[integrations.ea]
kind = "everyaction_mobilecommons"
ea_window = "1000d"
[integrations.ea.everyaction]
application_name = "app"
api_key_file = "{tmp_path / 'k'}"
[integrations.ea.mobilecommons]
login = "l"
password_file = "{tmp_path / 'k'}"
"""
    lines = _problems(text)
    assert any(line.startswith("integrations.ea.ea_window:") for line in lines), lines


# -- found by the fuzzers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("van_id", ["INF", "-inf", "nan", "1.9", "1e5", "-3", "0", "\u0661\u0662"])
def test_export_row_with_a_non_integer_vanid_is_skipped_not_crashed_or_rounded(van_id: str) -> None:
    from crmsync.connectors.everyaction.records import parse_contacts_csv

    only_bob = parse_contacts_csv("VanID,FirstName\n7,Bob\n")
    assert parse_contacts_csv(f"VanID,FirstName\n{van_id},Ann\n7,Bob\n") == only_bob


def test_export_row_vanid_written_as_float_still_reads() -> None:
    from crmsync.connectors.everyaction.records import parse_contacts_csv

    assert [r.van_id for r in parse_contacts_csv("VanID\n12.0\n 13 \n")] == [12, 13]
