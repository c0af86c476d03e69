"""The fleet's shared inference process: livekit-agents inference runners, served once.

Real processes: SDK-runtime job processes whose module registers an inference runner (as the
turn detector plugin does), an ``InferenceService`` shared by two agents' pools, and the
inference process it starts. Each job writes what ``ctx.inference_executor`` answered.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path

import anyio
import pytest

from lksup.monitors.memory_policy import MemoryPolicy
from lksup.pool.inference import InferenceService
from lksup.pool.pool import AgentPool
from lksup.pool.process import ProcessSpec
from lksup.protocol.events import JobAssigned, OfferReceived
from tests.pool.helpers import Reporter, make_job, offer_and_run, running_pool, spec, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.process]

RUNNER = """
import os
from livekit.agents.inference_runner import _InferenceRunner


class EchoRunner(_InferenceRunner):
    INFERENCE_METHOD = "lksup_test_echo"

    def initialize(self):
        if os.environ.get("FAIL_RUNNER"):
            raise RuntimeError("model file missing")
        self.pid = os.getpid()

    def run(self, data):
        if data == b"raise":
            raise ValueError("bad input")
        return data + b" from " + str(self.pid).encode()


_InferenceRunner.register_runner(EchoRunner)
"""

AGENT = """
import json, os
import echo_runner  # registers the runner at import, as plugins do
from livekit.agents import JobContext


async def entrypoint(ctx: JobContext) -> None:
    try:
        answer = await ctx.inference_executor.do_inference("lksup_test_echo", ctx.job.metadata.encode())
        result = {"answer": answer.decode(), "job_pid": os.getpid()}
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}", "job_pid": os.getpid()}
    with open(os.path.join(os.environ["OUT_DIR"], ctx.job.id + ".json"), "w") as f:
        json.dump(result, f)
    ctx.shutdown("done")
