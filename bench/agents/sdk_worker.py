"""livekit-agents worker running the benchmark entrypoint (production defaults otherwise)."""

from __future__ import annotations

import math
import os

from bench.agents.bench_agent import entrypoint, prewarm
from livekit.agents import AgentServer, JobRequest, cli


def _no_load() -> float:
    return 0.0


server = AgentServer(
    ws_url=os.environ["LIVEKIT_URL"],
    api_key=os.environ["LIVEKIT_API_KEY"],
    api_secret=os.environ["LIVEKIT_API_SECRET"],
    num_idle_processes=int(os.environ.get("IDLE", "2")),
    port=0,
    load_threshold=math.inf,
    load_fnc=_no_load,
    setup_fnc=prewarm,
)


async def on_request(req: JobRequest) -> None:
    await req.accept(identity=f"agent-{req.id}")


server.rtc_session(agent_name=os.environ["AGENT_NAME"], on_request=on_request)(entrypoint)

if __name__ == "__main__":
    cli.run_app(server)
