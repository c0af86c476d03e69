"""The "heavy" benchmark agent: an unchanged livekit-agents agent with a silero VAD.

Its module imports livekit.agents and livekit.plugins.silero, its prewarm loads the VAD
(``silero.VAD.load()``, as the SDK's examples do), and its entrypoint, written against
``livekit.agents.JobContext``, records its CLOCK_MONOTONIC entry time (bench_agent.record_entry)
and ends the job. The same module runs under lksup (``runtime: livekit-agents``) and under the
SDK's own worker (bench/agents/sdk_worker.py).
"""

from __future__ import annotations

import time

from bench.agents.bench_agent import record_entry
from livekit.agents import JobContext, JobProcess
from livekit.plugins import silero


def prewarm(proc: JobProcess) -> None:
    proc.userdata["vad"] = silero.VAD.load()


async def entrypoint(ctx: JobContext) -> None:
    called = time.monotonic()
    record_entry(ctx.job.id, called)
    ctx.shutdown("benchmark job done")
