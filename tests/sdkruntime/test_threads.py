"""``job_executor: thread`` for livekit-agents agents: several SDK jobs in one job host process,
each run by the SDK's own runner on a thread and event loop of its own.

The test plays the supervisor over the IPC socket (as ``test_job_process``), and runs a pool for
a host crash. The agent is that of ``test_job_process``: written against livekit-agents only.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import TypeVar

import anyio
import pytest

from lksup.jobs import ipc
from lksup.protocol.events import JobAssigned, OfferReceived
from tests.jobs import harness
from tests.jobs.harness import Child, job_wire, spawn, write_agent
from tests.pool.helpers import Reporter, make_job, running_pool, spec, wait_for
from tests.sdkruntime.conftest import sdk_venv_python
from tests.sdkruntime.test_job_process import AGENT, SDK_ENV, initialize, observed, sdk_env

M = TypeVar("M", bound=ipc.ChildMessage)

#: Logged by a job whose entrypoint returned: the job goes on until it is shut down, as an
#: agent's that started its ``AgentSession`` (the SDK waits 15 s for a running entrypoint).
RUNNING = "entrypoint returning; the job goes on"

pytestmark = [pytest.mark.anyio, pytest.mark.process]


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    write_agent(tmp_path, AGENT)
    return tmp_path


@pytest.fixture(autouse=True)
def slower_handshakes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing livekit-agents takes seconds: give the harness's handshakes more room."""
    monkeypatch.setattr(harness, "WAIT", 30.0)


