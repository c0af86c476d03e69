"""systemd notifications: the datagrams (``Notifier``) and what the daemon says when
(``SystemdReporter``), received on a datagram socket of the test's own."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import anyio
import pytest

from lksup.daemon.notify import Notifier, SystemdReporter
from lksup.daemon.supervisor import Supervisor


def test_notifications_reach_the_socket() -> None:
    path = Path(tempfile.mkdtemp(dir="/tmp")) / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        notifier.ready("3 agents registered")
        notifier.extend_timeout(30)
        assert server.recv(1024) == b"READY=1\nSTATUS=3 agents registered"
        assert server.recv(1024) == b"EXTEND_TIMEOUT_USEC=30000000"
    path.unlink()
    path.parent.rmdir()


def test_without_notify_socket_nothing_happens() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.ready("x")  # no error


def test_a_missing_socket_is_ignored() -> None:
    Notifier({"NOTIFY_SOCKET": "/nonexistent/lksup-notify"}).stopping("draining")


# --- SystemdReporter: what the daemon says, and when (in-process, a short interval) ----------


@dataclass
class FakeSlot:
    name: str
    state: str
    worker_id: str = ""
    override_drained: bool = False

    @property
    def runtime(self) -> SimpleNamespace:
        return SimpleNamespace(registered=bool(self.worker_id))


class FakeSupervisor:
    """The parts of ``Supervisor`` the reporter reads."""

    def __init__(self, *slots: FakeSlot, jobs: int = 0) -> None:
        self.slots = {slot.name: slot for slot in slots}
        self.jobs = jobs
        self.changed = anyio.Event()

    def change_event(self) -> anyio.Event:
        return self.changed

    def changes(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    def agent_state(self, slot: FakeSlot) -> str:
        return slot.state

    def running_jobs(self) -> int:
        return self.jobs


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    path = Path(tempfile.mkdtemp(dir="/tmp")) / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        yield sock
    path.unlink()
    path.parent.rmdir()


async def _next(sock: socket.socket) -> str:
    with anyio.fail_after(5):
        await anyio.wait_readable(sock)
    return sock.recv(4096).decode()


def _reporter(sock: socket.socket, draining: list[bool], interval: float = 5.0) -> SystemdReporter:
    return SystemdReporter(
        Notifier({"NOTIFY_SOCKET": sock.getsockname()}),
        draining=lambda: draining[0],
        status_interval=interval,
    )


@pytest.mark.anyio
async def test_status_every_interval_and_more_time_while_draining(
    receiver: socket.socket,
) -> None:
    draining = [False]
    reporter = _reporter(receiver, draining, interval=0.02)
    supervisor = FakeSupervisor(
        FakeSlot("a", "running"), FakeSlot("b", "running"), FakeSlot("c", "backoff"), jobs=2
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(reporter.report_status, cast(Supervisor, supervisor))
        for _ in range(2):
            assert await _next(receiver) == "STATUS=3 agents (1 backoff, 2 running); 2 job(s)"
        draining[0] = True
        supervisor.jobs = 1
        assert await _next(receiver) == "STATUS=3 agents (1 backoff, 2 running); 1 job(s)"
        assert await _next(receiver) == "EXTEND_TIMEOUT_USEC=60000"  # three intervals
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_drain_says_stopping_and_asks_for_its_timeout(receiver: socket.socket) -> None:
    reporter = _reporter(receiver, [True])
    reporter.drain_started(3, 60.0)
    assert await _next(receiver) == "STOPPING=1\nSTATUS=draining 3 job(s)"
    assert await _next(receiver) == "EXTEND_TIMEOUT_USEC=90000000"  # the drain's, and a margin
    reporter.drain_started(0, 0.0)  # no deadline: nothing to extend
    assert await _next(receiver) == "STOPPING=1\nSTATUS=draining 0 job(s)"
    with pytest.raises(BlockingIOError):
        receiver.recv(4096)


@pytest.mark.anyio
async def test_ready_once_every_agent_registered_or_drained(receiver: socket.socket) -> None:
    alpha, beta = FakeSlot("alpha", "starting"), FakeSlot("beta", "running", worker_id="W2")
    supervisor = FakeSupervisor(alpha, beta, FakeSlot("gamma", "drained", override_drained=True))
    async with anyio.create_task_group() as tg:
        tg.start_soon(_reporter(receiver, [False]).announce_ready, cast(Supervisor, supervisor))
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(BlockingIOError):  # alpha is not registered yet
            receiver.recv(4096)
        alpha.worker_id = "W1"
        supervisor.changes()
        assert await _next(receiver) == "READY=1\nSTATUS=2 agent(s) registered"


@pytest.mark.anyio
async def test_a_stopping_daemon_never_says_ready(receiver: socket.socket) -> None:
    with anyio.fail_after(5):
        await _reporter(receiver, [True]).announce_ready(cast(Supervisor, FakeSupervisor()))
    with pytest.raises(BlockingIOError):
        receiver.recv(4096)
