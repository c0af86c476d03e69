"""A minimal livekit-agents (1.8.x) worker, run as its own process by the interop tests.

Environment: LIVEKIT_URL / LIVEKIT_API_KEY / LIVEKIT_API_SECRET, AGENT_NAME, HOLD_S (how long
the entrypoint stays before ending the job). Load is reported as 0 and the threshold is off, so
a busy CI host never makes the worker refuse jobs (the test is about the protocol).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os

from livekit.agents import AgentServer, JobContext, JobProcess, JobRequest, cli

log = logging.getLogger("sdk-agent")


def _no_load() -> float:
    return 0.0


server = AgentServer(
    ws_url=os.environ["LIVEKIT_URL"],
    api_key=os.environ["LIVEKIT_API_KEY"],
    api_secret=os.environ["LIVEKIT_API_SECRET"],
    num_idle_processes=1,
    port=0,
    drain_timeout=30,
    max_retry=3,
    load_threshold=math.inf,
    load_fnc=_no_load,
    multiprocessing_context="spawn",
)


def prewarm(proc: JobProcess) -> None:
    proc.userdata["warmed"] = True


server.setup_fnc = prewarm


async def on_request(req: JobRequest) -> None:
    await req.accept(identity=f"agent-{req.id}", name="sdk-agent")


@server.rtc_session(agent_name=os.environ.get("AGENT_NAME", "sdk-agent"), on_request=on_request)
async def entrypoint(ctx: JobContext) -> None:
    log.info(
        "sdk entrypoint ran: job=%s room=%s warmed=%s",
        ctx.job.id,
        ctx.job.room.name,
        ctx.proc.userdata.get("warmed"),
    )

    async def on_shutdown(reason: str) -> None:
        log.info("sdk job shutdown: job=%s reason=%s", ctx.job.id, reason)

    ctx.add_shutdown_callback(on_shutdown)
    await asyncio.sleep(float(os.environ.get("HOLD_S", "1")))
    ctx.shutdown("done")


if __name__ == "__main__":
    cli.run_app(server)
