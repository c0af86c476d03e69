"""The "heavy" fleet agent: an unchanged livekit-agents agent with a silero VAD.

It imports livekit.agents and livekit.plugins.silero, loads the VAD in prewarm
(``proc.userdata["vad"] = silero.VAD.load()``), and its entrypoint, written against
``livekit.agents.JobContext``, records its CLOCK_MONOTONIC entry time (as the trivial agent
does) and ends the job. lksup runs it with ``runtime: livekit-agents``.
"""

from __future__ import annotations

import time

from bench.fleet_agents.trivial import record_entry
from livekit.agents import JobContext, JobProcess
from livekit.plugins import silero


def prewarm(proc: JobProcess) -> None:
    proc.userdata["vad"] = silero.VAD.load()


async def entrypoint(ctx: JobContext) -> None:
    called = time.monotonic()
    record_entry(ctx, called)
    ctx.shutdown("benchmark job done")
