"""A real job process running one job: JobStarted, JobEnded, shutdown, grace, errors."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from lksup.jobs import ipc

from .harness import initialize, job_wire, spawn, write_agent

pytestmark = [pytest.mark.anyio, pytest.mark.process]

START = ipc.StartJob(job=job_wire(), url="ws://lk", token="tok")

AGENT = """
    import logging
    import sys
    import anyio

    log = logging.getLogger("agent")

    async def cleanup(reason):
        log.info("cleanup: %s", reason)

    async def entrypoint(ctx):
        ctx.add_shutdown_callback(cleanup)
        mode = ctx.job.metadata
        if mode == "raise":
            raise RuntimeError("boom")
        if mode == "shutdown":
            ctx.shutdown("conversation over")
            return
        if mode == "ignore-shutdown":
            try:
                await anyio.sleep_forever()
            finally:
                log.info("entrypoint cancelled")
        if mode == "connect":
            sys.modules["livekit.rtc"] = None  # as if the livekit package were not installed
            await ctx.connect()
        reason = await ctx.wait_for_shutdown()
        log.info("entrypoint saw: %s", reason)
"""


def start(mode: str) -> ipc.StartJob:
    return ipc.StartJob(job=job_wire(metadata=mode), url="ws://lk", token="tok")


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    write_agent(tmp_path, AGENT)
    return tmp_path


async def test_entrypoint_error_fails_the_job_and_callbacks_still_run(agent_dir: Path) -> None:
    async with spawn(agent_dir) as child:
        await child.ready()
        await child.send(start("raise"))
        await child.expect(ipc.JobStarted)
        assert await child.expect(ipc.JobEnded) == ipc.JobEnded(
            job_id="AJ_1", error="RuntimeError: boom", reason="entrypoint failed"
        )
        failure = next(r for r in child.logs if r.message == "Entrypoint of job AJ_1 failed.")
        assert failure.level == 40
        assert failure.logger == "lksup.jobs"
        assert 'raise RuntimeError("boom")' in failure.exc_text
        assert "cleanup: entrypoint failed" in child.log_messages()
        assert await child.wait_exit() == ipc.ExitCode.OK


async def test_ctx_shutdown_ends_the_job_with_its_reason(agent_dir: Path) -> None:
    async with spawn(agent_dir) as child:
        await child.ready()
        await child.send(start("shutdown"))
        await child.expect(ipc.JobStarted)
        assert await child.expect(ipc.JobEnded) == ipc.JobEnded(
            job_id="AJ_1", error="", reason="conversation over"
        )
        assert "cleanup: conversation over" in child.log_messages()
        assert await child.wait_exit() == ipc.ExitCode.OK


async def test_shutdown_wakes_the_entrypoint_then_runs_callbacks(agent_dir: Path) -> None:
    async with spawn(agent_dir) as child:
        await child.ready()
        await child.send(start("wait"))
        await child.expect(ipc.JobStarted)
        await child.send(ipc.Shutdown(reason="terminated by server"))
        assert await child.expect(ipc.JobEnded) == ipc.JobEnded(
            job_id="AJ_1", error="", reason="terminated by server"
        )
        messages = child.log_messages()
        assert messages.index("entrypoint saw: terminated by server") < messages.index(
            "cleanup: terminated by server"
        )
        assert await child.wait_exit() == ipc.ExitCode.OK


async def test_an_entrypoint_that_ignores_shutdown_is_cancelled_after_the_grace(
    agent_dir: Path,
) -> None:
    async with spawn(agent_dir) as child:
        await child.ready(initialize(shutdown_grace=0.2))
        await child.send(start("ignore-shutdown"))
        await child.expect(ipc.JobStarted)
        await child.send(ipc.Shutdown(reason="drain deadline"))
        assert await child.expect(ipc.JobEnded) == ipc.JobEnded(
            job_id="AJ_1", error="", reason="drain deadline"
        )
        messages = child.log_messages()
        warning = "Entrypoint of job AJ_1 did not return within 0.2 s of the shutdown; cancelling."
        assert (
            messages.index(warning)
            < messages.index("entrypoint cancelled")
            < messages.index("cleanup: drain deadline")
        )
        assert await child.wait_exit() == ipc.ExitCode.OK


async def test_sigterm_during_a_job_is_a_graceful_shutdown(agent_dir: Path) -> None:
    async with spawn(agent_dir) as child:
        await child.ready()
        await child.send(start("wait"))
        await child.expect(ipc.JobStarted)
        child.process.send_signal(signal.SIGTERM)
        assert await child.expect(ipc.JobEnded) == ipc.JobEnded(
            job_id="AJ_1", error="", reason="SIGTERM"
        )
        assert "cleanup: SIGTERM" in child.log_messages()
        assert await child.wait_exit() == ipc.ExitCode.OK


async def test_connect_without_the_rtc_package_names_what_to_install(agent_dir: Path) -> None:
    async with spawn(agent_dir) as child:
        await child.ready()
        await child.send(start("connect"))
        await child.expect(ipc.JobStarted)
        ended = await child.expect(ipc.JobEnded)
        assert ended.error.startswith(
            "RtcUnavailableError: joining the room needs the LiveKit realtime SDK (the `livekit` Python package"
        )
        assert ended.error.endswith("install it with: pip install 'lksup[rtc]'")
        assert await child.wait_exit() == ipc.ExitCode.OK


async def test_one_job_per_process_and_no_offers_while_busy(agent_dir: Path) -> None:
    async with spawn(agent_dir) as child:
        await child.ready()
        await child.send(start("wait"))
        await child.expect(ipc.JobStarted)
        await child.send(start("raise"))
        await child.wait_log(
            lambda r: r.message == "Ignoring StartJob: this process already runs job AJ_1."
        )
        await child.send(ipc.OfferRequest(job=job_wire(job_id="AJ_2")))
        assert await child.expect(ipc.OfferAnswer) == ipc.OfferAnswer(
            accept=False, error="this process is already running a job", job_id="AJ_2"
        )
        await child.send(ipc.Shutdown(reason="done"))
        assert await child.expect(ipc.JobEnded) == ipc.JobEnded(
            job_id="AJ_1", error="", reason="done"
        )
        assert await child.wait_exit() == ipc.ExitCode.OK


async def test_an_undecodable_job_ends_at_once(agent_dir: Path) -> None:
    async with spawn(agent_dir) as child:
        await child.ready()
        await child.send(ipc.StartJob(job=b"\xff\xff", url="", token=""))
        ended = await child.expect(ipc.JobEnded)
        assert (ended.job_id, ended.error.startswith("undecodable job")) == ("", True)
        assert await child.wait_exit() == ipc.ExitCode.OK
