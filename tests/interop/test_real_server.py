"""The protocol scenarios against the real livekit-server (built from its Go module)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.interop import livekit_server as real
from tests.interop.harness import ServerUnderTest
from tests.interop.scenarios import SCENARIOS

pytestmark = [pytest.mark.anyio, pytest.mark.interop]


@pytest.fixture
async def real_server(tmp_path: Path) -> AsyncIterator[ServerUnderTest]:
    port = real.free_port()
    holder: dict[str, Any] = {}

    async def start() -> None:
        context = real.real_livekit_server(tmp_path, port=port)
        holder["server"] = await context.__aenter__()
        holder["context"] = context

    async def stop() -> None:  # killed, not stopped: the scenario is a crashed server
        context = holder.pop("context", None)
        if context is not None:
            await real.kill(holder["server"])
            await context.__aexit__(None, None, None)

    await start()
    try:
        yield ServerUnderTest(
            "real",
            f"ws://127.0.0.1:{port}",
            real.API_KEY,
            real.API_SECRET,
            restart=start,
            stop=stop,
        )
    finally:
        await stop()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
async def test_scenario(
    scenario: Callable[[ServerUnderTest, Any], Awaitable[None]],
    real_server: ServerUnderTest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await scenario(real_server, monkeypatch)
