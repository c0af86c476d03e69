"""A minimal supervisor for signal tests: one agent pool, commands on stdin, events on stdout.

    python tests/pool/harness_supervisor.py AGENT_DIR [spawn|zygote]
stdout: "ready PID" (a warm process), "signal N" (a signal reached this process),
"running PID" / "ended ERROR" (jobs). stdin: "run" (a short job), "hold" (a job that waits
for its shutdown), "quit".
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from operator import contains
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lksup.pool.pool import AgentPool
from lksup.protocol.events import JobAssigned, OfferReceived
from tests.pool.helpers import Reporter, make_job, running_pool, spec


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(agent_dir: Path, launch: str) -> None:
    async with running_pool(spec(agent_dir), num_idle=1, launch=launch) as pool:
        await serve(pool)


async def serve(pool: AgentPool) -> None:
    reporter = Reporter()
    async with anyio.create_task_group() as tg:

        async def signals() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
                async for number in received:
                    say(f"signal {int(number)}")

        tg.start_soon(signals)
        with anyio.fail_after(30):
            await pool.wait_until(lambda: len(pool.idle) == 1)
        say(f"ready {pool.idle[0].pid}")
        count = 0
        stdin = anyio.wrap_file(sys.stdin)
        async for line in stdin:
            command = line.strip()
            if command == "quit":
                break
            count += 1
            job = make_job(f"AJ_{count}", metadata="hold" if command == "hold" else "")
            await pool.decide(OfferReceived(job))
            if command == "hold":
                tg.start_soon(pool.run_job, JobAssigned(job, token="jwt"), reporter)
                await pool.wait_until(functools.partial(contains, reporter.started, job.id))
                say(f"running {pool.running[job.id].pid}")
            else:
                await pool.run_job(JobAssigned(job, token="jwt"), reporter)
                say(f"ended {reporter.ended[job.id]}")
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    anyio.run(main, Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "spawn")
