"""``apply --wait`` and ``drain --wait`` against an in-test control server: progress is printed
once per change, and the end is told in one line."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import anyio
import pytest

from lksup.cli import converge
from lksup.control.api import AgentStatus, ApplyRequest, StatusList
from tests.cli.helpers import run_cli
from tests.control.conftest import FakeApp, serving

pytestmark = pytest.mark.anyio

FLEET = str(Path(__file__).parents[2] / "fleets" / "dev.yaml")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class ScriptedApp(FakeApp):
    """Answers ``status`` with the next of ``screens`` each time (the last one thereafter)."""

    def __init__(self, screens: list[list[AgentStatus]]) -> None:
        super().__init__()
        self.screens = screens

    async def status(self, agent: str | None) -> StatusList:
        screen = self.screens.pop(0) if len(self.screens) > 1 else self.screens[0]
        return StatusList(items=screen)

    async def apply(self, request: ApplyRequest) -> dict[str, Any]:
        return {
            "agents": [
                {"name": "alpha", "action": "create"},
                {"name": "gone", "action": "drain-and-remove"},
            ]
        }

    async def drain(self, agent: str | None) -> dict[str, Any]:
        return {"draining": ["alpha"], "jobs": 2}


def agent(name: str, **fields: Any) -> AgentStatus:
    return AgentStatus(name=name, state=fields.pop("state", "running"), **fields)


async def lksup(socket_path: Path, *args: str) -> tuple[int, str, str]:
    result = await anyio.to_thread.run_sync(
        functools.partial(run_cli, *args, "--socket", str(socket_path))
    )
    return result.exit_code, result.stdout, result.stderr


async def test_apply_wait_prints_each_change_until_converged(socket_path: Path) -> None:
    starting = agent("alpha", state="starting", message="warming up")
    ready = agent("alpha", ready=True)
    drained = agent("beta", sync="override", ready=False)
    gone = agent("gone", ready=True)
    app = ScriptedApp([[starting, gone], [starting, gone], [ready, gone], [ready, drained]])
    async with serving(socket_path, app):
        code, out, err = await lksup(socket_path, "apply", FLEET, "--wait", "--skip-import-check")
    assert (code, err) == (0, "")
    assert out.splitlines()[-3:] == [
        "waiting for 2 agent(s): alpha starting (warming up); gone draining away",
        "waiting for 1 agent(s): gone draining away",
        "converged: 1 agent(s) ready, 1 drained by an operator",
    ]


async def test_drain_wait_counts_the_jobs_left_until_none(socket_path: Path) -> None:
    app = ScriptedApp([[agent("alpha", jobs=n), agent("beta", jobs=5)] for n in (2, 2, 1, 0)])
    async with serving(socket_path, app):
        code, out, err = await lksup(socket_path, "drain", "alpha", "--wait")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "draining alpha (2 job(s) running)",
        "  2 job(s) left",
        "  1 job(s) left",
        "drained",
    ]


async def test_drain_wait_gives_up_at_its_timeout(socket_path: Path) -> None:
    app = ScriptedApp([[agent("alpha", jobs=1)]])
    async with serving(socket_path, app):
        code, _, err = await lksup(socket_path, "drain", "alpha", "--wait", "--timeout", "0.2s")
    assert (code, err) == (1, "lksup: error: jobs were still running after 200ms\n")


def test_an_agent_converges_when_ready_and_synced_or_drained_by_an_operator() -> None:
    assert converge.converged(agent("a", ready=True), removed=())
    assert not converge.converged(agent("a", ready=True, sync="pending"), removed=())
    assert converge.converged(agent("a", sync="override"), removed=())
    assert not converge.converged(agent("a", ready=True), removed=("a",))
    assert converge.converged_line([agent("a", ready=True)]) == "converged: 1 agent(s) ready"
