"""The systemd unit: systemd-analyze verifies it, its stop timeout covers the example fleet's
stop budget, and it runs `lksup run` the way the daemon expects (socket, state, signals)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.deploy.support import load, require_tool, stop_budget

UNIT = ROOT / "deploy" / "systemd" / "lksup.service"
SYSUSERS = ROOT / "deploy" / "systemd" / "lksup.sysusers"
EXAMPLE_FLEET = ROOT / "deploy" / "kubernetes" / "base" / "fleet.yaml"
INSTALLED = "/opt/lksup/bin/lksup"  # where install.sh puts it (deploy/README.md)


def _service_section(text: str) -> dict[str, list[str]]:
    """The [Service] section's settings, continuation lines joined, every value of a key."""
    settings: dict[str, list[str]] = {}
    section = ""
    logical = re.sub(r"\\\n\s*", " ", text)  # a trailing backslash continues the line
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


_UNITS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


def _timespan(value: str) -> float:
    """A systemd time span in seconds (``637``, ``10min 37s``)."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts, f"cannot read the time span {value!r}"
    return sum(float(number) * _UNITS[unit or "s"] for number, unit in parts)


SERVICE = _service_section(UNIT.read_text())


def _setting(key: str) -> str:
    values = SERVICE.get(key, [])
    assert len(values) == 1, f"{key}= is set {len(values)} times"
    return values[0]


def test_unit_verifies(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    # verify insists that ExecStart's binary exists: check a copy that starts an installed lksup
    lksup = Path(sys.executable).with_name("lksup")
    assert lksup.exists()
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED} " in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart={INSTALLED} ", f"ExecStart={lksup} "))
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""  # an unknown or misplaced key is only a warning


def test_stop_timeout_covers_the_example_fleets_stop_budget() -> None:
    assert _timespan(_setting("TimeoutStopSec")) >= stop_budget(load(EXAMPLE_FLEET))


def test_runs_the_fleet_with_the_socket_and_state_systemd_creates() -> None:
    command = shlex.split(_setting("ExecStart"))
    assert command[:3] == [INSTALLED, "run", "/etc/lksup/fleet.yaml"]
    options = dict(zip(command[3::2], command[4::2], strict=True))
    assert options["--socket"] == "/run/lksup/lksup.sock"
    assert _setting("RuntimeDirectory") == "lksup"  # /run/lksup, owned by User=, 0700
    assert _setting("RuntimeDirectoryMode") == "0700"
    assert options["--state-dir"] == "/var/lib/lksup"
    assert _setting("StateDirectory") == "lksup"
    assert _setting("User") == "lksup"


def test_signals_reach_the_daemon_as_it_expects() -> None:
    assert _setting("Type") == "notify"
    assert _setting("NotifyAccess") == "main"
    assert "WatchdogSec" not in SERVICE  # the daemon sends no WATCHDOG=1
    assert _setting("KillMode") == "mixed"  # SIGTERM to the daemon alone: its drain runs
    assert _setting("ExecReload") == "/bin/kill -HUP $MAINPID"


def test_sysusers_creates_the_units_user(tmp_path: Path) -> None:
    sysusers = require_tool("systemd-sysusers")
    (tmp_path / "etc" / "sysusers.d").mkdir(parents=True)
    (tmp_path / "etc" / "sysusers.d" / "lksup.conf").write_text(SYSUSERS.read_text())
    result = subprocess.run(
        [sysusers, f"--root={tmp_path}"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text().splitlines()
    user = next(line.split(":") for line in passwd if line.startswith("lksup:"))
    assert user[5] == "/var/lib/lksup"  # home: the StateDirectory
    assert user[6] == "/usr/sbin/nologin"
