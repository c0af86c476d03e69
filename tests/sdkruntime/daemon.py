"""`lksup run` as a subprocess against the real livekit-server, for the SDK-runtime tests.

``running_daemon`` starts the daemon with no fleet (``lksup apply`` gives it one) and no
``LIVEKIT_*`` variables, waits for its control socket, and on the way out stops it if it is still
running (SIGQUIT, then SIGKILL), waits for the job processes it leaves and removes its scratch
folder. Every wait is on what the daemon records (``DaemonWaits``: its log records and events
through the control socket) under ``fail_after``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import psutil

from lksup.control.api import AgentStatus
from lksup.control.client import ControlClient
from tests.conftest import ROOT
from tests.daemon_waits import DaemonWaits

POLL = 0.05

Record = Mapping[str, Any]


class Daemon(DaemonWaits):
    """One running ``lksup run`` and its JSON log."""

    def __init__(self, process: anyio.abc.Process, scratch: Path, env: Mapping[str, str]) -> None:
        self.process = process
        self.scratch = scratch
        self.env = env
        self.socket = scratch / "ctl.sock"
        self.log = scratch / "daemon.log"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def records(self) -> list[Record]:
        """Every JSON line of the log so far (anything else it printed is skipped)."""
        found: list[Record] = []
        for line in self.text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                found.append(record)
        return found

    def messages(self) -> list[str]:
        return [str(r.get("msg", "")) for r in self.records()]

    async def wait_record(self, predicate: Callable[[Record], bool], timeout: float) -> Record:
        """The first log record that ``predicate`` accepts, once the daemon logs it."""
        return await self.follow("logs", predicate, timeout=timeout)

    async def wait_message(self, message: str, timeout: float) -> Record:
        return await self.wait_record(lambda r: r.get("msg") == message, timeout)

    async def wait_prefix(self, prefix: str, timeout: float) -> Record:
        """The first log record whose message starts with ``prefix``."""
        return await self.wait_record(lambda r: str(r.get("msg", "")).startswith(prefix), timeout)

    async def cli(self, *args: str) -> tuple[int, str]:
        result = await anyio.run_process(
            [sys.executable, "-m", "lksup", *args], env=self.env, cwd=ROOT, check=False
        )
        return result.returncode, (result.stdout + result.stderr).decode()

    async def status(self) -> dict[str, AgentStatus]:
        async with ControlClient(self.socket) as client:
            return {item.name: item for item in (await client.status()).items}

    async def wait_status(
        self, name: str, predicate: Callable[[AgentStatus], bool], timeout: float
    ) -> AgentStatus:
        """The agent's status row once ``predicate`` holds for it (read again at each event)."""

        def holds(agents: dict[str, AgentStatus]) -> bool:
            return name in agents and predicate(agents[name])

        return (await self.until_read(self.status, holds, timeout))[name]


async def _stop(process: anyio.abc.Process) -> None:
    """SIGQUIT (stop at once), then SIGKILL; the job processes it leaves are waited for too."""
    try:
        orphans = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        orphans = []
    for sig in (signal.SIGQUIT, signal.SIGKILL):
        if process.returncode is not None:
            break
        process.send_signal(sig)
        with anyio.move_on_after(10):
            await process.wait()
    await process.aclose()
    # job processes end on EOF of their socket; those of a killed daemon are not ours to reap
    _, alive = await anyio.to_thread.run_sync(lambda: psutil.wait_procs(orphans, timeout=5))
    for leftover in alive:
        leftover.kill()


@asynccontextmanager
async def running_daemon() -> AsyncIterator[Daemon]:
    """``lksup run`` with no fleet yet."""
    scratch = Path(tempfile.mkdtemp(dir="/tmp", prefix="lksup-sdk-"))  # short socket path
    # the daemon has no LIVEKIT_* of its own: the fleet names the server and its key files, so
    # whatever job processes find in their environment was exported by lksup
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    env |= {"LKSUP_SOCKET": str(scratch / "ctl.sock"), "LKSUP_STATE_DIR": str(scratch / "state")}
    try:
        with (scratch / "daemon.log").open("wb") as sink:
            process = await anyio.open_process(
                [sys.executable, "-m", "lksup", "run", "--log-format", "json"],
                env=env,
                cwd=ROOT,
                stdout=sink,
                stderr=sink,
            )
        daemon = Daemon(process, scratch, env)
        try:
            await daemon.connected(timeout=30)
            yield daemon
        finally:
            with anyio.CancelScope(shield=True):
                await _stop(process)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
