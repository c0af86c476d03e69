"""Job start and job processes: lksup beside livekit-agents 1.8.9, in one run.

Two agents. "trivial" (bench/agents/bench_agent.py) imports only the standard library and runs
under lksup with ``runtime: lksup``. "heavy" (bench/agents/sdk_agent.py) is an unchanged
livekit-agents agent: its module imports livekit.agents and livekit.plugins.silero and its
prewarm loads the silero VAD; it runs under lksup with ``runtime: livekit-agents``.

Workers, each with the same warm pool (--idle), each given N jobs one at a time:

* lksup as ``lksup run`` runs an agent (bench/agents/lksup_worker.py): job processes forked from
  templates (``process_start: zygote``, the default: the base template loads the local VAD and
  end-of-turn models only once a job has used them), for the heavy agent also with
  LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE=0 in the supervisor's environment (never), and a fresh
  interpreter per process
  (``process_start: spawn``, the opt-out, and what lksup did before templates);
* the SDK's worker (bench/agents/sdk_worker.py) with its defaults (forkserver, its warm-up
  preloads the local VAD and end-of-turn models in the forkserver), and for the heavy agent also
  with LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE=0, its best configuration.

Measured, per worker:

* assignment -> entrypoint: the entrypoint's own CLOCK_MONOTONIC reading (the agent module)
  minus the time the dev server wrote the JobAssignment (same clock, system-wide); the first
  job warms up and is not counted;
* spawn -> READY of one new job process: each refill (a job took a warm process, one new
  process starts alone), as the worker itself times it: lksup's pool from its spawn or fork
  request to the READY frame, the SDK's ProcPool from ``process_created`` (before the fork) to
  ``process_ready``; the initial pool, started all at once (lksup: with its templates), is
  reported apart, in the JSON;
* memory, once the jobs are done and the pool is full again: PSS and USS of each idle job
  process, and the PSS of the worker's whole process tree (the supervisor or worker, the
  templates or the forkserver, the idle processes); the JSON splits the tree.

After each job the next one waits until the worker has reported the replacement process
READY (the same timings, appended to a file as each process becomes ready), then --pacing
seconds more, so every job meets a full warm pool with nothing starting. The dev server and each
worker run in processes of their own (bench/devserver_process.py), one worker at a time; every
process the bench starts is stopped (and any straggler of a worker's tree killed) before it
moves on. The figures are only as quiet as the host: the load average before and after is
printed with them.

    .venv/bin/python bench/job_start.py [--agent both|trivial|heavy] [--jobs 50] [--idle 3]
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
import time
from collections.abc import Callable, Mapping, Sized
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.devserver_process import RemoteDevServer  # noqa: E402
from bench.processes import stop_worker, wait_until  # noqa: E402

KEY, SECRET = "devkey", "bench-secret-0123456789abcdef0123456789"
PACING = 0.5  # quiet seconds after the replacement process is READY, before the next job
PRELOAD = "LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE"
START = "BENCH_PROCESS_START"  # lksup's process_start for the agent (bench/agents/lksup_worker.py)
SDK = f"livekit-agents {metadata.version('livekit-agents')}"

#: agent -> (module, lksup runtime, description)
AGENTS = {
    "trivial": ("bench.agents.bench_agent", "lksup", "standard library only"),
    "heavy": (
        "bench.agents.sdk_agent",
        "livekit-agents",
        "imports livekit.agents + livekit.plugins.silero, silero VAD loaded in prewarm",
    ),
}


@dataclass(frozen=True)
class Worker:
    """One worker under test: who runs which agent, how."""

    key: str  # the agent name's suffix and the JSON key: lksup, lksup-spawn, sdk...
    label: str
    agent: str
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "lksup" if self.key.startswith("lksup") else "sdk"

    @property
    def name(self) -> str:
        return f"bench-{self.agent}-{self.key}"


def workers(agent: str, *, skip_sdk: bool = False) -> list[Worker]:
    """The workers compared for ``agent``."""
    off = {PRELOAD: "0"}
    found = [Worker("lksup", "lksup (zygote, the default)", agent)]
    if agent == "heavy":
        found.append(Worker("lksup-preload0", f"lksup (zygote), {PRELOAD}=0", agent, off))
    found.append(Worker("lksup-spawn", "lksup (process_start: spawn)", agent, {START: "spawn"}))
    if not skip_sdk:
        found.append(Worker("sdk", SDK, agent))
        if agent == "heavy":
            found.append(Worker("sdk-preload0", f"{SDK}, {PRELOAD}=0", agent, off))
    return found


def entries(log: Path) -> dict[str, float]:
    if not log.exists():
        return {}
    found = {}
    for line in log.read_text().splitlines():
        job_id, at = line.split()
        found[job_id] = float(at)
    return found


def readies(log: Path) -> list[float]:
    """The spawn -> READY seconds a worker appended, one per process, in order."""
    return [float(v) for v in log.read_text().split()] if log.exists() else []


async def at_least(read: Callable[[Path], Sized], path: Path, count: int) -> bool:
    """Whether ``read(path)`` has ``count`` entries yet (``entries`` or ``readies``)."""
    return len(read(path)) >= count


async def drive(
    server: RemoteDevServer, agent_name: str, jobs: int, log: Path, ready_log: Path, idle: int
) -> tuple[list[float], list[float]]:
    """Run the jobs; (assignment -> entrypoint, offer -> answer) latencies, warm-up excluded."""
    missed = 0
    for index in range(jobs + 1):  # the first job warms up and is not counted
        taken = partial(at_least, entries, log, index + 1)
        for attempt in range(3):  # a worker that declines makes the server drop the job: retry
            await server.ask(f"dispatch bench-{agent_name}-{index}-{attempt} {agent_name}")
            with suppress(TimeoutError):
                await wait_until(taken, 10, "the job", interval=0.005)
            if await taken():
                break
            missed += 1
        else:
            raise RuntimeError(f"{agent_name} took no job after 3 dispatches")
        refilled = partial(at_least, readies, ready_log, idle + index + 1)
        await wait_until(refilled, 60, f"{agent_name}'s replacement process", interval=0.005)
        await anyio.sleep(PACING)
    if missed:
        print(f"note: {agent_name} let {missed} dispatch(es) go untaken; they were repeated")
    sent = await server.ask(f"assignments {agent_name}")
    called = entries(log)
    starts = [called[j] - sent[j] for j in sorted(sent, key=sent.get) if j in called]
    answers = [
        read - offered for offered, read in (await server.ask(f"answers {agent_name}")).values()
    ]
    return starts[1:], answers[1:]


def roles(root: psutil.Process, kind: str, pids: Path) -> tuple[list[psutil.Process], ...]:
    """(idle job processes, templates, every job process) of a worker's tree.

    lksup: idle processes and templates as the worker reports them ($BENCH_PIDS); its job
    processes are its children running lksup.jobs.child (spawned) and the templates' children
    that are no template (forked). The SDK: its forkserver (a child of the worker) is the
    template, and its children are the job processes, all idle once the jobs are done.
    """
    with suppress(psutil.Error):
        if kind == "sdk":
            for child in root.children():
                if _runs(child, "forkserver"):
                    return child.children(), [child], child.children()
            return [], [], []
        reported = json.loads(pids.read_text()) if pids.exists() else {}
        idle = _processes(reported.get("idle", []))
        templates = _processes(reported.get("templates", []))
        jobs = [p for p in root.children() if _runs(p, "lksup.jobs.child")]
        for template in templates:
            jobs += [p for p in template.children() if p not in templates]
        return idle, templates, jobs
    return [], [], []


def _processes(pids: list[int]) -> list[psutil.Process]:
    found = []
    for pid in pids:
        with suppress(psutil.Error):
            found.append(psutil.Process(pid))
    return found


def _runs(process: psutil.Process, marker: str) -> bool:
    with suppress(psutil.Error):
        return marker in " ".join(process.cmdline())
    return False


def memory_mb(process: psutil.Process) -> tuple[float, float]:
    """(PSS, USS) of one process, in MiB."""
    info = process.memory_full_info()
    return getattr(info, "pss", info.uss) / 2**20, info.uss / 2**20


def measure_memory(root: psutil.Process, kind: str, pids: Path) -> dict[str, Any]:
    """Idle processes' PSS and USS; the PSS of the tree, of the worker, of its templates."""
    idle_processes, templates, _ = roles(root, kind, pids)
    idle = [memory_mb(p) for p in idle_processes]
    tree = [root, *root.children(recursive=True)]
    return {
        "idle_pss_mb": [round(pss, 1) for pss, _ in idle],
        "idle_uss_mb": [round(uss, 1) for _, uss in idle],
        "tree_pss_mb": round(sum(memory_mb(p)[0] for p in tree), 1),
        "tree_processes": len(tree),
        "worker_pss_mb": round(memory_mb(root)[0], 1),
        "templates_pss_mb": round(sum(memory_mb(p)[0] for p in templates), 1),
    }


