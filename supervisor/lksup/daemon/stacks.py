"""What the supervisor is doing right now, as text: every task's await chain, every thread's stack.

``lksup run`` logs this on SIGUSR1 (``kill -USR1 $(pidof lksup)``), the answer to "why is it
stuck?". A thread dump alone shows the event loop waiting in ``select``; what matters is where
each task is suspended, so each task is listed with its whole await chain, outermost call
first, like a traceback:

    Task 'lksup.daemon.supervisor.Supervisor._guard' (pending):
      File ".../supervisor.py", line 171, in _guard
        await runtime.run()
      File ".../agent.py", line 246, in run
        await self.session.wait_finished()
      ...

The chain is followed through coroutines (``cr_await``), generator-based awaitables
(``gi_yieldfrom``) and async generators (``ag_await``); it ends at the future the task waits
on. Must be called from the event loop's thread (the signal handler task is).
"""

from __future__ import annotations

import asyncio
import linecache
import sys
import threading
import traceback
from types import FrameType
from typing import Any


def _frame_of(awaitable: Any) -> FrameType | None:
    for attribute in ("cr_frame", "gi_frame", "ag_frame"):
        frame = getattr(awaitable, attribute, None)
        if frame is not None:
            return frame  # type: ignore[no-any-return]
    return None


def _awaited_by(awaitable: Any) -> Any:
    for attribute in ("cr_await", "gi_yieldfrom", "ag_await"):
        inner = getattr(awaitable, attribute, None)
        if inner is not None:
            return inner
    return None


def await_chain(coro: Any) -> list[FrameType]:
    """The frames of a suspended coroutine and of everything it awaits, outermost first."""
    frames: list[FrameType] = []
    seen: set[int] = set()
    current = coro
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frame = _frame_of(current)
        if frame is None:
            break
        frames.append(frame)
        current = _awaited_by(current)
    return frames


def _format_frames(frames: list[FrameType]) -> list[str]:
    lines = []
    for frame in frames:
        code = frame.f_code
        lines.append(f'  File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}')
        source = linecache.getline(code.co_filename, frame.f_lineno).strip()
        if source:
            lines.append(f"    {source}")
    return lines


def task_stacks() -> str:
    """Every task of the running event loop with its await chain (sorted by task name)."""
    tasks = sorted(asyncio.all_tasks(), key=lambda task: task.get_name())
    lines = [f"{len(tasks)} task(s):"]
    current = asyncio.current_task()
    for task in tasks:
        note = "current" if task is current else ("done" if task.done() else "pending")
        lines.append(f"Task {task.get_name()!r} ({note}):")
        lines.extend(_format_frames(await_chain(task.get_coro())) or ["  (no frame)"])
    return "\n".join(lines)


def thread_stacks() -> str:
    """Every thread's stack, innermost call last."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    lines = []
    for ident, frame in sorted(sys._current_frames().items()):
        lines.append(f"Thread {names.get(ident, '?')!r} ({ident}):")
        lines.extend(line.rstrip("\n") for line in traceback.format_stack(frame))
    return "\n".join(lines)


def dump() -> str:
    """Tasks, then threads: what the supervisor logs on SIGUSR1."""
    return f"{task_stacks()}\n{thread_stacks()}"
