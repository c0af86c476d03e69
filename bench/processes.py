"""What benchmarks and interop tests share: waiting on another process, and stopping a worker
process with everything it started."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress

import anyio
import anyio.abc


async def signal_and_wait(process: anyio.abc.Process, *, grace: float = 10.0) -> None:
    """SIGTERM (a worker drains), then SIGINT (a second signal forces), each with a grace."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        if process.returncode is None:
            process.send_signal(sig)
            with anyio.move_on_after(grace):
                await process.wait()


async def kill_group(process: anyio.abc.Process) -> None:
    """SIGKILL the process's whole group (it was started in a session of its own), reap it."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    await process.aclose()


async def stop_worker(process: anyio.abc.Process) -> None:
    """``signal_and_wait`` then ``kill_group``."""
    await signal_and_wait(process)
    await kill_group(process)


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.05
) -> float:
    """Poll ``predicate()`` (another process's files or answers) until it holds; the
    ``time.monotonic()`` at which it first held.

    Raises:
        TimeoutError: it did not hold within ``timeout`` seconds (the message names ``what``).
    """
    with anyio.move_on_after(timeout):
        while not await predicate():
            await anyio.sleep(interval)
        return time.monotonic()
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