async def bench_worker(
    server: RemoteDevServer, worker: Worker, jobs: int, idle: int, scratch: Path
) -> dict[str, Any]:
    """Run one worker as its own process, measure it, stop it and everything it started."""
    module, runtime, _ = AGENTS[worker.agent]
    log, ready_log = scratch / f"{worker.name}.log", scratch / f"{worker.name}.ready"
    pids = scratch / f"{worker.name}.pids"
    env = {k: v for k, v in os.environ.items() if k != PRELOAD}
    env |= {
        "LIVEKIT_URL": server.url,
        "LIVEKIT_API_KEY": KEY,
        "LIVEKIT_API_SECRET": SECRET,
        "AGENT_NAME": worker.name,
        "BENCH_AGENT": module,
        "BENCH_RUNTIME": runtime,
        "BENCH_LOG": str(log),
        "BENCH_READY_LOG": str(ready_log),
        "BENCH_PIDS": str(pids),
        "IDLE": str(idle),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        **worker.env,
    }
    module_name = f"bench.agents.{worker.kind}_worker"
    args = [sys.executable, "-m", module_name] + (["start"] if worker.kind == "sdk" else [])
    errors = scratch / f"{worker.name}.stderr"
    with errors.open("wb") as stderr:  # the worker's log: shown if the run fails
        process = await anyio.open_process(
            args,
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    root = psutil.Process(process.pid)
    tree: list[psutil.Process] = []
    result: dict[str, Any] = {}

    async def registered() -> bool:
        return worker.name in (await server.ask("workers"))["agents"]

    async def warm() -> bool:
        return len(readies(ready_log)) >= idle

    async def settled() -> bool:  # the jobs' own processes have exited: only the pool is left
        idle_processes, _, job_processes = roles(root, worker.kind, pids)
        return len(idle_processes) == len(job_processes) == idle

    try:
        await wait_until(registered, 120, f"{worker.name} to register", interval=0.1)
        await wait_until(warm, 120, f"{worker.name}'s warm pool", interval=0.05)
        result["latencies"], result["answers"] = await drive(
            server, worker.name, jobs, log, ready_log, idle
        )
        await wait_until(settled, 30, f"{worker.name}'s finished jobs to exit", interval=0.05)
        result.update(measure_memory(root, worker.kind, pids))
        times = readies(ready_log)
        result["startup"], result["init"] = times[:idle], times[idle:]
    except BaseException:
        print(
            f"{worker.name} failed; the end of its log:",
            *errors.read_text().splitlines()[-20:],
            sep="\n",
        )
        raise
    finally:
        with suppress(psutil.Error):
            tree = root.children(recursive=True)
        await stop_worker(process)
        # lksup's job processes live in sessions of their own; they exit when the supervisor's
        # end of their socket closes. Wait for that, and kill whatever of the tree is left.
        _, alive = psutil.wait_procs(tree, timeout=10)
        for straggler in alive:
            print(f"note: {worker.name} left pid {straggler.pid} behind; killing it")
            with suppress(psutil.Error):
                straggler.kill()
        psutil.wait_procs(alive, timeout=5)
    return result


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, Any]:
    """n, p50, p90, p99 and max of seconds, in milliseconds."""
    ms = [v * 1000 for v in values]
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "p50": round(statistics.median(ms), 2),
        "p90": round(pct(ms, 0.90), 2),
        "p99": round(pct(ms, 0.99), 2),
        "max": round(max(ms), 2),
    }


