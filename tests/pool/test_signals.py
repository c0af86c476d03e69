"""Signals and the supervisor's death: job processes never get the supervisor's group signals,
and never outlive it."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import psutil
import pytest

from tests.conftest import ROOT, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.process]

HARNESS = Path(__file__).with_name("harness_supervisor.py")


class Harness:
    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self._buffer = b""

    async def line(self, prefix: str, timeout: float = 30) -> str:
        assert self.process.stdout is not None
        with anyio.fail_after(timeout):
            while True:
                while b"\n" in self._buffer:
                    raw, self._buffer = self._buffer.split(b"\n", 1)
                    text = raw.decode()
                    if text.startswith(prefix):
                        return text.removeprefix(prefix).strip()
                self._buffer += await self.process.stdout.receive()

    async def send(self, command: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(command.encode() + b"\n")


@asynccontextmanager
async def harness(agent_dir: Path, launch: str = "spawn") -> AsyncIterator[Harness]:
    process = await anyio.open_process(
        [sys.executable, str(HARNESS), str(agent_dir), launch],
        start_new_session=True,  # a group of its own, as under `timeout` or a terminal
        stderr=-3,
        cwd=ROOT,
    )
    try:
        yield Harness(process)
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            await process.aclose()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_group_signals_never_reach_job_processes(agent_dir: Path, launch: str) -> None:
    async with harness(agent_dir, launch) as sup:
        warm = int(await sup.line("ready"))
        await sup.send("hold")
        running = int(await sup.line("running"))
        os.killpg(sup.process.pid, signal.SIGTERM)
        assert await sup.line("signal") == str(int(signal.SIGTERM))
        os.killpg(sup.process.pid, signal.SIGINT)
        assert await sup.line("signal") == str(int(signal.SIGINT))
        assert _alive(running)
        assert running == warm  # the job took the warm process
        await sup.send("run")
        assert await sup.line("ended") == "None"
        await sup.send("quit")
        with anyio.fail_after(20):
            assert await sup.process.wait() == 0


async def test_no_job_process_outlives_a_killed_supervisor(agent_dir: Path, launch: str) -> None:
    """Templates included: nothing forked or spawned survives the supervisor's SIGKILL."""
    async with harness(agent_dir, launch) as sup:
        await sup.line("ready")
        await sup.send("hold")
        running = int(await sup.line("running"))
        children = [p.pid for p in psutil.Process(sup.process.pid).children(recursive=True)]
        assert running in children
        assert len(children) >= (3 if launch == "zygote" else 1)  # base and template too
        sup.process.send_signal(signal.SIGKILL)
        await sup.process.wait()
        await eventually(  # the acceptance bound: gone 2 s after the supervisor
            lambda: not any(_alive(pid) for pid in children), timeout=2, interval=0.02
        )
