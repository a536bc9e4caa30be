"""Which integration kinds exist: the built-ins, plus kinds registered by plugin modules."""

from __future__ import annotations

import importlib
import logging

from crmsync.daemon.integrations.base import IntegrationKind

log = logging.getLogger("crmsync.daemon.integrations.registry")

_KINDS: dict[str, type[IntegrationKind]] = {}
_BUILTINS = (
    "crmsync.daemon.integrations.everyaction_mobilecommons",
    "crmsync.daemon.integrations.efficy_apsis",
)
_loaded = False


def register(kind: type[IntegrationKind]) -> type[IntegrationKind]:
    """Register a kind (usable as a class decorator)."""
    if not kind.kind:
        raise ValueError("an integration kind needs a name")
    _KINDS[kind.kind] = kind
    return kind


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTINS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a real import error inside the module: surface it
                raise


def load_plugin(module: str) -> None:
    importlib.import_module(module)


def get_kind(name: str) -> type[IntegrationKind] | None:
    _load_builtins()
    return _KINDS.get(name)


def kind_names() -> list[str]:
    _load_builtins()
    return sorted(_KINDS)


def all_kinds() -> list[type[IntegrationKind]]:
    _load_builtins()
    return [_KINDS[k] for k in sorted(_KINDS)]
