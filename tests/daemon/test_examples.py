"""The shipped examples/config.toml is valid and documents every configuration key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from crmsync.daemon.config import DaemonConfig, HttpConfig, WebhookAuthConfig, load_config
from crmsync.daemon.integrations import registry

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "config.toml"


def test_example_config_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = EXAMPLE.read_text()
    for name in re.findall(r'_file\s*=\s*"([^"/]+)"', text):  # credential names, as LoadCredential= gives them
        (tmp_path / name).write_text(f"secret-for-{name}\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config = load_config(EXAMPLE)
    builtin = {name for name in registry.kind_names() if name != "fake"}  # the test suite's own kind
    assert {c.kind for c in config.integrations.values()} == builtin


def _keys(model: type[BaseModel]) -> set[str]:
    keys = set()
    secrets: dict[str, Any] = getattr(model, "secrets", {})
    for name in model.model_fields:
        keys.add(f"{name}_file" if name in secrets else name)
    return keys


@pytest.mark.parametrize("model", [DaemonConfig, HttpConfig, WebhookAuthConfig])
def test_example_mentions_every_daemon_key(model: type[BaseModel]) -> None:
    text = EXAMPLE.read_text()
    missing = [k for k in _keys(model) if not re.search(rf"\b{k}\b", text)]
    assert not missing, f"examples/config.toml does not document {missing}"
