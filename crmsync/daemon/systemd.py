"""systemd integration in pure Python: sd_notify (READY/RELOADING/WATCHDOG/STOPPING/STATUS), socket
activation and the journal check.

No libsystemd: the notify protocol is one AF_UNIX datagram to ``$NOTIFY_SOCKET`` (a leading ``@`` is the
abstract namespace); ``LISTEN_FDS``/``LISTEN_PID`` hand us pre-opened sockets starting at fd 3 (sd_listen_fds(3)).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("crmsync.daemon.systemd")

SD_LISTEN_FDS_START = 3


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        addr = env.pop("NOTIFY_SOCKET", None)  # children must not inherit it
        self._sock: socket.socket | None = None
        if addr:
            if addr.startswith("@"):
                addr = "\0" + addr[1:]
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                s.connect(addr)
                self._sock = s
            except OSError as exc:
                log.warning("cannot reach NOTIFY_SOCKET: %s", exc)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.send("\n".join(lines).encode())
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)

    def reloading(self, status: str = "reloading the configuration") -> None:
        """RELOADING=1 with the CLOCK_MONOTONIC time systemd requires (sd_notify(3)); READY=1 ends it."""
        self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: dict[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when no watchdog is asked for."""
    env = os.environ if environ is None else environ
    usec, pid = env.pop("WATCHDOG_USEC", None), env.pop("WATCHDOG_PID", None)
    if not usec:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None


def listen_fds(environ: dict[str, str] | None = None) -> dict[str, int]:
    """Sockets passed by systemd, by FileDescriptorName (unnamed ones as 'fd3', 'fd4', ...)."""
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return {}
    try:
        count = int(env.pop("LISTEN_FDS", "0"))
    except ValueError:
        return {}
    env.pop("LISTEN_PID", None)
    names = env.pop("LISTEN_FDNAMES", "").split(":")
    out = {}
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        name = names[i] if i < len(names) and names[i] else f"fd{fd}"
        os.set_inheritable(fd, False)
        out[name] = fd
    return out


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def socket_address(fd: int) -> str:
    """What a passed socket listens on: its path for AF_UNIX (``@name`` when abstract), else host:port."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        name: Any = sock.getsockname()
    except OSError:
        return f"fd:{fd}"
    finally:
        sock.close()
    if isinstance(name, bytes):  # abstract namespace
        return "@" + name.lstrip(b"\0").decode(errors="replace")
    if isinstance(name, str):
        return name or f"fd:{fd}"
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    return f"fd:{fd}"


def connected_to_journal(fd: int | None, environ: dict[str, str] | None = None) -> bool:
    """True when ``fd`` is the journal stream systemd connected us to: ``$JOURNAL_STREAM`` is
    ``DEVICE:INODE`` of that stream, and only a matching fd is the journal (our output may have been
    redirected, or the variable inherited by a child whose output goes elsewhere). systemd.exec(5)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    if fd is None or ":" not in value:
        return False
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(fd)
        return st.st_dev == int(dev) and st.st_ino == int(ino)
    except (OSError, ValueError):
        return False


# -- reading the installed unit (check-config resolves credentials as the unit will) ----------------------

CREDSTORE_DIRS = (Path("/etc/credstore"), Path("/run/credstore"), Path("/usr/lib/credstore"))
DEFAULT_UNIT = Path("/etc/systemd/system/crmsync.service")


@dataclass(frozen=True)
class UnitFacts:
    """What check-config needs from a service unit: its credentials and who the service runs as."""

    path: Path
    credentials: dict[str, Path] = field(default_factory=dict)  # LoadCredential=ID:PATH
    encrypted: frozenset[str] = frozenset()  # LoadCredentialEncrypted=: only systemd can read them
    dynamic_user: bool = False
    supplementary_groups: tuple[str, ...] = ()


def read_unit(path: Path) -> UnitFacts:
    """The [Service] settings of ``path`` and its drop-ins that decide what the daemon can read
    (systemd.exec(5)). A credential without an absolute path is looked up in the credential stores, as
    systemd does; an empty ``SupplementaryGroups=`` resets the list."""
    credentials: dict[str, Path] = {}
    encrypted: set[str] = set()
    dynamic = False
    groups: list[str] = []
    # the unit, then its drop-ins (`systemctl edit` writes NAME.service.d/override.conf), in name order
    text = path.read_text(encoding="utf-8")
    for drop_in in sorted(path.with_name(path.name + ".d").glob("*.conf")):
        text += "\n" + drop_in.read_text(encoding="utf-8")
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, _, value = (part.strip() for part in line.partition("="))
        if key in ("LoadCredential", "LoadCredentialEncrypted"):
            ident, _, source = value.partition(":")
            if key == "LoadCredentialEncrypted":
                encrypted.add(ident)
                continue
            if source.startswith("/"):
                credentials[ident] = Path(source)
            else:
                name = source or ident
                found = next((d / name for d in CREDSTORE_DIRS if (d / name).exists()), None)
                credentials[ident] = found or CREDSTORE_DIRS[0] / name
        elif key == "DynamicUser":
            dynamic = value.lower() in ("yes", "true", "1", "on")
        elif key == "SupplementaryGroups":
            groups = groups + value.split() if value else []
    return UnitFacts(path, credentials, frozenset(encrypted), dynamic, tuple(groups))
