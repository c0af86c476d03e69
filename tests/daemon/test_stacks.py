"""The SIGUSR1 dump: each task's whole await chain, not just the event loop's select()."""

from __future__ import annotations

import anyio
import pytest

from lksup.daemon import stacks

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def innermost_wait(event: anyio.Event) -> None:
    await event.wait()


async def middle(event: anyio.Event) -> None:
    await innermost_wait(event)


async def holder(event: anyio.Event, task_status: anyio.abc.TaskStatus[None]) -> None:
    task_status.started()
    await middle(event)


async def test_a_suspended_task_shows_its_await_chain_outermost_first() -> None:
    event = anyio.Event()
    async with anyio.create_task_group() as tg:
        await tg.start(holder, event, name="the-holder")
        text = stacks.task_stacks()
        event.set()
    block = text.split("Task 'the-holder' (pending):\n", 1)[1].split("\nTask ", 1)[0]
    names = [line.rsplit(" in ", 1)[1] for line in block.splitlines() if line.startswith("  File")]
    chain = [name for name in names if name in ("holder", "middle", "innermost_wait")]
    assert chain == ["holder", "middle", "innermost_wait"]
    assert names[-1] in ("innermost_wait", "wait")  # down to where it is suspended
    assert "await innermost_wait(event)" in block  # the source line, like a traceback
    assert "(current):" in text  # this test's own task


async def test_the_dump_has_tasks_and_threads() -> None:
    text = stacks.dump()
    assert text.startswith(f"{text.split(' ', 1)[0]} task(s):")
    assert "Thread 'MainThread'" in text
