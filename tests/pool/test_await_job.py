"""A process an offer was accepted for polls for its job while the host has CPU to spare.

Between the accept and the assignment there is one round trip to the server; a process that
sleeps through it is woken by the ``StartJob``, and the wake-up is part of the job's start.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import psutil
import pytest

from lksup.pool.pool import ASSIGNMENT_POLL, AgentPool
from lksup.protocol.events import Accept, JobAssigned, OfferReceived
from tests.conftest import eventually
from tests.pool.helpers import Reporter, make_job, running_pool, spec, wait_for

pytestmark = pytest.mark.anyio


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


@pytest.mark.parametrize("request_fnc", ["", "pool_test_agent:request"])
async def test_the_process_an_offer_was_accepted_for_polls_then_runs_the_job(
    agent_dir: Path, launch: str, request_fnc: str
) -> None:
    process_spec = spec(agent_dir, request_fnc=request_fnc)
    async with running_pool(process_spec, launch=launch, assignment_poll=2.0) as pool:
        await wait_for(pool, lambda: len(pool.idle) == 1)
        pid = pool.idle[0].pid
        assert pid is not None
        await wait_asleep(pid)  # READY, and done walking its job-start path
        before = cpu_seconds(pid)
        job = make_job("AJ_1", room="yes-1")  # the request function accepts "yes" rooms
        assert isinstance(await pool.decide(OfferReceived(job)), Accept)
        await eventually(  # an idle process burns no CPU; a polling one does
            lambda: cpu_seconds(pid) >= before + 0.5, timeout=10, interval=0.005
        )
        reporter = Reporter()
        await pool.run_job(JobAssigned(job, token="jwt"), reporter)
        assert reporter.ended == {"AJ_1": None}


async def wait_asleep(pid: int) -> None:
    process = psutil.Process(pid)
    await eventually(lambda: process.status() == psutil.STATUS_SLEEPING, timeout=10, interval=0.005)


def monitor_at(cpu: float) -> Any:
    """What the pool reads of the fleet's monitor: the host's CPU share, the memory budget."""
    return SimpleNamespace(cpu=cpu, over_budget=False)


def test_no_poll_while_the_host_is_busy(agent_dir: Path) -> None:
    assert AgentPool(spec(agent_dir), num_idle=1).poll_for() == ASSIGNMENT_POLL
    assert AgentPool(spec(agent_dir), num_idle=1, monitor=monitor_at(0.2)).poll_for() > 0
    assert AgentPool(spec(agent_dir), num_idle=1, monitor=monitor_at(0.9)).poll_for() == 0


async def test_no_poll_when_assignments_come_later_than_a_poll_lasts(agent_dir: Path) -> None:
    async with running_pool(spec(agent_dir), num_idle=1) as pool:
        for n, delay in enumerate([0.0, ASSIGNMENT_POLL * 3, ASSIGNMENT_POLL * 3], start=1):
            assert pool.poll_for() == (ASSIGNMENT_POLL if n < 3 else 0)
            await wait_for(pool, lambda: len(pool.idle) == 1)
            job = make_job(f"AJ_{n}")
            await pool.decide(OfferReceived(job))
            await anyio.sleep(delay)  # a distant server: the assignment comes this much later
            await pool.run_job(JobAssigned(job, token="jwt"), Reporter())
        assert pool.poll_for() == 0  # two of three assignments came later than a poll lasts
