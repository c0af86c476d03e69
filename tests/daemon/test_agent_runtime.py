"""An agent built from a fleet file, running against the dev server: it registers, takes jobs,
and reports full when its load policy or the fleet's memory budget says so."""

from __future__ import annotations

import textwrap
from pathlib import Path

import anyio
import pytest

from lksup.daemon.agent import AgentRuntime
from lksup.daemon.resolve import Environment
from lksup.devserver.server import DevServer
from lksup.fleet.loading import load_fleet
from lksup.fleet.schema import Agent
from lksup.monitors.monitor import Monitor
from tests.pool.conftest import AGENT

pytestmark = [pytest.mark.anyio, pytest.mark.process]

KEY, SECRET = "devkey", "runtime-secret-0123456789abcdef01234567"
WS_AVAILABLE, WS_FULL = 0, 1


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def fleet_agent(tmp_path: Path, extra: str = "") -> Agent:
    (tmp_path / "pool_test_agent.py").write_text(textwrap.dedent(AGENT))
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "apiVersion: lksup/v1\nkind: Fleet\nmetadata: {name: t}\n"
        "agents:\n"
        "  runtime-agent:\n"
        "    entrypoint: pool_test_agent:entrypoint\n"
        "    prewarm: pool_test_agent:prewarm\n"
        "    working_dir: .\n"
        "    num_idle_processes: 1\n"
        "    load: jobs\n"
        "    max_jobs: 1\n" + extra
    )
    return load_fleet(str(path), environ={}).fleet.agents["runtime-agent"]


def status_of(server: DevServer, name: str) -> int | None:
    return next((w.status for w in server.workers() if w.agent_name == name), None)


async def test_agent_reports_full_at_max_jobs_and_over_the_memory_budget(tmp_path: Path) -> None:
    agent = fleet_agent(tmp_path)
    server = DevServer({KEY: SECRET}, port=0, claim_delay=0.0)
    monitor = Monitor(cpu_interval=0.05, memory_interval=0.05)
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        await tg.start(monitor.run)
        env = Environment(
            environ={},
            base_dir=tmp_path,
            default_url=server.url,
            default_api_key=KEY,
            default_api_secret=SECRET,
        )
        runtime = AgentRuntime(
            "runtime-agent",
            agent,
            env,
            monitor=monitor,
            init_limiter=anyio.CapacityLimiter(2),
            load_interval=0.05,
        )
        await tg.start(runtime.run)
        await runtime.session.wait_registered()
        with anyio.fail_after(30):
            await runtime.pool.wait_until(lambda: len(runtime.pool.idle) == 1)
            await server.wait_workers(lambda ws: status_of(server, "runtime-agent") == WS_AVAILABLE)
        # the memory budget: the idle process alone is over 1 MB
        monitor.set_memory_budget(1)
        with anyio.fail_after(10):
            await server.wait_workers(lambda ws: status_of(server, "runtime-agent") == WS_FULL)
        monitor.set_memory_budget(None)
        with anyio.fail_after(10):
            await server.wait_workers(lambda ws: status_of(server, "runtime-agent") == WS_AVAILABLE)
        # max_jobs 1 with load "jobs": a running job makes the agent full
        await server.create_dispatch("room-1", "runtime-agent", metadata="hold")
        with anyio.fail_after(30):
            await server.wait_workers(lambda ws: status_of(server, "runtime-agent") == WS_FULL)
        assert runtime.compute_load() == (1.0, True)
        runtime.session.stop()
        await runtime.pool.aclose()
        tg.cancel_scope.cancel()
