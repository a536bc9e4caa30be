"""Secrets in config: never inline, always ``NAME_file`` (a path) or ``NAME_env`` (an environment variable).

A relative ``*_file`` path is looked up in ``$CREDENTIALS_DIRECTORY`` first, so systemd's ``LoadCredential=``
works with ``password_file = "everyaction-key"``; outside the unit, ``check-config`` resolves such names
through the unit's ``LoadCredential=`` lines instead (:data:`CREDENTIAL_LOOKUPS`) and says where it looked.
The value is held in a :class:`Secret`, whose ``repr`` and ``str`` are masked so it cannot leak into logs,
errors or reports by accident.
"""

from __future__ import annotations

import os
import stat
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

from crmsync import redaction


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value
        redaction.register(value)  # from now on, redacted from errors, reports and logs in every form

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass
class CredentialLookups:
    """Set by ``check-config`` outside the unit: relative ``*_file`` names resolve through the unit's
    ``LoadCredential=`` map (as systemd will provide them), and every lookup is recorded to be shown."""

    unit: str | None = None
    credentials: dict[str, Path] = field(default_factory=dict)
    encrypted: frozenset[str] = frozenset()
    seen: list[tuple[str, str, bool]] = field(default_factory=list)  # (name in config, where, found)


CREDENTIAL_LOOKUPS: ContextVar[CredentialLookups | None] = ContextVar("credential_lookups", default=None)
MAX_FILE_BYTES = 4 * 1024 * 1024


def read_regular_file(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file. A FIFO, device, socket or directory is refused without blocking: the file is
    opened non-blocking and checked with fstat before any read (a FIFO would otherwise hang the open)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(0, "not a regular file")
        if info.st_size > limit:
            raise OSError(0, f"larger than {limit} bytes")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit + 1)[:limit]
    finally:
        os.close(fd)


def read_secret_file(raw: str) -> str:
    path = Path(raw)
    looked: list[str] = []
    lookups = CREDENTIAL_LOOKUPS.get()
    if not path.is_absolute():
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if creds:
            looked.append(f"$CREDENTIALS_DIRECTORY ({creds})")
            if (Path(creds) / path).exists():
                path = Path(creds) / path
        elif lookups is not None and lookups.unit is not None:
            if raw in lookups.encrypted:
                lookups.seen.append((raw, f"LoadCredentialEncrypted= in {lookups.unit} (decrypted by systemd "
                                          "at start; not checked here)", True))
                return "<encrypted credential>"
            if raw in lookups.credentials:
                path = lookups.credentials[raw]
                looked.append(f"LoadCredential={raw} in {lookups.unit}")
            else:
                looked.append(f"no LoadCredential={raw} in {lookups.unit}")
        else:
            looked.append("$CREDENTIALS_DIRECTORY (not set: not under systemd; check-config --unit reads a unit's "
                          "LoadCredential=)")
    where = " -> ".join([*looked, str(path)])
    try:
        value = read_regular_file(path).decode("utf-8")
    except OSError as exc:
        if lookups is not None:
            lookups.seen.append((raw, where, False))
        raise ValueError(f"cannot read {str(path)!r}: {exc.strerror or exc}"
                         + (f" (looked in: {where})" if looked else "")) from None
    except UnicodeDecodeError:
        if lookups is not None:
            lookups.seen.append((raw, where, False))
        raise ValueError(f"{str(path)!r} is not UTF-8 text") from None
    value = value.strip("\r\n")
    if not value:
        raise ValueError(f"{str(path)!r} is empty")
    if lookups is not None:
        lookups.seen.append((raw, where, True))
    return value


class StrictModel(BaseModel):
    """Config sections: unknown keys are errors, values are immutable after load."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class SecretsModel(StrictModel):
    """A config section with secrets. Subclasses list them in ``secrets``: name -> required?"""

    secrets: ClassVar[dict[str, bool]] = {}

    @model_validator(mode="before")
    @classmethod
    def _resolve_secrets(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not cls.secrets:
            return data
        data = dict(data)
        problems: list[str] = []
        for name, required in cls.secrets.items():
            inline = data.pop(name, None)
            file_key, env_key = f"{name}_file", f"{name}_env"
            file_ref, env_ref = data.pop(file_key, None), data.pop(env_key, None)
            if isinstance(inline, Secret):  # already resolved (model_copy, reload diffing)
                data[name] = inline
                continue
            if inline is not None:
                problems.append(f"{name}: secrets are never inline; use {file_key} or {env_key}")
                continue
            if file_ref is not None and env_ref is not None:
                problems.append(f"{name}: set only one of {file_key} and {env_key}")
                continue
            if file_ref is not None:
                if not isinstance(file_ref, str):
                    problems.append(f"{file_key}: must be a path string")
                    continue
                try:
                    data[name] = Secret(read_secret_file(file_ref))
                except ValueError as exc:
                    problems.append(f"{file_key}: {exc}")
            elif env_ref is not None:
                if not isinstance(env_ref, str):
                    problems.append(f"{env_key}: must be an environment variable name")
                    continue
                value = os.environ.get(env_ref)
                if not value:
                    problems.append(f"{env_key}: environment variable {env_ref!r} is not set or empty")
                else:
                    data[name] = Secret(value)
            elif required:
                problems.append(f"{name}: required; set {file_key} or {env_key}")
        if problems:
            raise PydanticCustomError("secret", "{problems}", {"problems": " | ".join(problems)})
        return data
