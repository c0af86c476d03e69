"""Offer -> answer latency of a worker connection, measured by the server.

Starts lksup's dev server in this process (no claim delay, so only the worker's time counts),
then, one after the other:

- an lksup ``AgentSession`` whose policy accepts every offer at once;
- the real livekit-agents worker (tests/interop/sdk_agent.py, its own process), whose request
  function accepts every offer at once.

Each gets N dispatches, one at a time (the next once the previous job ended). The latency of an
offer is the time between the server writing the ``AvailabilityRequest`` and reading the
``AvailabilityResponse``, both stamped by the server's trace. The server's budget for that is
about 3 s for all the workers it tries.

    .venv/bin/python bench/offer_latency.py [--jobs 200] [--skip-sdk]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lksup.devserver.server import DevServer  # noqa: E402
from lksup.protocol.events import Accept, Answer, JobAssigned, OfferReceived  # noqa: E402
from lksup.protocol.machine import Options  # noqa: E402
from lksup.transport.session import AgentSession, Credentials  # noqa: E402

KEY, SECRET = "devkey", "bench-secret-0123456789abcdef0123456789"


class AcceptAll:
    async def decide(self, offer: OfferReceived) -> Answer:
        return Accept(identity=f"agent-{offer.job.id}")

    async def run_job(self, assignment: JobAssigned, session: AgentSession) -> None:
        session.job_started(assignment.job.id)
        session.job_ended(assignment.job.id, error=None)

    def terminate(self, job_id: str) -> None:
        del job_id

    def release(self, job_id: str) -> None:
        del job_id


def latencies(server: DevServer, agent_name: str) -> list[float]:
    sent: dict[str, float] = {}
    answered: dict[str, float] = {}
    for entries in server.traces().values():
        for entry in entries:
            message: Any = entry.message
            if entry.kind != "availability":
                continue
            if entry.direction == "send" and message.availability.job.agent_name == agent_name:
                sent[message.availability.job.id] = entry.at
            elif entry.direction == "recv":
                answered[message.availability.job_id] = entry.at
    return [answered[j] - sent[j] for j in sent if j in answered]


async def drive(server: DevServer, agent_name: str, jobs: int) -> None:
    for index in range(jobs):
        await server.create_dispatch(f"bench-{agent_name}-{index}", agent_name)
        with anyio.fail_after(30):
            await server.wait_workers(
                lambda ws: (
                    any(w.agent_name == agent_name for w in ws)
                    and not any(w.running_jobs for w in ws if w.agent_name == agent_name)
                )
            )
            # wait for this job's answer before the next dispatch
            while len(latencies(server, agent_name)) <= index:
                await anyio.sleep(0.001)


async def bench_lksup(server: DevServer, jobs: int) -> list[float]:
    session = AgentSession(
        Options(agent_name="bench-lksup", version="bench"),
        Credentials(server.url, KEY, SECRET),
        AcceptAll(),
    )
    async with anyio.create_task_group() as tg:
        await tg.start(session.run)
        await session.wait_registered()
        await drive(server, "bench-lksup", jobs)
        session.stop()
    return latencies(server, "bench-lksup")


async def bench_sdk(server: DevServer, jobs: int) -> list[float]:
    env = {
        **os.environ,
        "LIVEKIT_URL": server.url,
        "LIVEKIT_API_KEY": KEY,
        "LIVEKIT_API_SECRET": SECRET,
        "AGENT_NAME": "bench-sdk",
        "HOLD_S": "0",
    }
    script = ROOT / "tests" / "interop" / "sdk_agent.py"
    process = await anyio.open_process(
        [sys.executable, str(script), "start"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        with anyio.fail_after(120):
            await server.wait_workers(lambda ws: any(w.agent_name == "bench-sdk" for w in ws))
        await drive(server, "bench-sdk", jobs)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            if process.returncode is None:
                process.send_signal(sig)
                with anyio.move_on_after(10):
                    await process.wait()
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.aclose()
    return latencies(server, "bench-sdk")


def summary(name: str, values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return f"{name:<26} n={len(ms):<5} p50={p50:7.2f} ms  p99={p99:7.2f} ms  max={ms[-1]:7.2f} ms"


async def main(jobs: int, skip_sdk: bool) -> None:
    server = DevServer({KEY: SECRET}, port=0, trace=True, claim_delay=0.0)
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        ours = await bench_lksup(server, jobs)
        theirs = [] if skip_sdk else await bench_sdk(server, jobs)
        tg.cancel_scope.cancel()
    print(
        f"offer -> answer latency, measured by the dev server ({platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {jobs} sequential offers each)"
    )
    print(summary("lksup AgentSession", ours))
    if theirs:
        print(summary("livekit-agents 1.8.9", theirs))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--skip-sdk", action="store_true")
    args = parser.parse_args()
    anyio.run(main, args.jobs, args.skip_sdk)
