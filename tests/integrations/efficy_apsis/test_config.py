"""check-config: bad mappings are refused with their key paths; secrets never appear in errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crmsync.daemon.config import ConfigError, config_from_mapping
from tests.integrations.efficy_apsis.harness import make_config


def problems(tmp_path: Path, **section: Any) -> dict[str, str]:
    make_config(tmp_path)  # writes the secret files
    base: dict[str, Any] = {
        "kind": "efficy_apsis",
        "efficy": {"url": "https://crm.example.com", "api_key_file": str(tmp_path / "efficy-key")},
        "apsis": {"client_id": "x", "client_secret_file": str(tmp_path / "apsis-secret")},
    }
    base.update(section)
    with pytest.raises(ConfigError) as exc:
        config_from_mapping({"integrations": {"ea": base}})
    return dict(exc.value.problems)


def test_a_good_config_loads(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert config.integrations["ea"].kind == "efficy_apsis"
    assert "efficy-test-key" not in repr(config)


@pytest.mark.parametrize("section,path,fragment", [
    ({"consents": {"news": {"profile": 1, "topic": "t.a", "channel": ["email", "sms"]}}},
     "integrations.ea.consents.news.channel", "one channel per mapping"),
    ({"consents": {"news": {"profile": 1, "topic": "t.a", "channel": "fax"}}},
     "integrations.ea.consents.news.channel", "'email' or 'sms'"),
    ({"consents": {"news": {"profile": 1, "topic": "t.a", "channel": "email"},
                   "again": {"profile": 2, "topic": "t.a", "channel": "email"}}},
     "integrations.ea.consents", "already mapped by news"),
    ({"consents": {"news": {"profile": 1, "topic": "t.a", "channel": "email", "extra": 1}}},
     "integrations.ea.consents.news.extra", "unknown key"),
    ({"consents": {"news": {"topic": "t.a", "channel": "email"}}},
     "integrations.ea.consents.news.profile", "required"),
    ({"attributes": {"EMAIL2": "com.apsis1.attributes.email"}}, "integrations.ea.attributes", "cannot be remapped"),
    ({"attributes": {"K_CONTACT": "usercreated.attributes.x"}}, "integrations.ea.attributes", "cannot be remapped"),
    ({"attributes": {"EMAIL1": "usercreated.attributes.x"}}, "integrations.ea", "mapped automatically"),
    ({"attributes": {"FIRSTNAME": "com.apsis1.attributes.firstname", "NICK": "com.apsis1.attributes.firstname"}},
     "integrations.ea.attributes", "already mapped"),
    ({"attributes": {"FIRSTNAME": 3}}, "integrations.ea.attributes.FIRSTNAME", "string"),
    ({"consents": {"s": {"profile": 1, "topic": "t.a", "channel": "sms"}}}, "integrations.ea",
     "needs an attribute mapping"),
    ({"tags": {"queries": {"t.x": 1}, "profiles": {"t.x": 2}}}, "integrations.ea.tags", "pick one"),
    ({"conditions": {"OPENED": [1]}}, "integrations.ea.conditions.OPENED", ""),
    ({"full_sync": {"import_threshold": -1}}, "integrations.ea.full_sync.import_threshold", ""),
    ({"schedules": {"realtime": {"every": "1m"}}}, "integrations.ea.schedules.realtime", "no scheduled flow"),
])
def test_bad_mappings_are_refused_with_key_paths(tmp_path: Path, section: dict[str, Any], path: str,
                                                 fragment: str) -> None:
    found = problems(tmp_path, **section)
    assert any(k.startswith(path) and fragment in v for k, v in found.items()), found


def test_secrets_are_never_inline(tmp_path: Path) -> None:
    found = problems(tmp_path, efficy={"url": "https://crm.example.com", "api_key": "s3cret-inline"})
    assert any("api_key" in k for k in found)
    assert "s3cret-inline" not in repr(found)
