"""``validate --check-imports`` for livekit-agents agents: the SDK version, the window, python:."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from click.testing import CliRunner

from lksup.cli import main

FLEET = """\
apiVersion: lksup/v1
kind: Fleet
metadata: {{name: sdk}}
agents:
  voice:
    runtime: livekit-agents
    working_dir: .
    entrypoint: voice:entrypoint
    prewarm: voice:prewarm
{extra}"""

AGENT = """
from livekit.agents import JobContext, JobProcess


def prewarm(proc: JobProcess) -> None:
    pass


async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect()
"""


def write(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "voice.py").write_text(textwrap.dedent(AGENT))
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(FLEET.format(extra=extra))
    return fleet


def test_check_imports_reports_each_sdk_agents_version(tmp_path: Path) -> None:
    fleet = write(tmp_path)
    result = CliRunner().invoke(main, ["validate", str(fleet), "--check-imports"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "  voice: livekit-agents 1.8.9"
    json_result = CliRunner().invoke(
        main, ["validate", str(fleet), "--check-imports", "-o", "json"]
    )
    assert '"sdkVersions": {\n        "voice": "1.8.9"\n      }' in json_result.output


def test_an_sdk_outside_the_window_is_an_error_naming_the_window(tmp_path: Path) -> None:
    newer = tmp_path / "site"
    dist = newer / "livekit_agents-1.9.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: livekit-agents\nVersion: 1.9.0\n")
    fleet = write(tmp_path, f"    env: {{PYTHONPATH: {newer}}}\n")
    result = CliRunner().invoke(main, ["validate", str(fleet), "--check-imports"])
    assert result.exit_code == 1
    assert (
        f"{fleet}:6:14: agent 'voice': livekit-agents 1.9.0 is outside the supported window "
        "livekit-agents>=1.6,<1.9; install a version inside it for this agent (or give the "
        "agent its own interpreter with `python:`)"
    ) in result.output


def test_an_interpreter_without_lksup_says_what_to_install(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    fleet = write(tmp_path, "    python: bare/bin/python\n")
    result = CliRunner().invoke(main, ["validate", str(fleet), "--check-imports"])
    assert result.exit_code == 1
    python = tmp_path / "bare" / "bin" / "python"
    assert (
        f"agent 'voice': python: lksup's job runtime cannot be imported by {python}"
        in result.output
    )


def test_a_missing_interpreter_is_named(tmp_path: Path) -> None:
    fleet = write(tmp_path, "    python: nowhere/bin/python\n")
    result = CliRunner().invoke(main, ["validate", str(fleet), "--check-imports"])
    assert result.exit_code == 1
    assert "agent 'voice': python: [Errno 2] No such file or directory" in result.output
