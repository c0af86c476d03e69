"""The "trivial" fleet agent: records its entry time and ends; standard library only.

Each entrypoint call appends "ROOM JOB_ID MONOTONIC_SECONDS" to the file named by $BENCH_LOG
(one short ``write`` on an O_APPEND file: lines from concurrent processes never interleave).
CLOCK_MONOTONIC is system-wide on Linux, so bench/fleet.py subtracts its own dispatch times.
It runs under lksup with ``runtime: lksup`` and under livekit-agents unchanged (both contexts
have ``job.id``, ``job.room.name`` and ``shutdown(reason)``).
"""

from __future__ import annotations

import os
import time
from typing import Any


def record_entry(ctx: Any, called: float) -> None:
    """Append the entrypoint's CLOCK_MONOTONIC reading ``called`` for ``ctx.job`` to $BENCH_LOG."""
    line = f"{ctx.job.room.name} {ctx.job.id} {called:.9f}\n".encode()
    fd = os.open(os.environ["BENCH_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def prewarm(proc: Any) -> None:
    proc.userdata["ready"] = True


async def entrypoint(ctx: Any) -> None:
    called = time.monotonic()
    record_entry(ctx, called)
    ctx.shutdown("benchmark job done")
