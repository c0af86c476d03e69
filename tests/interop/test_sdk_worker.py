"""The real livekit-agents worker (1.8.x, run as its own process) against lksup's dev server:
it registers, takes a job dispatched through CreateDispatch, runs its entrypoint and reports
success; DeleteDispatch terminates a running job."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from bench.processes import stop_worker
from livekit.protocol import agent as pb

from lksup.devserver.server import DevServer
from lksup.devserver.workers import WorkerInfo
from lksup.transport.dispatch import ApiSettings, create_dispatch, delete_dispatch
from tests.conftest import eventually
from tests.interop.harness import unique_room

pytestmark = [pytest.mark.anyio, pytest.mark.interop]

KEY, SECRET = "devkey", "sdk-interop-secret-0123456789abcdef0123"
AGENT = Path(__file__).with_name("sdk_agent.py")
START_TIMEOUT = 90  # the SDK imports a lot and prewarms a process before registering


@asynccontextmanager
async def dev_server() -> AsyncIterator[DevServer]:
    server = DevServer({KEY: SECRET}, port=0, trace=True)
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        yield server
        tg.cancel_scope.cancel()


@asynccontextmanager
async def sdk_worker(
    server: DevServer, tmp_path: Path, *, name: str, hold: float
) -> AsyncIterator[Path]:
    log = tmp_path / f"{name}.log"
    env = {
        **os.environ,
        "LIVEKIT_URL": server.url,
        "LIVEKIT_API_KEY": KEY,
        "LIVEKIT_API_SECRET": SECRET,
        "AGENT_NAME": name,
        "HOLD_S": str(hold),
    }
    with log.open("wb") as sink:
        process = await anyio.open_process(
            [sys.executable, str(AGENT), "start"],
            env=env,
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )
    try:
        await _until(process, log, server, lambda ws: any(w.agent_name == name for w in ws))
        yield log
    finally:
        with anyio.CancelScope(shield=True):
            await stop_worker(process)


async def _until(
    process: anyio.abc.Process,
    log: Path,
    server: DevServer,
    predicate: Callable[[list[WorkerInfo]], bool],
    timeout: float = START_TIMEOUT,
) -> list[WorkerInfo]:
    result: list[WorkerInfo] = []
    async with anyio.create_task_group() as tg:

        async def exited() -> None:
            code = await process.wait()
            pytest.fail(f"the SDK worker exited ({code}):\n{log.read_text()[-4000:]}")

        tg.start_soon(exited)
        with anyio.fail_after(timeout):
            result = await server.wait_workers(predicate)
        tg.cancel_scope.cancel()
    return result


def _statuses(server: DevServer, job_id: str) -> list[str]:
    found = []
    for entries in server.traces().values():
        for entry in entries:
            message: Any = entry.message
            if entry.kind == "update_job" and message.update_job.job_id == job_id:
                found.append(message.update_job.status)
            if entry.kind == "termination" and message.termination.job_id == job_id:
                found.append("termination")
    return found


async def _wait_trace(
    server: DevServer, job_id: str, want: Callable[[list[Any]], bool]
) -> list[Any]:
    def traced() -> list[Any] | None:  # the server's trace is recorded, not announced
        statuses = _statuses(server, job_id)
        return statuses if want(statuses) else None

    return await eventually(traced, timeout=30)


async def test_sdk_worker_runs_a_dispatched_job(tmp_path: Path) -> None:
    async with (
        dev_server() as server,
        sdk_worker(server, tmp_path, name="sdk-agent", hold=0.5) as log,
    ):
        room = unique_room("sdk")
        api = ApiSettings(server.url.replace("ws://", "http://"), KEY, SECRET)
        dispatch = await create_dispatch(api, agent_name="sdk-agent", room=room)
        workers = await server.wait_workers(lambda ws: any(w.running_jobs for w in ws))
        (job_id,) = next(w.running_jobs for w in workers if w.running_jobs)
        statuses = await _wait_trace(server, job_id, lambda s: pb.JS_SUCCESS in s)
        assert statuses[0] == pb.JS_RUNNING
        assert statuses[-1] == pb.JS_SUCCESS
        text = log.read_text()
        assert f"sdk entrypoint ran: job={job_id} room={room} warmed=True" in text
        assert dispatch.agent_name == "sdk-agent"


async def test_delete_dispatch_terminates_a_running_sdk_job(tmp_path: Path) -> None:
    async with (
        dev_server() as server,
        sdk_worker(server, tmp_path, name="sdk-long", hold=120) as log,
    ):
        room = unique_room("sdk")
        api = ApiSettings(server.url.replace("ws://", "http://"), KEY, SECRET)
        dispatch = await create_dispatch(api, agent_name="sdk-long", room=room)
        workers = await server.wait_workers(lambda ws: any(w.running_jobs for w in ws))
        (job_id,) = next(w.running_jobs for w in workers if w.running_jobs)
        await _wait_trace(server, job_id, lambda s: bool(s))  # JS_RUNNING reported
        await delete_dispatch(api, dispatch_id=dispatch.id, room=room)
        # the worker got the termination and its job process reports the end
        statuses = await _wait_trace(
            server, job_id, lambda s: "termination" in s and s.index("termination") < len(s) - 1
        )
        assert statuses[statuses.index("termination") + 1] in (pb.JS_SUCCESS, pb.JS_FAILED)
        # the SDK worker's log file is its only channel
        await eventually(lambda: f"sdk job shutdown: job={job_id}" in log.read_text(), timeout=30)
