"""The benchmark entrypoint: records when it was called, then ends the job.

Each call appends "JOB_ID MONOTONIC_SECONDS" to the file named by $BENCH_LOG. CLOCK_MONOTONIC
is system-wide on Linux, so the supervisor side can subtract its own monotonic timestamps.
"""

from __future__ import annotations

import os
import time
from typing import Any


def prewarm(proc: Any) -> None:
    proc.userdata["ready"] = True


async def entrypoint(ctx: Any) -> None:
    called = time.monotonic()
    with open(os.environ["BENCH_LOG"], "a", encoding="utf-8") as log:
        log.write(f"{ctx.job.id} {called:.9f}\n")
    ctx.shutdown("benchmark job done")
