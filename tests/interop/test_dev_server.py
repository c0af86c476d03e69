"""The same protocol scenarios against lksup's dev server, and the check that it says what the
real livekit-server says: message traces compared with ids and timestamps masked."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from lksup.devserver.server import DevServer
from tests.interop import livekit_server as real
from tests.interop.harness import ServerUnderTest, Trace
from tests.interop.scenarios import SCENARIOS, job_runs_to_success

pytestmark = [pytest.mark.anyio, pytest.mark.interop]

KEYS = {real.API_KEY: real.API_SECRET}


@pytest.fixture
async def dev_server() -> AsyncIterator[ServerUnderTest]:
    async with anyio.create_task_group() as tg:
        holder: dict[str, Any] = {}

        async def start(port: int = 0) -> None:
            server = DevServer(KEYS, port=port, trace=True)
            scope = anyio.CancelScope()

            async def serve(*, task_status: anyio.abc.TaskStatus[tuple[str, int]]) -> None:
                with scope:
                    await server.run(task_status=task_status)

            await tg.start(serve)
            holder.update(server=server, scope=scope)

        async def stop() -> None:
            holder["scope"].cancel()

        await start()
        port = int(holder["server"].url.rsplit(":", 1)[1])
        yield ServerUnderTest(
            "dev",
            holder["server"].url,
            real.API_KEY,
            real.API_SECRET,
            restart=lambda: start(port),
            stop=stop,
        )
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
async def test_scenario(
    scenario: Callable[[ServerUnderTest, Any], Awaitable[None]],
    dev_server: ServerUnderTest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await scenario(dev_server, monkeypatch)


async def test_dev_server_trace_matches_the_real_server(
    dev_server: ServerUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the traces differ, the dev server is wrong."""
    dev_trace, real_trace = Trace(), Trace()
    await job_runs_to_success(dev_server, monkeypatch, trace=dev_trace)
    async with real.real_livekit_server(tmp_path) as server:
        target = ServerUnderTest("real", server.url, real.API_KEY, real.API_SECRET)
        await job_runs_to_success(target, monkeypatch, trace=real_trace)
    dev, ref = dev_trace.masked(), real_trace.masked()
    assert [(d, k) for d, k, _ in dev] == [(d, k) for d, k, _ in ref]
    for (direction, kind, mine), (_, _, theirs) in zip(dev, ref, strict=True):
        assert mine == theirs, f"{direction} {kind} differs:\n dev:  {mine}\n real: {theirs}"
