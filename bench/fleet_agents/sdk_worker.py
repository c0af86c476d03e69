"""One livekit-agents worker (one agent, one OS process) of the fleet-scale benchmark.

Run as users run an SDK agent: ``python -m bench.fleet_agents.sdk_worker start``. Environment:
LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET, AGENT_NAME, IDLE (num_idle_processes),
BENCH_AGENT (the agent's module: bench.fleet_agents.trivial or bench.fleet_agents.heavy),
BENCH_LOG (see the agent) and BENCH_READY_LOG: the CLOCK_MONOTONIC time each job process
becomes ready (the process pool's ``process_ready`` event: it answered ``InitializeRequest``
and joined the warm pool) is appended to it, one line a process. That timing is the only
change to the SDK (a ProcPool subclass listening to one event). Like lksup's side of the
benchmark, the worker never reports load (``load_fnc`` 0, no threshold), so the server's
worker choice and the worker's own availability depend on nothing but the pool.
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

        def on_ready(proc: object) -> None:
            with open(os.environ["BENCH_READY_LOG"], "a", encoding="utf-8") as log:
                log.write(f"{time.monotonic():.6f}\n")

        self.on("process_ready", on_ready)


proc_pool.ProcPool = _TimedProcPool  # type: ignore[misc]  # AgentServer.run looks it up here


def _no_load() -> float:
    return 0.0


server = AgentServer(
    ws_url=os.environ["LIVEKIT_URL"],
    api_key=os.environ["LIVEKIT_API_KEY"],
    api_secret=os.environ["LIVEKIT_API_SECRET"],
    num_idle_processes=int(os.environ["IDLE"]),
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
