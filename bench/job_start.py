"""Job start: assignment -> entrypoint called, with a warm pool; spawn -> READY; PSS per idle
process. lksup's pool beside livekit-agents 1.8.9, same entrypoint module, one run.

The dev server and each worker run in processes of their own (bench/devserver_process.py,
bench/agents/lksup_worker.py, bench/agents/sdk_worker.py), so no event loop is shared. Each
worker gets N dispatches, one at a time, paced so its warm pool is full again before the next.
The latency of a job is the entrypoint's own CLOCK_MONOTONIC reading
(bench/agents/bench_agent.py) minus the time the server wrote the JobAssignment (same clock,
system-wide).

    .venv/bin/python bench/job_start.py [--jobs 50] [--skip-sdk]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any

import anyio
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.devserver_process import RemoteDevServer  # noqa: E402
from bench.processes import kill_group, signal_and_wait  # noqa: E402

KEY, SECRET = "devkey", "bench-secret-0123456789abcdef0123456789"
PACING = 1.0  # seconds between jobs: both warm pools are full again well before (--pacing)


def entries(log: Path) -> dict[str, float]:
    if not log.exists():
        return {}
    found = {}
    for line in log.read_text().splitlines():
        job_id, at = line.split()
        found[job_id] = float(at)
    return found


async def drive(
    server: RemoteDevServer, agent_name: str, jobs: int, log: Path
) -> tuple[list[float], list[float]]:
    """Run the jobs; (assignment -> entrypoint, offer -> answer) latencies, warm-up excluded."""
    missed = 0
    for index in range(jobs + 1):  # the first job warms up and is not counted
        for attempt in range(3):  # a worker that declines makes the server drop the job: retry
            await server.ask(f"dispatch bench-{agent_name}-{index}-{attempt} {agent_name}")
            with anyio.move_on_after(10):
                while len(entries(log)) <= index:
                    await anyio.sleep(0.005)
            if len(entries(log)) > index:
                break
            missed += 1
        else:
            raise RuntimeError(f"{agent_name} took no job after 3 dispatches")
        await anyio.sleep(PACING)
    if missed:
        print(f"note: {agent_name} let {missed} dispatch(es) go untaken; they were repeated")
    sent = await server.ask(f"assignments {agent_name}")
    called = entries(log)
    starts = [called[j] - sent[j] for j in sent if j in called]
    answers = [
        read - offered for offered, read in (await server.ask(f"answers {agent_name}")).values()
    ]
    return starts[1:], answers[1:]


def pss_mb(pids: list[int]) -> list[float]:
    values = []
    for pid in pids:
        with suppress(psutil.Error):
            info = psutil.Process(pid).memory_full_info()
            values.append(getattr(info, "pss", info.uss) / 2**20)
    return values


def _children(root_pid: int, marker: str) -> list[int]:
    """Job processes of a worker: descendants whose command line contains ``marker``."""
    pids: list[int] = []
    for process in psutil.Process(root_pid).children(recursive=True):
        with suppress(psutil.Error):
            if marker in " ".join(process.cmdline()):
                pids.append(process.pid)
    return pids


def _sdk_idle_processes(root_pid: int) -> list[int]:
    """Job processes of an SDK worker: the children of its forkserver."""
    pids: list[int] = []
    for forkserver in _children(root_pid, "forkserver"):
        with suppress(psutil.Error):
            pids.extend(child.pid for child in psutil.Process(forkserver).children())
    return pids


def _lksup_idle_processes(root_pid: int) -> list[int]:
    return _children(root_pid, "lksup.jobs.child")


async def bench_worker(
    server: RemoteDevServer, jobs: int, log: Path, *, kind: str
) -> dict[str, Any]:
    """Run one worker (``lksup`` or ``sdk``) as its own process and measure it."""
    name = f"bench-{kind}"
    env = {
        **os.environ,
        "LIVEKIT_URL": server.url,
        "LIVEKIT_API_KEY": KEY,
        "LIVEKIT_API_SECRET": SECRET,
        "AGENT_NAME": name,
        "BENCH_LOG": str(log),
        "IDLE": "2",
        "PYTHONPATH": str(ROOT),
    }
    module = "bench.agents.sdk_worker" if kind == "sdk" else "bench.agents.lksup_worker"
    args = [sys.executable, "-m", module] + (["start"] if kind == "sdk" else [])
    idle = _sdk_idle_processes if kind == "sdk" else _lksup_idle_processes
    process = await anyio.open_process(
        args,
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    result: dict[str, Any] = {}
    try:
        with anyio.fail_after(120):
            while name not in (await server.ask("workers"))["agents"]:
                await anyio.sleep(0.1)
            while len(idle(process.pid)) < 2:
                await anyio.sleep(0.05)
        result["pss"] = pss_mb(idle(process.pid))
        result["latencies"], result["answers"] = await drive(server, name, jobs, log)
    finally:
        await signal_and_wait(process)
        if kind == "lksup" and process.stdout is not None:
            with suppress(anyio.EndOfStream, ValueError):
                result.update(json.loads((await process.stdout.receive()).decode()))
        await kill_group(process)
    return result


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def line(name: str, result: dict[str, Any]) -> str:
    ms = [v * 1000 for v in result["latencies"]]
    text = f"{name:<22} assignment->entrypoint p50={statistics.median(ms):6.2f} ms"
    text += f" p99={pct(ms, 0.99):6.2f} ms | idle PSS {statistics.median(result['pss']):5.1f} MB"
    if result.get("init"):
        text += f" | spawn->READY p50={statistics.median(result['init']) * 1000:4.0f} ms"
    return text


async def main(jobs: int, skip_sdk: bool) -> None:
    server = await RemoteDevServer.start(KEY, SECRET)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            ours = await bench_worker(server, jobs, Path(scratch) / "lksup.log", kind="lksup")
            theirs = (
                None
                if skip_sdk
                else await bench_worker(server, jobs, Path(scratch) / "sdk.log", kind="sdk")
            )
    finally:
        await server.aclose()
    print(
        f"job start, {jobs} sequential jobs each, warm pool of 2 "
        f"({platform.python_version()}, {os.cpu_count()} CPUs)"
    )
    print(line("lksup", ours))
    if theirs is not None:
        print(line("livekit-agents 1.8.9", theirs))
        ratio = statistics.median(ours["latencies"]) / statistics.median(theirs["latencies"])
        print(f"lksup p50 / livekit-agents p50 = {ratio:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--skip-sdk", action="store_true")
    parser.add_argument("--pacing", type=float, default=PACING)
    args = parser.parse_args()
    PACING = args.pacing
    anyio.run(main, args.jobs, args.skip_sdk)