"""


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    (tmp_path / "echo_runner.py").write_text(textwrap.dedent(RUNNER))
    (tmp_path / "sdk_inference_agent.py").write_text(textwrap.dedent(AGENT))
    (tmp_path / "out").mkdir()
    return tmp_path


def sdk_spec(agent_dir: Path, name: str, **env: str) -> ProcessSpec:
    return spec(
        agent_dir,
        agent_name=name,
        entrypoint="sdk_inference_agent:entrypoint",
        prewarm="",
        runtime="livekit-agents",
        env={
            "OUT_DIR": str(agent_dir / "out"),
            "LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE": "0",
            **env,
        },
    )


async def run_job(pool: AgentPool, agent_dir: Path, job_id: str, payload: str) -> dict[str, object]:
    reporter = Reporter()
    await offer_and_run(pool, reporter, make_job(job_id, metadata=payload))
    assert reporter.ended == {job_id: None}
    result: dict[str, object] = json.loads((agent_dir / "out" / f"{job_id}.json").read_text())
    return result


async def test_two_agents_share_one_inference_process(agent_dir: Path) -> None:
    service = InferenceService()
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        async with (
            running_pool(sdk_spec(agent_dir, "alpha"), inference=service) as alpha,
            running_pool(sdk_spec(agent_dir, "beta"), inference=service) as beta,
        ):
            await wait_for(alpha, lambda: len(alpha.idle) == 1)
            await wait_for(beta, lambda: len(beta.idle) == 1)
            assert alpha.idle[0].inference_runners == ("echo_runner:EchoRunner",)
            first = await run_job(alpha, agent_dir, "AJ_a", "hello")
            second = await run_job(beta, agent_dir, "AJ_b", "again")
            assert len(service.groups) == 1
            (group,) = service.groups.values()
            assert group.process is not None
            inference_pid = group.process.pid
            assert first["answer"] == f"hello from {inference_pid}"
            assert second["answer"] == f"again from {inference_pid}"
            assert inference_pid not in (first["job_pid"], second["job_pid"])
            # a runner that raises fails that request only
            failed = await run_job(alpha, agent_dir, "AJ_c", "raise")
            assert (
                failed["error"]
                == "RuntimeError: inference of lksup_test_echo failed: ValueError: bad input"
            )
            process = group.process
            assert process.pid == inference_pid
        await service.aclose()
        tg.cancel_scope.cancel()
    assert not process.alive  # the service's stop sequence ended it


async def test_a_killed_inference_process_is_restarted(agent_dir: Path) -> None:
    service = InferenceService()
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        async with running_pool(
            sdk_spec(agent_dir, "alpha"), inference=service, num_idle=2
        ) as pool:
            await wait_for(pool, lambda: len(pool.idle) == 2)
            (group,) = service.groups.values()
            with anyio.fail_after(20):
                await group.wait_until(lambda: group.ready)
            assert group.process is not None
            first_pid = group.process.pid
            assert first_pid is not None
            os.kill(first_pid, signal.SIGKILL)
            with anyio.fail_after(20):
                await group.wait_until(
                    lambda: (
                        group.ready and group.process is not None and group.process.pid != first_pid
                    )
                )
            assert group.restarts == 1
            result = await run_job(pool, agent_dir, "AJ_r", "back")
            assert result["answer"] == f"back from {group.process.pid}"
        await service.aclose()
        tg.cancel_scope.cancel()


async def test_a_runner_that_cannot_load_fails_the_requests_with_its_reason(
    agent_dir: Path,
) -> None:
    service = InferenceService()
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        process_spec = sdk_spec(agent_dir, "alpha", FAIL_RUNNER="1")
        async with running_pool(process_spec, inference=service) as pool:
            await wait_for(pool, lambda: len(pool.idle) == 1)
            (group,) = service.groups.values()
            with anyio.fail_after(20):
                await group.wait_until(lambda: group.last_error is not None)
            result = await run_job(pool, agent_dir, "AJ_f", "x")
            error = str(result["error"])
            assert error.startswith(
                "RuntimeError: inference of lksup_test_echo failed: inference process"
            )
            assert (
                "inference runner echo_runner:EchoRunner failed to load: RuntimeError: model file missing"
                in error
            )
        await service.aclose()
        tg.cancel_scope.cancel()


def test_nothing_starts_before_the_service_runs() -> None:
    service = InferenceService()
    assert (
        service.register(sdk_spec(Path("/tmp"), "x"), ("m:R",), MemoryPolicy(0, 0)) is None
    )  # not running


SLOW_CALLBACK_AGENT = """
import asyncio, os
from livekit.agents import JobContext


async def entrypoint(ctx: JobContext) -> None:
    async def slow_goodbye(reason: str) -> None:
        await asyncio.sleep(1.0)
        with open(os.path.join(os.environ["OUT_DIR"], "goodbye.txt"), "w") as f:
            f.write(reason)

    ctx.add_shutdown_callback(slow_goodbye)  # the job goes on after this returns
"""


async def test_closing_the_pool_waits_for_a_job_still_running_its_callbacks(
    agent_dir: Path, launch: str
) -> None:
    """Regression: an SDK job reports its outcome before its shutdown callbacks run; the pool
    forgot the process then, and closing it (a drain's end) SIGKILLed the callbacks away."""
    (agent_dir / "sdk_inference_agent.py").write_text(textwrap.dedent(SLOW_CALLBACK_AGENT))
    reporter = Reporter()
    async with running_pool(sdk_spec(agent_dir, "alpha"), launch=launch) as pool:
        await wait_for(pool, lambda: len(pool.idle) == 1)
        job = make_job("AJ_slow", metadata="x")
        await pool.decide(OfferReceived(job))
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run_job, JobAssigned(job, token="jwt"), reporter)
            await wait_for(pool, lambda: reporter.started == ["AJ_slow"])
            pool.terminate("AJ_slow")
            await wait_for(pool, lambda: "AJ_slow" in reporter.ended)
            with anyio.fail_after(15):
                await pool.aclose()
            assert (agent_dir / "out" / "goodbye.txt").read_text() == "terminated by the server"
