"""Connection and pool together against the dev server: a dispatch reaches the right agent, its
entrypoint runs in a warm process, and SUCCESS is reported."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import anyio
import pytest
from livekit.protocol import agent as pb

from lksup.devserver.server import DevServer
from lksup.pool.pool import AgentPool
from lksup.protocol.machine import Options
from lksup.transport.session import AgentSession, Credentials
from tests.conftest import eventually
from tests.pool.helpers import spec

pytestmark = [pytest.mark.anyio, pytest.mark.process]

KEY, SECRET = "devkey", "e2e-pool-secret-0123456789abcdef012345"


def has_idle(pool: AgentPool) -> bool:
    return len(pool.idle) == 1


def statuses(server: DevServer, job_id: str) -> list[int]:
    found = []
    for entries in server.traces().values():
        for entry in entries:
            message: Any = entry.message
            if entry.kind == "update_job" and message.update_job.job_id == job_id:
                found.append(message.update_job.status)
    return found


async def test_dispatch_runs_the_right_agents_entrypoint_in_a_warm_process(
    agent_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lksup.job")
    server = DevServer({KEY: SECRET}, port=0, trace=True, claim_delay=0.0)
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        pools: dict[str, AgentPool] = {}
        sessions: dict[str, AgentSession] = {}
        for name in ("support", "sales"):
            pool = AgentPool(spec(agent_dir, agent_name=name), num_idle=1)
            await tg.start(pool.run)
            session = AgentSession(
                Options(agent_name=name, version="e2e"), Credentials(server.url, KEY, SECRET), pool
            )
            await tg.start(session.run)
            pools[name], sessions[name] = pool, session
        for name, pool in pools.items():
            await sessions[name].wait_registered()
            with anyio.fail_after(30):
                await pool.wait_until(functools.partial(has_idle, pool))
        warm_pid = pools["sales"].idle[0].pid
        await server.create_dispatch("sales-room", "sales")
        with anyio.fail_after(30):
            workers = await server.wait_workers(lambda ws: any(w.running_jobs for w in ws))
            (job_id,) = next(w.running_jobs for w in workers if w.running_jobs)
            await pools["sales"].wait_until(lambda: pools["sales"].stats.jobs_succeeded == 1)
        assert pools["support"].stats.jobs_started == 0
        # the trace is the server's record, announced to nobody
        await eventually(lambda: pb.JS_SUCCESS in statuses(server, job_id), timeout=10)
        assert statuses(server, job_id) == [pb.JS_RUNNING, pb.JS_SUCCESS]
        (record,) = [r for r in caplog.records if f"entrypoint {job_id}" in r.getMessage()]
        assert record.agent == "sales"  # type: ignore[attr-defined]
        assert record.pid == warm_pid  # type: ignore[attr-defined]
        for name in pools:
            sessions[name].stop()
            await pools[name].aclose()
        tg.cancel_scope.cancel()
