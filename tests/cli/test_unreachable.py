"""``lksup: error: ...`` when no daemon answers, and the hint to start one only when none runs
on the socket: a daemon that is slow to answer is not one to start again."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from lksup.control import client
from tests.cli.helpers import run_cli

HINT = "hint: start one with `lksup run FLEET`"


def test_a_missing_socket_gets_the_hint_to_start_a_daemon(socket_path: Path) -> None:
    result = run_cli("status", "--socket", str(socket_path))
    assert result.exit_code == 4
    assert result.stderr.startswith(f"lksup: error: no lksup daemon is listening on {socket_path}")
    assert HINT in result.stderr


def test_a_daemon_that_does_not_answer_in_time_gets_no_hint(
    mute_socket: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the hint to start a daemon followed every unreachable error."""
    short = functools.partial(client.ControlClient, timeout=0.2)
    monkeypatch.setattr(client, "ControlClient", short)
    result = run_cli("drain", "--all", "--socket", str(mute_socket))
    assert result.exit_code == 4
    assert result.stderr == (
        f"lksup: error: the lksup daemon on {mute_socket} did not answer in time\n"
    )
