"""An lksup agent (pool + connection) running the benchmark entrypoint, as its own process.

Environment as for the SDK worker: LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET,
AGENT_NAME, BENCH_LOG, IDLE. On SIGTERM it stops and prints its pool's spawn -> READY times as
one JSON line.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import anyio

from lksup.pool.pool import AgentPool
from lksup.pool.process import ProcessSpec
from lksup.protocol.machine import Options
from lksup.transport.session import AgentSession, Credentials

ROOT = Path(__file__).resolve().parents[2]


async def main() -> None:
    name = os.environ["AGENT_NAME"]
    pool = AgentPool(
        ProcessSpec(
            agent_name=name,
            entrypoint="bench.agents.bench_agent:entrypoint",
            prewarm="bench.agents.bench_agent:prewarm",
            cwd=ROOT,
            env=dict(os.environ),
        ),
        num_idle=int(os.environ.get("IDLE", "2")),
    )
    session = AgentSession(
        Options(agent_name=name, version="bench"),
        Credentials(
            os.environ["LIVEKIT_URL"],
            os.environ["LIVEKIT_API_KEY"],
            os.environ["LIVEKIT_API_SECRET"],
        ),
        pool,
    )
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            await tg.start(pool.run)
            await tg.start(session.run)
            async for _ in signals:
                break
            session.stop()
            await pool.aclose()
            tg.cancel_scope.cancel()
    sys.stdout.write(json.dumps({"init": list(pool.stats.init_durations)}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    anyio.run(main)