@pytest.fixture(params=["newest", "oldest"])
def sdk_end(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """At both ends of the supported window: 1.8.9 here, the oldest in its own environment."""
    end: str = request.param
    if end == "oldest":
        monkeypatch.setattr(harness, "PYTHON", sdk_venv_python())
    return end


def start(job_id: str, mode: str) -> ipc.StartJob:
    metadata = json.dumps({"mode": mode})
    return ipc.StartJob(job=job_wire(job_id=job_id, metadata=metadata), url="ws://lk", token="t")


async def next_of(child: Child, cls: type[M]) -> M:
    """The next message of type ``cls`` (others are skipped)."""
    while True:
        msg = await child.next()
        if isinstance(msg, cls):
            return msg


async def ended(child: Child, count: int) -> dict[str, ipc.JobEnded]:
    """The next ``count`` JobEnded messages by job id (JobStarted and others are skipped)."""
    found: dict[str, ipc.JobEnded] = {}
    while len(found) < count:
        msg = await child.next()
        if isinstance(msg, ipc.JobEnded):
            found[msg.job_id] = msg
    return found


async def test_one_host_runs_several_sdk_jobs_each_with_its_own_context(
    agent_dir: Path, sdk_end: str
) -> None:
    """Three jobs at once: each sees its own get_job_context() and the host's prewarm; a raising
    job fails only itself; the host outlives its jobs and takes the next one."""
    async with spawn(agent_dir, env=sdk_env()) as child:
        ready = await child.ready(initialize(prewarm="agent:prewarm", max_jobs=3))
        await child.send(start("AJ_hold", "return"))
        await child.wait_log(lambda r: r.message == RUNNING)
        await child.send(start("AJ_raise", "raise"))
        await child.send(start("AJ_seen", "observe"))
        first = await ended(child, 2)
        assert first["AJ_raise"].error == "ValueError: bad input from the caller"
        assert (first["AJ_seen"].error, first["AJ_seen"].reason) == ("", "observed")
        seen = observed(child, "observed ")
        assert seen["get_job_context_is_ctx"] is True
        assert seen["job_id"] == "AJ_seen"
        assert seen["userdata"] == {"model": "loaded by prewarm", "prewarm_pid": ready.pid}
        await child.send(start("AJ_next", "shutdown"))  # room again: the same host takes it
        assert (await ended(child, 1))["AJ_next"].reason == "conversation over"
        await child.send(ipc.Shutdown(reason="caller hung up", job_id="AJ_hold"))
        assert (await ended(child, 1))["AJ_hold"].reason == "caller hung up"
        assert "shutdown callback: caller hung up" in child.log_messages()
        await child.send(ipc.Ping(sent_at_ns=7))  # still serving with no job left
        assert await child.expect(ipc.Pong) == ipc.Pong(sent_at_ns=7)
        await child.send(ipc.Shutdown(reason="pool closing"))
        assert await child.wait_exit(timeout=30) == ipc.ExitCode.OK
        started = [m for m in child.messages if isinstance(m, ipc.JobStarted)]
        assert not started or all(m.job_id for m in started)


async def test_a_full_host_declines_offers(agent_dir: Path, sdk_end: str) -> None:
    async with spawn(agent_dir, env=sdk_env()) as child:
        await child.ready(initialize(max_jobs=2))
        for job_id in ("AJ_1", "AJ_2"):
            await child.send(start(job_id, "return"))
        offer = job_wire(job_id="AJ_3", metadata=json.dumps({"offer": "accept"}))
        await child.send(ipc.OfferRequest(job=offer))  # read after both StartJob: no room
        answer = await next_of(child, ipc.OfferAnswer)
        assert (answer.accept, answer.job_id) == (False, "AJ_3")
        await child.send(ipc.Shutdown(reason="pool closing"))  # ends both jobs, then the host
        assert {job_id: e.reason for job_id, e in (await ended(child, 2)).items()} == {
            "AJ_1": "pool closing",
            "AJ_2": "pool closing",
        }
        assert await child.wait_exit(timeout=30) == ipc.ExitCode.OK


async def test_inference_answers_reach_the_job_that_asked(agent_dir: Path, sdk_end: str) -> None:
    """Two jobs ask at once; each answer goes to the job whose request carried its id (a job
    that never got its answer would never end)."""
    async with spawn(agent_dir, env=sdk_env()) as child:
        await child.ready(initialize(max_jobs=2))
        await child.send(start("AJ_1", "infer"))
        await child.send(start("AJ_2", "infer"))
        done: dict[str, ipc.JobEnded] = {}
        answered = 0
        while len(done) < 2:
            msg = await child.next()
            if isinstance(msg, ipc.InferenceRequest):
                answered += 1
                data = f"answer {answered}".encode()
                await child.send(
                    ipc.InferenceResponse(request_id=msg.request_id, data=data, has_data=True)
                )
            elif isinstance(msg, ipc.JobEnded):
                done[msg.job_id] = msg
        assert answered == 4
        assert {e.reason for e in done.values()} == {"inferred"}
        answers = sorted(m for m in child.log_messages() if m.startswith("inference answered"))
        assert answers == [f"inference answered b'answer {i}'" for i in range(1, 5)]
        await child.send(ipc.Shutdown(reason="pool closing"))
        assert await child.wait_exit(timeout=30) == ipc.ExitCode.OK


async def test_log_fields_stay_with_their_job(agent_dir: Path, sdk_end: str) -> None:
    """The SDK adds a job's log context fields only to that job's records, as in its own
    thread executor."""
    async with spawn(agent_dir, env=sdk_env()) as child:
        await child.ready(initialize(max_jobs=2))
        await child.send(start("AJ_hold", "return"))
        await child.wait_log(lambda r: r.message == RUNNING)
        await child.send(start("AJ_log", "log"))
        assert (await ended(child, 1))["AJ_log"].reason == "logged"
        record = next(r for r in child.logs if r.message == "hello from the job")
        assert dict(record.fields) == {
            "job_id": "AJ_log",
            "room": "room-1",
            "caller": "+15550100",
        }
        holding = next(r for r in child.logs if r.message == RUNNING)
        assert "job_id" not in dict(holding.fields)
        await child.send(ipc.Shutdown(reason="pool closing"))
        assert await child.wait_exit(timeout=30) == ipc.ExitCode.OK


async def test_the_end_of_the_stream_ends_every_job(agent_dir: Path, sdk_end: str) -> None:
    """Running entrypoints are cancelled (their cleanup runs) and the host exits."""
    async with spawn(agent_dir, env=sdk_env()) as child:
        await child.ready(initialize(max_jobs=2))
        await child.send(start("AJ_1", "hold"))
        await child.send(start("AJ_2", "hold"))
        holding = 0

        def both_holding(record: ipc.LogRecord) -> bool:
            nonlocal holding
            holding += record.message == "holding"
            return holding == 2

        await child.wait_log(both_holding)
        await child.stream.aclose()  # the supervisor went away
        assert await child.wait_exit(timeout=30) == ipc.ExitCode.OK
    assert (agent_dir / "ended.txt").read_text() == "entrypoint cancelled"


async def test_a_host_crash_fails_its_sdk_jobs_and_the_pool_refills(
    agent_dir: Path,
) -> None:
    process_spec = spec(
        agent_dir,
        entrypoint="agent:entrypoint",
        prewarm="agent:prewarm",
        runtime=ipc.RUNTIME_LIVEKIT_AGENTS,
        env={**SDK_ENV},
        max_jobs=2,
        initialize_timeout=60.0,
    )
    async with running_pool(process_spec, num_idle=1) as pool:
        await wait_for(pool, lambda: len(pool.idle) == 1, timeout=60)
        host = pool.idle[0]
        reporter = Reporter()
        async with anyio.create_task_group() as tg:
            for job_id in ("AJ_1", "AJ_2"):
                job = make_job(job_id, metadata=json.dumps({"mode": "return"}))
                await pool.decide(OfferReceived(job))
                tg.start_soon(pool.run_job, JobAssigned(job, token="jwt"), reporter)
                await wait_for(pool, lambda j=job_id: j in reporter.started, timeout=60)
            assert {pool.running[j].pid for j in ("AJ_1", "AJ_2")} == {host.pid}
            assert host.pid is not None
            os.kill(host.pid, signal.SIGKILL)
        assert reporter.ended == {
            "AJ_1": "job process killed by signal SIGKILL",
            "AJ_2": "job process killed by signal SIGKILL",
        }
        await wait_for(pool, lambda: len(pool.idle) == 1 and pool.idle[0] is not host, timeout=60)
