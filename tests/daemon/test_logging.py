"""Logs are JSON lines with integration and flow bound; journald priorities; secrets never printed."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import pytest
import structlog

from crmsync.daemon.config import ConfigError, parse_config
from crmsync.daemon.logging import configure_logging


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    configure_logging("info", stream=out)
    yield out
    logging.getLogger().handlers[:] = []
    structlog.reset_defaults()


def test_json_lines_with_bound_context(stream: io.StringIO) -> None:
    log = structlog.get_logger("crmsync.test")
    with structlog.contextvars.bound_contextvars(integration="ea-mc", flow="ea_to_mc"):
        log.info("hello", n=1)
    logging.getLogger("hypercorn.error").warning("from stdlib")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["event"] == "hello" and lines[0]["integration"] == "ea-mc" and lines[0]["flow"] == "ea_to_mc"
    assert lines[0]["level"] == "info" and lines[0]["logger"] == "crmsync.test" and "timestamp" in lines[0]
    assert lines[1]["event"] == "from stdlib" and lines[1]["level"] == "warning"


def test_journald_priority_prefix_only_when_stdout_is_the_journal_stream(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """JOURNAL_STREAM names the journal stream by device and inode: only a stream that matches gets the
    syslog prefix (output redirected to a file, or the variable inherited, must stay plain JSON)."""
    for matching in (True, False):
        with (tmp_path / f"out-{matching}").open("w+") as out:
            st = os.fstat(out.fileno())
            monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}" if matching else
                               f"{st.st_dev}:{st.st_ino + 1}")
            configure_logging("info", stream=out)
            structlog.get_logger("x").error("bad")
            structlog.get_logger("x").info("fine")
            out.flush()
            out.seek(0)
            first, second = out.read().splitlines()
        if matching:
            assert first.startswith("<3>{") and second.startswith("<6>{")
        else:
            assert first.startswith("{") and second.startswith("{")
    logging.getLogger().handlers[:] = []
    structlog.reset_defaults()


def test_journal_stream_set_but_stream_not_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    out = io.StringIO()
    configure_logging("info", stream=out)
    structlog.get_logger("x").error("bad")
    assert out.getvalue().startswith("{")
    logging.getLogger().handlers[:] = []
    structlog.reset_defaults()


def test_event_is_the_first_key(stream: io.StringIO) -> None:
    log = structlog.get_logger("crmsync.test")
    with structlog.contextvars.bound_contextvars(integration="ea-mc", flow="ea_to_mc", run_id=4):
        log.info("run_finished", status="success")
    logging.getLogger("hypercorn.error").warning("from stdlib")
    for line in stream.getvalue().splitlines():
        assert line.startswith('{"event": '), line
        assert list(json.loads(line))[:2] == ["event", "level"]


def test_console_format_for_people(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    configure_logging("debug", stream=out, fmt="console")
    structlog.get_logger("x").debug("per_record", crm_id="r1")
    line = out.getvalue().strip()
    assert not line.startswith("{") and "per_record" in line and "crm_id=r1" in line
    logging.getLogger().handlers[:] = []
    structlog.reset_defaults()
    with pytest.raises(ValueError):
        configure_logging("info", stream=io.StringIO(), fmt="xml")


def test_secrets_never_appear(stream: io.StringIO, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-VALUE-that-must-not-leak"
    (tmp_path / "key").write_text(secret)
    monkeypatch.setenv("HOOK_SECRET", secret)
    config = parse_config(f"""
[daemon]
plugins = ["tests.fake_kind"]
[integrations.a]
kind = "fake"
[integrations.a.webhook]
secret_file = "{tmp_path}/key"
[integrations.b]
kind = "fake"
[integrations.b.webhook]
secret_env = "HOOK_SECRET"
""")
    log = structlog.get_logger("crmsync.test")
    log.info("config", config=config, webhook=config.integrations["a"].webhook)
    log.info("dump", dump=config.model_dump())
    text = stream.getvalue() + repr(config) + str(config.model_dump())
    assert secret not in text
    assert config.integrations["a"].webhook.secret.reveal() == secret  # type: ignore[union-attr]
    # and an inline secret is refused without echoing it
    with pytest.raises(ConfigError) as err:
        parse_config(f'[daemon]\nplugins=["tests.fake_kind"]\n[integrations.a]\nkind="fake"\n'
                     f'[integrations.a.webhook]\nsecret="{secret}"\n')
    assert secret not in str(err.value)
