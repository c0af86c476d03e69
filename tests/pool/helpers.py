from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from livekit.protocol import agent as pb
from livekit.protocol import models as pb_models

from lksup.pool.pool import AgentPool, RequestPolicy
from lksup.pool.process import ProcessSpec
from lksup.pool.zygote import Zygotes
from lksup.protocol.codec import decode_job
from lksup.protocol.events import Job, JobAssigned, OfferReceived
from tests.pool.conftest import child_env


@dataclass
class Reporter:
    """Records what the pool reports (stands where the AgentSession is)."""

    server_url: str = "ws://127.0.0.1:1"
    worker_id: str = "AW_test"
    started: list[str] = field(default_factory=list)
    ended: dict[str, str | None] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)

    def job_started(self, job_id: str) -> None:
        self.started.append(job_id)
        self.events.append(("started", job_id))

    def job_ended(self, job_id: str, *, error: str | None = None) -> None:
        self.ended[job_id] = error
        self.events.append(("ended", job_id))

    async def flushed(self) -> None:
        self.events.append(("flushed", ""))


def make_job(job_id: str, *, room: str = "room-1", metadata: str = "") -> Job:
    job = pb.Job(
        id=job_id,
        type=pb.JT_ROOM,
        room=pb_models.Room(name=room, sid="RM_1"),
        metadata=metadata,
        agent_name="pool-agent",
        state=pb.JobState(participant_identity=f"agent-{job_id}"),
    )
    return decode_job(job)


def spec(agent_dir: Path, **overrides: Any) -> ProcessSpec:
    env = child_env(**overrides.pop("env", {}))
    values: dict[str, Any] = {
        "agent_name": "pool-agent",
        "entrypoint": "pool_test_agent:entrypoint",
        "prewarm": "pool_test_agent:prewarm",
        "cwd": agent_dir,
        "env": env,
        "initialize_timeout": 20.0,
        "shutdown_timeout": 2.0,
        "term_grace": 0.5,
        "shutdown_grace": 1.0,
    }
    values.update(overrides)
    return ProcessSpec(**values)


@asynccontextmanager
async def zygote_service(**kw: Any) -> AsyncIterator[Zygotes]:
    """A running ``Zygotes`` (no default preload unless asked: the test agents need none)."""
    zygotes = Zygotes(**{"defaults": False, **kw})
    async with anyio.create_task_group() as tg:
        await tg.start(zygotes.run)
        try:
            yield zygotes
        finally:
            with anyio.CancelScope(shield=True):
                await zygotes.aclose()
            tg.cancel_scope.cancel()


@asynccontextmanager
async def running_pool(
    process_spec: ProcessSpec,
    *,
    num_idle: int = 1,
    policy: RequestPolicy | None = None,
    launch: str = "spawn",
    **kw: Any,
) -> AsyncIterator[AgentPool]:
    """A running pool; ``launch`` zygote or isolated forks its processes from a template
    (zygote as the daemon does by default: prewarm runs in the template)."""
    async with AsyncExitStack() as stack:
        if launch != "spawn":
            zygotes = await stack.enter_async_context(zygote_service())
            kw["launcher"] = zygotes.launcher(
                process_spec, isolated=launch == "isolated", prepare=launch == "zygote"
            )
        pool = AgentPool(process_spec, num_idle=num_idle, policy=policy, **kw)
        async with anyio.create_task_group() as tg:
            await tg.start(pool.run)
            try:
                yield pool
            finally:
                await pool.aclose()


async def wait_for(pool: AgentPool, predicate: Any, timeout: float = 20.0) -> None:
    """Wait until the pool's state satisfies ``predicate`` (woken by every pool change)."""
    with anyio.fail_after(timeout):
        await pool.wait_until(predicate)


async def offer_and_run(pool: AgentPool, reporter: Reporter, job: Job) -> Any:
    answer = await pool.decide(OfferReceived(job))
    await pool.run_job(JobAssigned(job, token="jwt"), reporter)
    return answer
