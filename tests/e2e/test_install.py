"""Issue 10, item 9: docs/operations.md's install, end to end and container-free, in a temporary root that
stands for /: pip install into ROOT/opt/crmsync/venv, the groups from sysusers.d, the config's permissions
from tmpfiles.d, the installed units verified by systemd-analyze, Documentation= pointing at installed files,
and check-config resolving the credentials through the unit's LoadCredential= lines as the service will."""

from __future__ import annotations

import grp
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CREDENTIALS = ("everyaction-api-key", "mobilecommons-password", "efficy-api-key", "apsis-client-secret",
               "efficy-webhook-secret")


def _run(*args: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CREDENTIALS_DIRECTORY", "PYTHONPATH")}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, env=env,
                          **kw)  # type: ignore[call-overload, no-any-return]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python3 -m venv /opt/crmsync/venv && /opt/crmsync/venv/bin/pip install /path/to/crmsync``, offline:
    the dependencies come from the test environment (a .pth line), crmsync itself is built and installed."""
    root = tmp_path_factory.mktemp("root")
    venv = root / "opt/crmsync/venv"
    assert _run(sys.executable, "-m", "venv", "--without-pip", venv).returncode == 0
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # build from a copy, as from a downloaded source tree: the build leaves nothing in the checkout
    source = tmp_path_factory.mktemp("source") / "crmsync"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache"))
    result = _run(sys.executable, "-m", "pip", "--python", venv / "bin/python", "install", "--no-deps",
                  "--no-build-isolation", "--no-index", "--quiet", source, cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    return root


def test_the_package_installs_its_command_docs_units_and_monitoring(installed: Path) -> None:
    venv = installed / "opt/crmsync/venv"
    where = _run(venv / "bin/python", "-c", "import crmsync, sys; print(crmsync.__file__)", cwd=installed)
    assert where.stdout.startswith(str(venv)), where  # the installed copy, not the checkout
    assert _run(venv / "bin/crmsync", "--help").returncode == 0
    for name in ("share/doc/crmsync/operations.md", "share/doc/crmsync/README.md", "share/doc/crmsync/LICENSE",
                 "share/doc/crmsync/CHANGELOG.md", "share/crmsync/systemd/crmsync.service",
                 "share/crmsync/systemd/crmsync.socket", "share/crmsync/sysusers.d/crmsync.conf",
                 "share/crmsync/tmpfiles.d/crmsync.conf", "share/crmsync/monitoring/alerts.yml",
                 "share/crmsync/monitoring/grafana-dashboard.json"):
        assert (venv / name).is_file(), name
    # Documentation= of both units points at files the install created
    share = venv / "share/crmsync/systemd"
    for unit in ("crmsync.service", "crmsync.socket"):
        docs = re.findall(r"^Documentation=file://(\S+)$", (share / unit).read_text(), re.M)
        assert docs, unit
        for doc in docs:
            assert (installed / doc.lstrip("/")).is_file(), doc


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None
                    or os.geteuid() != 0, reason="needs systemd-sysusers, systemd-tmpfiles and root (chown)")
def test_groups_and_config_permissions_make_the_config_readable_by_the_service(installed: Path) -> None:
    share = installed / "opt/crmsync/venv/share/crmsync"
    (installed / "etc/sysusers.d").mkdir(parents=True, exist_ok=True)
    shutil.copy(share / "sysusers.d/crmsync.conf", installed / "etc/sysusers.d/crmsync.conf")
    result = _run("systemd-sysusers", f"--root={installed}")
    assert result.returncode == 0, result.stderr
    groups = {line.split(":")[0]: int(line.split(":")[2])
              for line in (installed / "etc/group").read_text().splitlines()}
    assert "crmsync" in groups and "crmsync-ctl" in groups
    # the admin copies the example config as root:root 0600 (a umask 077 shell); tmpfiles.d fixes it up
    (installed / "etc/crmsync").mkdir(parents=True, exist_ok=True)
    config = installed / "etc/crmsync/config.toml"
    shutil.copy(ROOT / "examples/config.toml", config)
    config.chmod(0o600)
    (installed / "etc/tmpfiles.d").mkdir(parents=True, exist_ok=True)
    shutil.copy(share / "tmpfiles.d/crmsync.conf", installed / "etc/tmpfiles.d/crmsync.conf")
    result = _run("systemd-tmpfiles", f"--root={installed}", "--create", "crmsync.conf")
    assert result.returncode == 0, result.stderr
    folder, st = (installed / "etc/crmsync").stat(), config.stat()
    assert (stat.S_IMODE(folder.st_mode), folder.st_uid, folder.st_gid) == (0o750, 0, groups["crmsync"])
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, groups["crmsync"])
    creds = installed / "etc/crmsync/credentials"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o700 and creds.stat().st_uid == 0
    # and the service joins that group
    unit = (share / "systemd/crmsync.service").read_text()
    assert re.search(r"^SupplementaryGroups=.*\bcrmsync\b", unit, re.M) and "DynamicUser=yes" in unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_installed_units_verify(installed: Path, tmp_path: Path) -> None:
    share = installed / "opt/crmsync/venv/share/crmsync/systemd"
    for unit in ("crmsync.service", "crmsync.socket"):
        # verify checks that ExecStart= exists: point /opt/crmsync at the temporary root's copy
        text = (share / unit).read_text().replace("/opt/crmsync/", f"{installed}/opt/crmsync/")
        (tmp_path / unit).write_text(text)
    result = _run("systemd-analyze", "verify", tmp_path / "crmsync.service", tmp_path / "crmsync.socket")
    assert result.returncode == 0, result.stderr
    assert "crmsync.service:" not in result.stderr and "crmsync.socket:" not in result.stderr, result.stderr
    # the hardening stays where the issue found it (1.2; SupplementaryGroups=crmsync costs 0.1)
    security = _run("systemd-analyze", "security", "--offline=true", tmp_path / "crmsync.service")
    exposure = re.search(r"Overall exposure level for crmsync.service: ([0-9.]+)", security.stdout)
    assert exposure and float(exposure.group(1)) <= 1.5, security.stdout + security.stderr


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A temporary root whose folders others may traverse, as / and /etc are (pytest's are 0700)."""
    base = Path(tempfile.mkdtemp(prefix="crmsync-install-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _unit_with_credentials(installed: Path, tmp_path: Path, *, dropin: str = "") -> Path:
    """The installed unit in etc/systemd/system, with the admin's `systemctl edit` drop-in for credentials."""
    system = tmp_path / "etc/systemd/system"
    system.mkdir(parents=True)
    shutil.copy(installed / "opt/crmsync/venv/share/crmsync/systemd/crmsync.service", system)
    store = tmp_path / "etc/crmsync/credentials"
    store.mkdir(parents=True)
    lines = ["[Service]"]
    for name in CREDENTIALS:
        (store / name).write_text(f"value-of-{name}\n")
        lines.append(f"LoadCredential={name}:{store / name}")
    (system / "crmsync.service.d").mkdir()
    (system / "crmsync.service.d/override.conf").write_text("\n".join(lines) + "\n" + dropin)
    return system / "crmsync.service"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")
def test_check_config_resolves_credentials_as_the_unit_will(installed: Path, open_root: Path) -> None:
    tmp_path = open_root
    unit = _unit_with_credentials(installed, tmp_path, dropin="SupplementaryGroups=\nSupplementaryGroups=daemon\n")
    config = tmp_path / "etc/crmsync/config.toml"
    shutil.copy(ROOT / "examples/config.toml", config)
    os.chown(config, 0, grp.getgrnam("daemon").gr_gid)  # "daemon": a group that exists on any Debian
    config.chmod(0o640)
    crmsync = installed / "opt/crmsync/venv/bin/crmsync"
    # without the unit, the relative names cannot be found, and the error says where it looked
    bare = _run(crmsync, "check-config", "--config", config, cwd=tmp_path)
    assert bare.returncode == 1
    assert "everyaction-api-key" in bare.stderr and "$CREDENTIALS_DIRECTORY" in bare.stderr, bare.stderr
    result = _run(crmsync, "check-config", "--config", config, "--unit", unit, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in CREDENTIALS:
        store = tmp_path / "etc/crmsync/credentials"
        assert f"  {name}: LoadCredential={name} in {unit} -> {store / name}\n" in result.stdout, result.stdout
    assert "readable by the service (DynamicUser=yes, SupplementaryGroups=daemon)" in result.stdout
    for name in CREDENTIALS:
        assert f"value-of-{name}" not in result.stdout + result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")
def test_check_config_refuses_a_config_the_dynamic_user_cannot_read(installed: Path, open_root: Path) -> None:
    """The issue's case: with DynamicUser=yes a root:root 0640 config is unreadable by the service."""
    tmp_path = open_root
    unit = _unit_with_credentials(installed, tmp_path, dropin="SupplementaryGroups=\nSupplementaryGroups=daemon\n")
    config = tmp_path / "etc/crmsync/config.toml"
    shutil.copy(ROOT / "examples/config.toml", config)
    os.chown(config, 0, 0)
    config.chmod(0o640)
    result = _run(installed / "opt/crmsync/venv/bin/crmsync", "check-config", "--config", config, "--unit", unit)
    assert result.returncode == 1
    assert f"cannot read {config}" in result.stderr and "mode 0640" in result.stderr, result.stderr
