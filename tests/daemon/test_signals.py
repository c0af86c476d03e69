"""The receiver: real signals sent to this process become intents, in order, per phase."""

from __future__ import annotations

import os
import signal

import anyio
import pytest

from lksup.daemon import signals
from lksup.daemon.intents import Intent, Phase

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the daemon's backend


async def test_each_signal_becomes_its_intent_in_the_phase_of_the_moment() -> None:
    send, receive = anyio.create_memory_object_stream[tuple[Intent, str]](10)
    phase = Phase.RUNNING

    async def handle(intent: Intent, name: str) -> None:
        nonlocal phase
        if intent is Intent.DRAIN:
            phase = Phase.DRAINING
        await send.send((intent, name))

    with send, receive, anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(signals.receive, handle, lambda: phase)
            got = []
            for sig in (signal.SIGUSR1, signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                os.kill(os.getpid(), sig)  # handled: started means the handlers are in place
                got.append(await receive.receive())
            tg.cancel_scope.cancel()
    assert got == [
        (Intent.DUMP_STACKS, "SIGUSR1"),
        (Intent.REAPPLY, "SIGHUP"),
        (Intent.DRAIN, "SIGTERM"),
        (Intent.STOP_NOW, "SIGINT"),  # asked in the phase the drain began
    ]
