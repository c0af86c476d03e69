"""Offer -> answer latency of a worker connection, measured by the server.

The dev server and each worker (lksup, and livekit-agents 1.8.9 for comparison) run in processes
of their own (see bench/job_start.py, whose runs this reuses). The latency of an offer is the time
between the server writing the ``AvailabilityRequest`` and reading the ``AvailabilityResponse``,
both stamped by the server's trace. The server gives all the workers it tries about 3 s for that.

    .venv/bin/python bench/offer_latency.py [--jobs 200] [--skip-sdk]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import job_start
from bench.devserver_process import RemoteDevServer


def summary(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"{name:<32} n={len(ms):<5} p50={statistics.median(ms):6.2f} ms  "
        f"p99={job_start.pct(ms, 0.99):6.2f} ms  max={max(ms):6.2f} ms"
    )


async def main(jobs: int, skip_sdk: bool) -> None:
    server = await RemoteDevServer.start(job_start.KEY, job_start.SECRET)
    results = {}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for worker in job_start.workers("trivial", skip_sdk=skip_sdk):
                results[worker.label] = await job_start.bench_worker(
                    server, worker, jobs, 2, Path(scratch)
                )
    finally:
        await server.aclose()
    print(
        f"offer -> answer latency, measured by the dev server ({platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {jobs} sequential offers each)"
    )
    for label, result in results.items():
        print(summary(label, result["answers"]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--skip-sdk", action="store_true")
    args = parser.parse_args()
    anyio.run(main, args.jobs, args.skip_sdk)
