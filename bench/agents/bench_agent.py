"""The benchmark entrypoint: records when it was called, then ends the job.

Each call appends "JOB_ID MONOTONIC_SECONDS" to the file named by $BENCH_LOG. CLOCK_MONOTONIC
is system-wide on Linux, so the supervisor side can subtract its own monotonic timestamps.
This agent imports nothing beyond the standard library (the "trivial" agent of
bench/job_start.py); bench/agents/sdk_agent.py is the livekit-agents one.
"""

from __future__ import annotations

import os
import time
from typing import Any


def record_entry(job_id: str, called: float) -> None:
    """Append the entrypoint's CLOCK_MONOTONIC reading ``called`` for ``job_id`` to $BENCH_LOG."""
    with open(os.environ["BENCH_LOG"], "a", encoding="utf-8") as log:
        log.write(f"{job_id} {called:.9f}\n")


def prewarm(proc: Any) -> None:
    proc.userdata["ready"] = True


async def entrypoint(ctx: Any) -> None:
    called = time.monotonic()
    record_entry(ctx.job.id, called)
    ctx.shutdown("benchmark job done")
