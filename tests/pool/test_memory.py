"""Memory containment with the shared monitor and children that really allocate."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from lksup.monitors.memory_policy import MemoryPolicy
from lksup.monitors.monitor import Monitor
from lksup.pool.pool import AgentPool
from lksup.protocol.events import Accept, Decline, JobAssigned, OfferReceived
from tests.conftest import eventually
from tests.pool.helpers import Reporter, make_job, running_pool, spec, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.process]


@asynccontextmanager
async def pool_with_monitor(
    agent_dir: Path, *, memory: MemoryPolicy, budget_mb: int | None = None, launch: str = "spawn"
) -> AsyncIterator[tuple[AgentPool, Monitor]]:
    monitor = Monitor(cpu_interval=0.05, memory_interval=0.05, memory_budget_mb=budget_mb)
    async with anyio.create_task_group() as tg:
        await tg.start(monitor.run)
        async with running_pool(
            spec(agent_dir), num_idle=1, monitor=monitor, memory=memory, launch=launch
        ) as pool:
            yield pool, monitor
        tg.cancel_scope.cancel()


async def test_a_job_over_its_limit_is_killed_and_fails_with_the_reason(
    agent_dir: Path, launch: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    memory = MemoryPolicy(warn_mb=40, limit_mb=120)
    async with pool_with_monitor(agent_dir, memory=memory, launch=launch) as (pool, _):
        reporter = Reporter()
        job = make_job("AJ_1", metadata="alloc:300")
        await pool.decide(OfferReceived(job))
        with anyio.fail_after(30):
            await pool.run_job(JobAssigned(job, token="jwt"), reporter)
        error = reporter.ended["AJ_1"]
        assert error is not None
        assert re.fullmatch(r"memory limit exceeded \(\d+ MB > 120 MB\)", error), error
        assert pool.stats.failures == {"memory": 1}
        # the pool refills; other jobs are unaffected
        await wait_for(pool, lambda: len(pool.idle) == 1)
        await pool.decide(OfferReceived(make_job("AJ_2")))
        await pool.run_job(JobAssigned(make_job("AJ_2"), token="jwt"), reporter)
        assert reporter.ended["AJ_2"] is None
    warnings = [r for r in caplog.records if "(warning above 40 MB)" in r.getMessage()]
    assert warnings
    assert warnings[0].job_id == "AJ_1"  # type: ignore[attr-defined]


async def test_a_job_over_its_warning_keeps_running(
    agent_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with pool_with_monitor(agent_dir, memory=MemoryPolicy(warn_mb=60, limit_mb=0)) as (
        pool,
        _,
    ):
        reporter = Reporter()
        job = make_job("AJ_1", metadata="alloc:120")
        await pool.decide(OfferReceived(job))
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run_job, JobAssigned(job, token="jwt"), reporter)
            await eventually(  # the log is the observable here
                lambda: any("(warning above 60 MB)" in r.getMessage() for r in caplog.records),
                timeout=30,
                interval=0.02,
            )
            pool.terminate("AJ_1")
        assert reporter.ended == {"AJ_1": None}


async def test_over_the_fleet_budget_offers_are_declined_until_it_falls(agent_dir: Path) -> None:
    async with pool_with_monitor(
        agent_dir, memory=MemoryPolicy(warn_mb=0, limit_mb=0), budget_mb=120
    ) as (pool, monitor):
        await wait_for(pool, lambda: len(pool.idle) == 1)
        reporter = Reporter()
        job = make_job("AJ_1", metadata="alloc:200")
        await pool.decide(OfferReceived(job))
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run_job, JobAssigned(job, token="jwt"), reporter)
            await wait_for(pool, lambda: monitor.over_budget, timeout=30)
            assert await pool.decide(OfferReceived(make_job("AJ_2"))) == Decline(
                reason="memory budget exceeded", cause="memory"
            )
            pool.terminate("AJ_1")
        await wait_for(pool, lambda: not monitor.over_budget and len(pool.idle) == 1, timeout=30)
        assert isinstance(await pool.decide(OfferReceived(make_job("AJ_3"))), Accept)


async def test_a_closed_pool_leaves_nothing_in_the_memory_sweep(agent_dir: Path) -> None:
    """Regression: closing a pool cancelled the tasks that unwatch its processes, so every
    reload or replace left dead pids in the sweep (and a reused pid in the fleet's budget)."""
    async with pool_with_monitor(agent_dir, memory=MemoryPolicy(0, 0)) as (pool, monitor):
        await wait_for(pool, lambda: len(pool.idle) == 1)
        (warm,) = pool.idle
        assert monitor.watched == {warm.pid}
        await pool.aclose()
        await eventually(lambda: not monitor.watched, timeout=10)  # the pool's tasks wind down
