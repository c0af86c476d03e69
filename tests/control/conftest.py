from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from lksup.control.api import (
    AgentStatus,
    ApplyRequest,
    JobRow,
    JournalQuery,
    SimulateRequest,
    StatusList,
)
from lksup.control.errors import ControlError
from lksup.control.server import ControlServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory under /tmp: sun_path holds about 108 bytes, tmp_path is too deep."""
    directory = Path(tempfile.mkdtemp(prefix="lkc", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def socket_path(sock_dir: Path) -> Path:
    """The socket path, in a directory the server has to create."""
    return sock_dir / "run" / "lksup.sock"


class FakeApp:
    """A ControlApp with two agents that records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fleet: dict[str, Any] | None = None
        self.block_drain = False
        self.drain_entered = anyio.Event()
        self.fail_reload = False
        self.agents = [
            AgentStatus(
                name="alpha",
                state="running",
                ready=True,
                registered=True,
                worker_id="AW_1",
                jobs=1,
                idle=2,
                idle_target=2,
                load=0.25,
                threshold=0.7,
                memory_mb=120.5,
                started_at="2025-01-02T03:04:05Z",
                jobs_detail=[
                    JobRow(
                        job_id="AJ_1",
                        room="room-1",
                        pid=4242,
                        state="running",
                        started_at="2025-01-02T03:05:00+00:00",
                        memory_mb=80.0,
                    )
                ],
            ),
            AgentStatus(name="beta", state="backoff", message="exit 1 in prewarm"),
        ]

    def _agent(self, name: str) -> AgentStatus:
        for agent in self.agents:
            if agent.name == name:
                return agent
        raise ControlError("not_found", f"no such agent: {name}", 404)

    async def status(self, agent: str | None) -> StatusList:
        self.calls.append(("status", agent))
        items = self.agents if agent is None else [self._agent(agent)]
        return StatusList(items=items)

    async def apply(self, request: ApplyRequest) -> dict[str, Any]:
        self.calls.append(("apply", request))
        if not request.dry_run:
            self.fleet = request.fleet
        return {"kind": "Plan", "actions": [{"agent": "alpha", "action": "create"}]}

    async def applied(self) -> dict[str, Any] | None:
        self.calls.append(("applied", None))
        return self.fleet

    async def drain(self, agent: str | None) -> dict[str, Any]:
        self.calls.append(("drain", agent))
        if agent is not None:
            self._agent(agent)
        if self.block_drain:
            self.drain_entered.set()
            await anyio.sleep_forever()
        return {"draining": [agent] if agent else [a.name for a in self.agents]}

    async def undrain(self, agent: str) -> dict[str, Any]:
        self.calls.append(("undrain", agent))
        self._agent(agent)
        return {"undrained": agent}

    async def reload(self, agent: str | None) -> dict[str, Any]:
        self.calls.append(("reload", agent))
        if self.fail_reload:
            raise RuntimeError("boom")
        return {"reloading": agent}

    async def simulate(self, agent: str, request: SimulateRequest) -> dict[str, Any]:
        self.calls.append(("simulate", (agent, request)))
        self._agent(agent)
        return {"job_id": "AJ_sim", "room": request.room, "participant": request.participant}

    async def events(self, query: JournalQuery) -> dict[str, Any]:
        self.calls.append(("events", query))
        return {"items": [], "last": query.after}

    async def logs(self, query: JournalQuery) -> dict[str, Any]:
        self.calls.append(("logs", query))
        return {"items": [], "last": query.after}


@pytest.fixture
def mute_socket(socket_path: Path) -> Iterator[Path]:
    """A socket that takes connections into its backlog but never accepts or answers them."""
    socket_path.parent.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(socket_path))
        listener.listen(4)
        yield socket_path


@pytest.fixture
def app() -> FakeApp:
    return FakeApp()


@asynccontextmanager
async def serving(path: Path, app: FakeApp, **options: Any) -> AsyncIterator[ControlServer]:
    """Run a ControlServer until the block ends."""
    server = ControlServer(path, app, **options)
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(5):
            await tg.start(server.run)
        yield server
        tg.cancel_scope.cancel()
