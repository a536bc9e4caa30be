"""The config-file corpus (tests/hostile/corpus.py): every hostile file is a clean ConfigError naming the key
path (or the file), never a traceback, a hang or a secret in the message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from crmsync.daemon.config import ConfigError, load_config, parse_config
from crmsync.daemon.integrations import registry
from tests.hostile import corpus
from tests.hostile.test_redaction import leaks

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _fake_kind() -> None:
    registry.load_plugin("tests.fake_kind")


def _ea_window_case(tmp_path: Path) -> str:
    (tmp_path / "k").write_text(corpus.EA_KEY)
    return (f'[integrations.ea]\nkind = "everyaction_mobilecommons"\nea_window = "1000d"\n'
            f'[integrations.ea.everyaction]\napplication_name = "app"\napi_key_file = "{tmp_path / "k"}"\n'
            f'[integrations.ea.mobilecommons]\nlogin = "l"\npassword_file = "{tmp_path / "k"}"\n')


@pytest.mark.parametrize("case", corpus.CONFIG_CASES, ids=lambda c: c.id)
def test_config_case(case: corpus.Case, tmp_path: Path) -> None:
    text = _ea_window_case(tmp_path) if case.id == "ea-window-1000d" else case.data
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="corpus.toml")
    keys = [key for key, _ in err.value.problems]
    assert any(key == case.expect or key.startswith(case.expect + ".") for key in keys) if case.expect else keys, (
        err.value.problems)
    assert not leaks(str(err.value), corpus.SECRETS)


@pytest.mark.parametrize("case", corpus.CONFIG_FILE_CASES, ids=lambda c: c.id)
def test_config_file_case(case: corpus.Case, tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(case.data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_check_config_cli_refuses_hostile_files_without_a_traceback(tmp_path: Path) -> None:
    """One CLI run per crash class of issue 9: exit 1, the key or file named, no traceback."""
    files = {"overflow.toml": (b'[daemon]\ncontrol_idle_timeout = "99999999999d"\n',
                               "daemon.control_idle_timeout"),
             "deep.toml": (("[daemon]\nplugins = " + "[" * 5000 + "]" * 5000 + "\n").encode(), "nested too deeply"),
             "latin1.toml": ('[daemon]\ntimezone = "caf\xe9"\n'.encode("latin-1"), "not UTF-8")}
    for name, (data, expected) in files.items():
        (tmp_path / name).write_bytes(data)
        result = subprocess.run([sys.executable, "-m", "crmsync", "check-config", "--config", str(tmp_path / name)],
                                capture_output=True, text=True, cwd=ROOT, timeout=60)
        output = result.stdout + result.stderr
        assert result.returncode == 1 and expected in output and "Traceback" not in output, (name, output)
