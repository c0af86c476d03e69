"""livekit-agents worker running a benchmark agent (production defaults otherwise).

Environment: LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET, AGENT_NAME, IDLE, BENCH_AGENT
(the agent's module: bench.agents.bench_agent or bench.agents.sdk_agent), BENCH_LOG (see the
agent), BENCH_READY_LOG: each job process's fork -> READY seconds are appended to it, one line a
process, as it becomes ready (from the process pool's own ``process_created`` event, emitted
just before the fork, to its ``process_ready`` event, after the process answered
``InitializeRequest``: the moment it joins the warm pool). The timing is the only change to the
SDK: a subclass of its ProcPool that listens to two events.
"""

from __future__ import annotations

import importlib
import math
import os
import time
from typing import Any

from livekit.agents import AgentServer, JobRequest, cli
from livekit.agents.ipc import proc_pool

agent = importlib.import_module(os.environ["BENCH_AGENT"])


class _TimedProcPool(proc_pool.ProcPool):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        created: dict[int, float] = {}

        def on_created(proc: object) -> None:
            created[id(proc)] = time.monotonic()

        def on_ready(proc: object) -> None:
            seconds = time.monotonic() - created.pop(id(proc))
            with open(os.environ["BENCH_READY_LOG"], "a", encoding="utf-8") as log:
                log.write(f"{seconds:.6f}\n")

        self.on("process_created", on_created)
        self.on("process_ready", on_ready)


proc_pool.ProcPool = _TimedProcPool  # type: ignore[misc]  # AgentServer.run looks it up here


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
    setup_fnc=agent.prewarm,
)


async def on_request(req: JobRequest) -> None:
    await req.accept(identity=f"agent-{req.id}")


server.rtc_session(agent_name=os.environ["AGENT_NAME"], on_request=on_request)(agent.entrypoint)

if __name__ == "__main__":
    cli.run_app(server)
