"""The thread executor: several jobs of one agent in one job host process, each in its own
thread and event loop; a raising job fails only itself, a host crash fails its jobs."""

from __future__ import annotations

import logging
import os
import re
import signal
from pathlib import Path

import anyio
import pytest

from lksup.monitors.memory_policy import MemoryPolicy
from lksup.monitors.monitor import Monitor
from lksup.pool.pool import AgentPool
from lksup.protocol.events import JobAssigned, OfferReceived
from tests.pool.helpers import Reporter, make_job, running_pool, spec, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.process]


async def start(
    pool: AgentPool, reporter: Reporter, tg: anyio.abc.TaskGroup, job_id: str, mode: str
) -> None:
    job = make_job(job_id, metadata=mode)
    await pool.decide(OfferReceived(job))
    tg.start_soon(pool.run_job, JobAssigned(job, token="jwt"), reporter)
    await wait_for(pool, lambda: job_id in reporter.started or job_id in reporter.ended)


async def test_one_host_runs_several_jobs_and_a_raising_job_fails_only_itself(
    agent_dir: Path, launch: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lksup.job")
    async with running_pool(spec(agent_dir, max_jobs=3), num_idle=1, launch=launch) as pool:
        await wait_for(pool, lambda: len(pool.idle) == 1)
        host = pool.idle[0]
        reporter = Reporter()
        async with anyio.create_task_group() as tg:
            await start(pool, reporter, tg, "AJ_1", "hold")
            await start(pool, reporter, tg, "AJ_2", "raise")
            await start(pool, reporter, tg, "AJ_3", "hold")
            await wait_for(pool, lambda: "AJ_2" in reporter.ended)
            assert reporter.ended == {"AJ_2": "RuntimeError: boom"}
            assert {pool.running[j].pid for j in ("AJ_1", "AJ_3")} == {host.pid}
            # a fourth job while the host has room again goes to the same host
            await start(pool, reporter, tg, "AJ_4", "")
            await wait_for(pool, lambda: "AJ_4" in reporter.ended)
            pool.terminate("AJ_1")
            pool.terminate("AJ_3")
        assert reporter.ended == {
            "AJ_1": None,
            "AJ_2": "RuntimeError: boom",
            "AJ_3": None,
            "AJ_4": None,
        }
        assert host.alive  # the host outlives its jobs
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("shutdown callback: terminated by the server") == 2
    entries = [r for r in caplog.records if r.getMessage().startswith("entrypoint AJ_")]
    assert {r.pid for r in entries} == {host.pid}  # type: ignore[attr-defined]  # jobs pack
    # each job's records name that job, not the host's latest
    assert {(r.getMessage().split()[1], r.job_id) for r in entries} == {  # type: ignore[attr-defined]
        (job_id, job_id) for job_id in ("AJ_1", "AJ_2", "AJ_3", "AJ_4")
    }


async def test_a_job_that_ended_frees_its_place_while_its_thread_winds_down(
    agent_dir: Path,
) -> None:
    # the first job's thread waits for its loop's executor after JobEnded: the host must
    # count it out at JobEnded, as the supervisor does, or it refuses the next job as full
    async with running_pool(spec(agent_dir, max_jobs=2), num_idle=1) as pool:
        await wait_for(pool, lambda: len(pool.idle) == 1)
        host = pool.idle[0]
        reporter = Reporter()
        async with anyio.create_task_group() as tg:
            await start(pool, reporter, tg, "AJ_1", "hold")
            await start(pool, reporter, tg, "AJ_2", "linger")
            await wait_for(pool, lambda: "AJ_2" in reporter.ended)
            await start(pool, reporter, tg, "AJ_3", "")
            await wait_for(pool, lambda: "AJ_3" in reporter.ended)
            assert pool.running["AJ_1"].pid == host.pid
            pool.terminate("AJ_1")
        assert reporter.ended == {"AJ_1": None, "AJ_2": None, "AJ_3": None}


async def test_a_host_started_for_an_offer_takes_the_next_jobs_while_it_has_room(
    agent_dir: Path,
) -> None:
    """Regression: a host started because no warm one was ready never joined the idle set while
    its first job ran, so the next offer started yet another host."""
    async with running_pool(spec(agent_dir, max_jobs=2), num_idle=0) as pool:
        reporter = Reporter()
        async with anyio.create_task_group() as tg:
            await start(pool, reporter, tg, "AJ_1", "hold")
            await start(pool, reporter, tg, "AJ_2", "hold")
            assert pool.running["AJ_1"].pid == pool.running["AJ_2"].pid
            for job_id in ("AJ_1", "AJ_2"):
                pool.terminate(job_id)
        assert reporter.ended == {"AJ_1": None, "AJ_2": None}


async def test_a_full_host_makes_the_pool_start_another(agent_dir: Path) -> None:
    async with running_pool(spec(agent_dir, max_jobs=2), num_idle=1) as pool:
        await wait_for(pool, lambda: len(pool.idle) == 1)
        first = pool.idle[0]
        reporter = Reporter()
        async with anyio.create_task_group() as tg:
            await start(pool, reporter, tg, "AJ_1", "hold")
            await start(pool, reporter, tg, "AJ_2", "hold")
            await start(pool, reporter, tg, "AJ_3", "hold")
            assert pool.running["AJ_3"].pid != first.pid
            for job_id in ("AJ_1", "AJ_2", "AJ_3"):
                pool.terminate(job_id)
        assert reporter.ended == {"AJ_1": None, "AJ_2": None, "AJ_3": None}


async def test_a_host_crash_fails_its_jobs_with_the_reason_and_the_pool_refills(
    agent_dir: Path, launch: str
) -> None:
    async with running_pool(spec(agent_dir, max_jobs=3), num_idle=1, launch=launch) as pool:
        await wait_for(pool, lambda: len(pool.idle) == 1)
        host = pool.idle[0]
        reporter = Reporter()
        async with anyio.create_task_group() as tg:
            await start(pool, reporter, tg, "AJ_1", "hold")
            await start(pool, reporter, tg, "AJ_2", "hold")
            assert host.pid is not None
            os.kill(host.pid, signal.SIGKILL)
        assert reporter.ended == {
            "AJ_1": "job process killed by signal SIGKILL",
            "AJ_2": "job process killed by signal SIGKILL",
        }
        await wait_for(pool, lambda: len(pool.idle) == 1 and pool.idle[0] is not host)


async def test_the_memory_limit_applies_to_the_host(agent_dir: Path) -> None:
    monitor = Monitor(cpu_interval=0.05, memory_interval=0.05)
    memory = MemoryPolicy(warn_mb=0, limit_mb=150)
    async with anyio.create_task_group() as outer:
        await outer.start(monitor.run)
        async with running_pool(
            spec(agent_dir, max_jobs=2), num_idle=1, monitor=monitor, memory=memory
        ) as pool:
            await wait_for(pool, lambda: len(pool.idle) == 1)
            reporter = Reporter()
            async with anyio.create_task_group() as tg:
                await start(pool, reporter, tg, "AJ_1", "hold")
                await start(pool, reporter, tg, "AJ_2", "alloc:300")
            for job_id in ("AJ_1", "AJ_2"):
                error = reporter.ended[job_id]
                assert error is not None
                assert re.fullmatch(r"memory limit exceeded \(\d+ MB > 150 MB\)", error), error
        outer.cancel_scope.cancel()
