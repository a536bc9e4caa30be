"""check-config for this kind: the seed's two cautions, unknown fields, credentials, secrets never inline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from crmsync.daemon.config import ConfigError, dump_toml
from tests.integrations.everyaction_mobilecommons.harness import make_config


def problems(tmp_path: Path, **section: object) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, "1", **section)
    return dict(info.value.problems)


@pytest.mark.parametrize("field", ["phone", "email", "opt_in_status"])
def test_required_is_refused_on_phone_email_and_opt_in_status(tmp_path: Path, field: str) -> None:
    found = problems(tmp_path, field_mappings={field: {"required": True}})
    reason = found[f"integrations.ea-mc.field_mappings.{field}.required"]
    assert "must exist in both databases" in reason


def test_required_is_refused_on_the_constituent_id(tmp_path: Path) -> None:
    found = problems(tmp_path, field_mappings={"identifier": {"required": True}})
    reason = found["integrations.ea-mc.field_mappings.identifier.required"]
    assert "provided by EveryAction" in reason and "Mobile Commons to EveryAction would fail" in reason


def test_all_four_are_reported_at_once(tmp_path: Path) -> None:
    found = problems(tmp_path, field_mappings={f: {"required": True}
                                               for f in ("phone", "email", "opt_in_status", "identifier")})
    assert len([k for k in found if k.endswith(".required")]) == 4


def test_unknown_fields_and_api_names_are_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, field_mappings={"birthday": {"required": True}})
    assert "unknown field 'birthday'" in found["integrations.ea-mc.field_mappings"]
    assert "custom fields are never synced" in found["integrations.ea-mc.field_mappings"]
    found = problems(tmp_path, field_mappings={"email": {"api_field": "emailAddress"}})
    assert "would fail" in found["integrations.ea-mc.field_mappings.email.api_field"]
    found = problems(tmp_path, field_mappings={"first_name": {"required": True, "colour": "red"}})
    assert found["integrations.ea-mc.field_mappings.first_name.colour"] == "unknown key"


def test_other_fields_may_be_required(tmp_path: Path) -> None:
    config = make_config(tmp_path, "1", field_mappings={"first_name": {"required": True},
                                                         "zip_code": {"required": True}})
    section = config.integrations["ea-mc"]
    assert section.required_fields() == frozenset({"first_name", "zip_code"})  # type: ignore[attr-defined]


def test_credentials_and_secrets(tmp_path: Path) -> None:
    found = problems(tmp_path, mobilecommons={"auth": "bearer", "base_url": "http://mc.test/api"})
    assert "bearer" in found["integrations.ea-mc.mobilecommons"]
    (tmp_path / "tok").write_text("tok-123\n")
    config = make_config(tmp_path, "1", mobilecommons={"auth": "bearer", "token_file": str(tmp_path / "tok")})
    assert "tok-123" not in repr(config) and "sim-password" not in repr(config)
    found = problems(tmp_path, everyaction={"application_name": "x", "api_key": "inline-key"})
    assert "never inline" in found["integrations.ea-mc.everyaction.api_key"]
    found = problems(tmp_path, ea_window="100d")
    assert "90d" in found["integrations.ea-mc.ea_window"]  # names the key (issue 9)


def test_check_config_cli_names_the_key_and_the_caution(tmp_path: Path) -> None:
    config = make_config(tmp_path, "1")  # writes the secret files
    del config
    data = {
        "integrations": {"ea-mc": {
            "kind": "everyaction_mobilecommons",
            "everyaction": {"application_name": "a", "api_key_file": str(tmp_path / "ea.key")},
            "mobilecommons": {"login": "l", "password_file": str(tmp_path / "mc.pw")},
            "field_mappings": {"phone": {"required": True}},
        }},
    }

    class Buf:
        parts: list[str] = []

        def write(self, s: str) -> None:
            self.parts.append(s)

        def getvalue(self) -> str:
            return "".join(self.parts)

    path = tmp_path / "config.toml"
    path.write_text(dump_toml(data, Buf()))
    done = subprocess.run([sys.executable, "-m", "crmsync", "check-config", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "integrations.ea-mc.field_mappings.phone.required" in done.stdout + done.stderr