def report_row(worker: Worker, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "agent": worker.agent,
        "worker": worker.key,
        "label": worker.label,
        "assignment_to_entrypoint_ms": summary(result["latencies"]),
        "offer_to_answer_ms": summary(result["answers"]),
        "spawn_to_ready_ms": summary(result["init"]),
        "initial_pool_spawn_to_ready_ms": [round(v * 1000) for v in result["startup"]],
        "idle_pss_mb": round(statistics.median(result["idle_pss_mb"]), 1),
        "idle_uss_mb": round(statistics.median(result["idle_uss_mb"]), 1),
        "idle_pss_mb_each": result["idle_pss_mb"],
        "idle_uss_mb_each": result["idle_uss_mb"],
        "tree_pss_mb": result["tree_pss_mb"],
        "tree_processes": result["tree_processes"],
        "worker_pss_mb": result["worker_pss_mb"],
        "templates_pss_mb": result["templates_pss_mb"],
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a fixed-width table (milliseconds and MiB)."""
    width = max(len(row["label"]) for row in rows) + 2
    lines = [
        f"{'':<{width}}{'assignment->entrypoint ms':^26}|{'idle process MB':^16}|{'tree MB':^8}|"
        f"{'spawn->READY ms':^16}",
        f"{'':<{width}}{'p50':>8}{'p90':>9}{'max':>9}|{'PSS':>8}{'USS':>8}|{'PSS':>8}|"
        f"{'p50':>8}{'max':>8}",
    ]
    for row in rows:
        start, init = row["assignment_to_entrypoint_ms"], row["spawn_to_ready_ms"]
        lines.append(
            f"{row['label']:<{width}}{start['p50']:>8.2f}{start['p90']:>9.2f}{start['max']:>9.2f}|"
            f"{row['idle_pss_mb']:>8.1f}{row['idle_uss_mb']:>8.1f}|{row['tree_pss_mb']:>8.1f}|"
            f"{init['p50']:>8.0f}{init['max']:>8.0f}"
        )
    return "\n".join(lines)


async def main(agents: list[str], jobs: int, idle: int, skip_sdk: bool) -> None:
    began, load_before = time.monotonic(), os.getloadavg()[0]
    server = await RemoteDevServer.start(KEY, SECRET)
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for agent in agents:
                for worker in workers(agent, skip_sdk=skip_sdk):
                    result = await bench_worker(server, worker, jobs, idle, Path(scratch))
                    rows.append(report_row(worker, result))
    finally:
        await server.aclose()
    left = psutil.Process().children(recursive=True)
    if left:
        print(f"note: processes left behind: {[p.pid for p in left]}")
    report = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "livekit_agents": metadata.version("livekit-agents"),
        "jobs": jobs,
        "idle": idle,
        "pacing_s": PACING,
        "seconds": round(time.monotonic() - began, 1),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # other work
        "runs": rows,
    }
    print(
        f"job start: {jobs} sequential jobs per worker, warm pool of {idle}, "
        f"Python {report['python']}, {report['cpus']} CPUs, {report['seconds']:.0f} s "
        f"(load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after)"
    )
    for agent in agents:
        print(f"\n{agent} agent ({AGENTS[agent][2]}; {AGENTS[agent][0]})")
        print(table([row for row in rows if row["agent"] == agent]))
    print()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--agent", choices=["both", *AGENTS], default="both")
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--idle", type=int, default=3, help="warm processes per worker")
    parser.add_argument("--pacing", type=float, default=PACING)
    parser.add_argument("--skip-sdk", action="store_true")
    args = parser.parse_args()
    PACING = args.pacing
    chosen = list(AGENTS) if args.agent == "both" else [args.agent]
    anyio.run(main, chosen, args.jobs, args.idle, args.skip_sdk)
