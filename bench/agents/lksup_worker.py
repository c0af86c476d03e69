"""lksup running one benchmark agent, as its own process, with the daemon's own pieces.

Environment as for the SDK worker (bench/agents/sdk_worker.py): LIVEKIT_URL, LIVEKIT_API_KEY,
LIVEKIT_API_SECRET, AGENT_NAME, IDLE, BENCH_AGENT, BENCH_LOG, BENCH_READY_LOG; plus
BENCH_RUNTIME (the agent's ``runtime:``, lksup or livekit-agents), BENCH_PROCESS_START (its
``process_start:``, zygote by default, or spawn) and BENCH_PIDS.

The agent is a fleet ``Agent`` run by the daemon's ``AgentRuntime`` (pool, connection, load
loop) beside the daemon's ``Monitor`` and ``Zygotes``, configured as ``Supervisor.apply``
configures them: what ``lksup run`` gives it, without the control socket and with no state
directory (the base template learns the agent's plugins on this first start and is replaced
once, as with a fresh state directory; that is part of the initial pool's start). Like the SDK
worker, it never reports itself loaded (``load: jobs`` over ``max_jobs`` 1000, threshold 1).

On every change of its pool it appends each new process's spawn (or fork) -> READY seconds, the
pool's own measurement, to $BENCH_READY_LOG, and replaces $BENCH_PIDS with the pids of its idle
processes and of its templates (JSON: ``{"idle": [...], "templates": [...]}``). It stops on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import anyio

from lksup.daemon.agent import AgentRuntime
from lksup.daemon.resolve import Environment
from lksup.fleet.schema import Agent
from lksup.monitors.monitor import Monitor
from lksup.pool.pool import AgentPool, auto_idle_processes
from lksup.pool.zygote import Zygotes

ROOT = Path(__file__).resolve().parents[2]


async def report(pool: AgentPool, zygotes: Zygotes, ready_log: Path, pids: Path) -> None:
    """At every change of the pool: its new spawn -> READY times, its idle and template pids."""
    written = 0
    while True:
        new, written = pool.stats.spawned - written, pool.stats.spawned
        if new:
            with ready_log.open("a", encoding="utf-8") as log:
                log.writelines(f"{s:.6f}\n" for s in list(pool.stats.init_durations)[-new:])
        partial = pids.with_suffix(".partial")
        partial.write_text(
            json.dumps(
                {
                    "idle": [p.pid for p in pool.idle],
                    "templates": [t.pid for _, t in zygotes.live()],
                }
            )
        )
        partial.replace(pids)
        await pool.wait_changed()


async def main() -> None:
    name, module = os.environ["AGENT_NAME"], os.environ["BENCH_AGENT"]
    agent = Agent.model_validate(
        {
            "entrypoint": f"{module}:entrypoint",
            "prewarm": f"{module}:prewarm",
            "runtime": os.environ.get("BENCH_RUNTIME", "lksup"),
            "process_start": os.environ.get("BENCH_PROCESS_START", "zygote"),
            "num_idle_processes": int(os.environ.get("IDLE", "2")),
            "load": "jobs",
            "max_jobs": 1000,
            "load_threshold": 1,
        }
    )
    env = Environment(
        environ=dict(os.environ),
        base_dir=ROOT,
        default_url=os.environ["LIVEKIT_URL"],
        default_api_key=os.environ["LIVEKIT_API_KEY"],
        default_api_secret=os.environ["LIVEKIT_API_SECRET"],
    )
    monitor = Monitor()
    zygotes = Zygotes(monitor=monitor)
    zygotes.configure(preload=agent.preload, defaults=True, sdk=agent.runtime == "livekit-agents")
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            await tg.start(monitor.run)
            await tg.start(zygotes.run)
            runtime = AgentRuntime(
                name,
                agent,
                env,
                monitor=monitor,
                init_limiter=anyio.CapacityLimiter(auto_idle_processes()),
                zygotes=zygotes,
            )
            async with anyio.create_task_group() as agent_tg:
                await agent_tg.start(runtime.run)
                agent_tg.start_soon(
                    report,
                    runtime.pool,
                    zygotes,
                    Path(os.environ["BENCH_READY_LOG"]),
                    Path(os.environ["BENCH_PIDS"]),
                )
                async for _ in signals:
                    break
                runtime.session.stop()
                await runtime.pool.aclose()
                agent_tg.cancel_scope.cancel()
            await zygotes.aclose()
            tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main)
