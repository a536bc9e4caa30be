"""Config validation: precise key paths, secrets through files/env/credentials, duplicates, reload diffs."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmsync.daemon.config import ConfigError, parse_config

PLUGIN = '[daemon]\nplugins = ["tests.fake_kind"]\n'


def problems(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    return dict(err.value.problems)


def test_defaults_are_valid() -> None:
    config = parse_config("")
    assert config.daemon.timezone == "UTC" and config.http.webhook_listen == "127.0.0.1:8787"
    assert str(config.daemon.database_path) == "/var/lib/crmsync/crmsync.db"


def test_duplicate_integration_names_are_reported() -> None:
    p = problems(PLUGIN + '[integrations.a]\nkind = "fake"\n[integrations.a]\nkind = "fake"\n')
    assert "duplicate integration name" in p["integrations.a"]


def test_bad_names_kinds_and_missing_kind() -> None:
    p = problems(PLUGIN + '[integrations.Bad_Name]\nkind = "fake"\n[integrations.x]\nnotes = "n"\n'
                          '[integrations.y]\nkind = "nope"\n')
    assert "lower-case" in p["integrations.Bad_Name"]
    assert p["integrations.x.kind"].startswith("required")
    assert "unknown kind 'nope'" in p["integrations.y.kind"]


def test_secret_files_env_and_credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "hook").write_text("from-credentials\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    config = parse_config(PLUGIN + '[integrations.a]\nkind = "fake"\n[integrations.a.webhook]\nsecret_file = "hook"\n')
    assert config.integrations["a"].webhook.secret.reveal() == "from-credentials"  # type: ignore[union-attr]

    p = problems(PLUGIN + '[integrations.a]\nkind = "fake"\n[integrations.a.webhook]\n'
                          'secret_file = "/nonexistent/x"\n')
    assert "cannot read" in p["integrations.a.webhook.secret_file"]
    monkeypatch.delenv("UNSET_VAR_FOR_TEST", raising=False)
    p = problems(PLUGIN + '[integrations.a]\nkind = "fake"\n[integrations.a.webhook]\n'
                          'secret_env = "UNSET_VAR_FOR_TEST"\n')
    assert "not set" in p["integrations.a.webhook.secret_env"]
    p = problems(PLUGIN + '[integrations.a]\nkind = "fake"\n[integrations.a.webhook]\nmode = "token"\n')
    assert p["integrations.a.webhook.secret"].startswith("required")


def test_schedules_are_validated() -> None:
    p = problems(PLUGIN + '[integrations.a]\nkind = "fake"\n[integrations.a.schedules.tick]\n'
                          'every = "5s"\n[integrations.a.schedules.nightly]\ndaily_at = "02:00"\nevery = "1h"\n')
    assert "at least 10s" in p["integrations.a.schedules.tick"]
    assert "exactly one" in p["integrations.a.schedules.nightly"]


def test_toml_syntax_error_is_one_clear_problem() -> None:
    p = problems("[daemon\n")
    assert "TOML syntax" in p[""]


def test_equal_configs_compare_equal_for_reload(tmp_path: Path) -> None:
    (tmp_path / "s").write_text("x")
    text = PLUGIN + f'[integrations.a]\nkind = "fake"\n[integrations.a.webhook]\nsecret_file = "{tmp_path}/s"\n'
    before = parse_config(text).integrations
    assert before == parse_config(text).integrations
    (tmp_path / "s").write_text("y")  # the secret changed: the integration must restart on reload
    assert before != parse_config(text).integrations


def test_api_urls_are_validated_with_their_key_path(tmp_path: Path) -> None:
    p = problems("""
[integrations.x]
kind = "everyaction_mobilecommons"
default_opt_in_path_id = "1"
[integrations.x.everyaction]
application_name = "a"
api_key_env = "HOME"
host = "api.securevan.com/v4"
[integrations.x.mobilecommons]
login = "l"
password_env = "HOME"
base_url = "ftp://x"
""")
    assert "not an http(s) URL" in p["integrations.x.everyaction.host"]
    assert "not an http(s) URL" in p["integrations.x.mobilecommons.base_url"]
