"""A real job process told an offer was accepted for it (``AwaitJob``) polls for its job.

While it polls, the process stays on a CPU instead of sleeping, so the ``StartJob`` that
follows is read as it lands rather than after the process is woken. The poll is bounded: it
ends when the next frame arrives, or after ``poll_s`` seconds; the process then sleeps as an
idle process does, and still serves its job.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from lksup.jobs import ipc
from tests.conftest import eventually

from .harness import Child, initialize, job_wire, spawn, write_agent

pytestmark = [pytest.mark.anyio, pytest.mark.process]

AGENT = """
    import logging

    async def entrypoint(ctx):
        logging.getLogger("agent").info("entrypoint ran for %s", ctx.job.id)
"""


def cpu_seconds(child: Child) -> float:
    times = psutil.Process(child.process.pid).cpu_times()
    return times.user + times.system


async def wait_cpu(child: Child, *, above: float) -> None:
    """Until the process has used more than ``above`` CPU-seconds (only a poll burns that)."""
    await eventually(lambda: cpu_seconds(child) > above, timeout=10, interval=0.01)


async def wait_asleep(child: Child) -> None:
    """Until the process's main thread sleeps (a polling process is running or runnable)."""
    process = psutil.Process(child.process.pid)
    await eventually(lambda: process.status() == psutil.STATUS_SLEEPING, timeout=10, interval=0.01)


async def idle_child(child: Child) -> float:
    """A READY process that has walked its job-start path; its CPU-seconds so far."""
    await child.ready(initialize())
    await child.send(ipc.Ping(sent_at_ns=1))  # answered once the idle walk is done
    await child.expect(ipc.Pong)
    return cpu_seconds(child)


async def test_the_poll_ends_by_itself_and_the_process_still_runs_its_job(tmp_path: Path) -> None:
    write_agent(tmp_path, AGENT)
    async with spawn(tmp_path) as child:
        before = await idle_child(child)
        await child.send(ipc.AwaitJob(job_id="AJ_1", poll_s=0.6))
        await wait_cpu(child, above=before + 0.2)  # it polls rather than sleeps
        await wait_asleep(child)  # ... for a bounded time
        assert cpu_seconds(child) - before < 0.6 + 0.3
        await child.send(ipc.StartJob(job=job_wire(), url="ws://lk", token="tok"))
        await child.expect(ipc.JobStarted)
        await child.wait_log(lambda record: "entrypoint ran for AJ_1" in record.message)
        assert (await child.expect(ipc.JobEnded)).error == ""
        assert await child.wait_exit() == 0


async def test_the_next_frame_ends_the_poll(tmp_path: Path) -> None:
    write_agent(tmp_path, AGENT)
    async with spawn(tmp_path) as child:
        before = await idle_child(child)
        await child.send(ipc.AwaitJob(job_id="AJ_1", poll_s=60))
        await wait_cpu(child, above=before + 0.05)
        await child.send(ipc.Ping(sent_at_ns=2))
        assert (await child.expect(ipc.Pong)).sent_at_ns == 2
        await wait_asleep(child)  # long before 60 s
        await child.send(ipc.Shutdown(reason="test"))
        assert await child.wait_exit() == 0


async def test_a_job_that_lands_during_the_poll_runs(tmp_path: Path) -> None:
    write_agent(tmp_path, AGENT)
    async with spawn(tmp_path) as child:
        await idle_child(child)
        await child.send(ipc.AwaitJob(job_id="AJ_1", poll_s=60))
        await child.send(ipc.StartJob(job=job_wire(), url="ws://lk", token="tok"))
        await child.expect(ipc.JobStarted)
        assert (await child.expect(ipc.JobEnded)).error == ""
        assert await child.wait_exit() == 0
