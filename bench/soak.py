"""Soak: one lksup supervisor runs 1,000 jobs or more; does it keep its memory and descriptors?

A fleet of trivial agents (bench/fleet_agents/trivial.py: records its entry and ends) runs as
``lksup run`` against the dev server (bench/devserver_process.py, a process of its own). Jobs
are dispatched in waves of --concurrency, round robin over the agents; each wave waits until
its entrypoints ran. Recorded, once the pools are warm (start), at half the jobs (middle) and
after the last one (end, once every pool is full again):

* the supervisor process's RSS, open descriptors and threads;
* the number of processes in its tree (supervisor, templates, warm job processes).

Then it checks that every job dispatched had its entrypoint run exactly once and was reported
to the server as JS_SUCCESS. Exit status 1 when that does not hold, or when the supervisor's
descriptors or processes grew between start and end, or its threads between middle and end
(anyio starts its worker threads on first use). RSS is reported, not judged: the allocator
keeps memory it freed.

    .venv/bin/python bench/soak.py [--jobs 1000] [--concurrency 8] [--agents 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.devserver_process import RemoteDevServer  # noqa: E402
from bench.fleet import KEY, SECRET, fleet_yaml, lksup_command, spawn  # noqa: E402
from bench.processes import stop_worker, wait_until  # noqa: E402

from lksup.control.client import ControlClient  # noqa: E402
from lksup.control.errors import DaemonUnreachable  # noqa: E402

IDLE = 2  # warm processes per agent


@dataclass
class Sample:
    """The supervisor at one point of the soak."""

    at: str
    jobs_done: int
    rss_mb: float
    fds: int
    threads: int
    tree_processes: int


def sample(supervisor: psutil.Process, at: str, jobs_done: int) -> Sample:
    tree = [supervisor, *supervisor.children(recursive=True)]
    return Sample(
        at=at,
        jobs_done=jobs_done,
        rss_mb=round(supervisor.memory_info().rss / 2**20, 1),
        fds=supervisor.num_fds(),
        threads=supervisor.num_threads(),
        tree_processes=sum(1 for p in tree if p.is_running()),
    )


def entries(log: Path) -> list[str]:
    """The job ids whose entrypoint ran (one line each)."""
    if not log.exists():
        return []
    return [line.split()[1] for line in log.read_text().splitlines() if line.strip()]


async def warm(client: ControlClient, agents: list[str]) -> bool:
    """Every agent registered with its warm pool full (False while the socket is not up)."""
    try:
        items = (await client.status()).items
    except DaemonUnreachable:
        return False
    by_name = {item.name: item for item in items}
    return all(
        name in by_name and by_name[name].ready and by_name[name].idle >= IDLE for name in agents
    )


async def soak(jobs: int, concurrency: int, agent_count: int, out: Path) -> dict[str, Any]:
    agents = [f"soak-{index}" for index in range(agent_count)]
    log = out / "entries.log"
    fleet = out / "fleet.yaml"
    server = await RemoteDevServer.start(KEY, SECRET)
    try:
        fleet.write_text(fleet_yaml("trivial", dict.fromkeys(agents, IDLE), server.url, log))
        env = dict(os.environ)
        env["BENCH_FLEET_SECRET"] = SECRET
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        socket_path = out / "lksup.sock"
        command = [*lksup_command(), "run", str(fleet), "--socket", str(socket_path)]
        command += ["--state-dir", str(out / "state"), "--log-format", "json"]
        process = await spawn(command, env, out / "lksup.log")
        try:
            supervisor = psutil.Process(process.pid)
            async with ControlClient(socket_path, timeout=10) as client:
                await wait_until(lambda: warm(client, agents), 120, "the warm pools", 0.2)
                samples = [sample(supervisor, "start", 0)]
                began = time.monotonic()
                dispatched: list[str] = []
                while len(dispatched) < jobs:
                    wave = min(concurrency, jobs - len(dispatched))
                    for _ in range(wave):
                        index = len(dispatched)
                        room = f"soak-room-{index}"
                        await server.ask(f"dispatch {room} {agents[index % len(agents)]}")
                        dispatched.append(room)
                    done = len(dispatched)

                    async def ran(done: int = done) -> bool:
                        return len(entries(log)) >= done

                    await wait_until(ran, 60, f"the entrypoints of {done} jobs", 0.01)
                    if len(samples) == 1 and done >= jobs // 2:
                        samples.append(sample(supervisor, "middle", done))
                elapsed = time.monotonic() - began

                async def settled() -> bool:
                    outcomes = [await server.ask(f"outcomes {a}") for a in agents]
                    final = sum(sum(o.values()) for o in outcomes)
                    return final >= jobs and await warm(client, agents)

                await wait_until(settled, 120, "every outcome and full pools", 0.2)
                samples.append(sample(supervisor, "end", jobs))
                outcomes: dict[str, int] = {}
                for agent in agents:
                    for status, count in (await server.ask(f"outcomes {agent}")).items():
                        outcomes[status] = outcomes.get(status, 0) + count
        finally:
            await stop_worker(process)
    finally:
        await server.aclose()
    ran_ids = entries(log)
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "agents": agent_count,
        "idle_per_agent": IDLE,
        "concurrency": concurrency,
        "jobs_dispatched": jobs,
        "entrypoints_run": len(ran_ids),
        "distinct_jobs_run": len(set(ran_ids)),
        "outcomes": outcomes,
        "seconds": round(elapsed, 1),
        "jobs_per_second": round(jobs / elapsed, 1),
        "samples": [asdict(s) for s in samples],
    }


def verdict(result: dict[str, Any]) -> list[str]:
    """What does not hold (empty: the soak passed)."""
    problems = []
    jobs = result["jobs_dispatched"]
    if result["entrypoints_run"] != jobs or result["distinct_jobs_run"] != jobs:
        problems.append(
            f"{jobs} dispatched, {result['entrypoints_run']} entrypoints run "
            f"({result['distinct_jobs_run']} distinct jobs)"
        )
    if result["outcomes"] != {"JS_SUCCESS": jobs}:
        problems.append(f"outcomes {result['outcomes']}, not {jobs} JS_SUCCESS")
    start, middle, end = result["samples"]
    problems += [
        f"the supervisor's {key} grew from {before[key]} to {end[key]}"
        # threads against the middle: anyio's worker threads are started on first use, and
        # kept a while
        for key, before in (("fds", start), ("tree_processes", start), ("threads", middle))
        if end[key] > before[key]
    ]
    return problems


def report(result: dict[str, Any]) -> str:
    lines = [
        f"soak: {result['jobs_dispatched']} jobs on {result['agents']} trivial agents "
        f"({result['idle_per_agent']} warm each), {result['concurrency']} at a time, "
        f"{result['seconds']} s ({result['jobs_per_second']} jobs/s), "
        f"Python {result['python']}, {result['cpus']} CPUs",
        f"entrypoints run {result['entrypoints_run']} "
        f"({result['distinct_jobs_run']} distinct), outcomes {result['outcomes']}",
        "",
        f"{'':<8}{'jobs':>6}{'RSS MB':>9}{'fds':>6}{'threads':>9}{'processes':>11}",
    ]
    lines += [
        f"{s['at']:<8}{s['jobs_done']:>6}{s['rss_mb']:>9}{s['fds']:>6}{s['threads']:>9}"
        f"{s['tree_processes']:>11}"
        for s in result["samples"]
    ]
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    out = Path(tempfile.mkdtemp(prefix="lksup-soak-"))
    try:
        result = await soak(args.jobs, args.concurrency, args.agents, out)
    except BaseException:
        print(f"soak failed; logs kept in {out}", file=sys.stderr)
        raise
    print(report(result))
    print(json.dumps(result, indent=1))
    problems = verdict(result)
    for problem in problems:
        print(f"DOES NOT HOLD: {problem}", file=sys.stderr)
    if problems:
        print(f"logs kept in {out}", file=sys.stderr)
        return 1
    shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8, help="jobs dispatched per wave")
    parser.add_argument("--agents", type=int, default=3)
    sys.exit(anyio.run(main, parser.parse_args()))
