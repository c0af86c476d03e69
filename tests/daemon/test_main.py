"""The daemon's own duties around the supervisor: systemd notifications, its exit."""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from lksup.daemon.app import DaemonApp
from lksup.daemon.main import Daemon, DaemonSettings
from lksup.devserver.server import DevServer
from lksup.errors import LksupError
from tests.conftest import free_port
from tests.daemon.test_supervisor import KEY, QUICK, SECRET, fleet, supervised

pytestmark = [pytest.mark.anyio, pytest.mark.process]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextlib.contextmanager
def notified_daemon(tmp_path: Path, **settings: Any) -> Iterator[tuple[Daemon, socket.socket]]:
    """A daemon (not started) whose systemd notifications ``receiver`` gets (non-blocking)."""
    notify = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(notify))
        receiver.setblocking(False)
        yield (
            Daemon(
                DaemonSettings(
                    socket=tmp_path / "ctl.sock",
                    state_dir=tmp_path / "state",
                    environ={"NOTIFY_SOCKET": str(notify)},
                    **settings,
                )
            ),
            receiver,
        )


async def test_ready_follows_a_restarted_agent_and_waits_for_it(tmp_path: Path) -> None:
    """Regression: READY=1 waited on the first worker of an agent; once that worker gave up
    and a restart registered instead, READY=1 never came (systemd killed the service)."""
    port = free_port()
    with notified_daemon(tmp_path) as (daemon, receiver):
        async with supervised(tmp_path, restart_backoff=QUICK) as (sup, _server):
            await sup.apply(
                fleet(
                    tmp_path,
                    {"alpha": f"max_retry: 1\nlivekit: {{url: 'ws://127.0.0.1:{port}'}}\n"},
                )
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(daemon.systemd.announce_ready, sup)
                with anyio.fail_after(10):  # its first worker gave up: not ready
                    await sup.wait_until(lambda: sup.slots["alpha"].restarts >= 1)
                with pytest.raises(BlockingIOError):
                    receiver.recv(4096)
                late = DevServer({KEY: SECRET}, port=port, claim_delay=0.0)
                await tg.start(late.run)
                with anyio.fail_after(30):  # a restart registers: now it is
                    await anyio.wait_readable(receiver)
                assert receiver.recv(4096).decode().startswith("READY=1")
                await sup.stop_all()
                tg.cancel_scope.cancel()


async def test_a_failure_once_running_says_stopped_because(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: an error after start (EMFILE in a subsystem) was reported "cannot start"."""

    async def broken(self: DaemonApp) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(DaemonApp, "observe_forever", broken)
    daemon = Daemon(DaemonSettings(socket=tmp_path / "ctl.sock", state_dir=tmp_path / "state"))
    with (
        anyio.fail_after(20),
        pytest.raises(LksupError, match=r"^stopped because \[Errno 24\] Too many open files$"),
    ):
        await daemon.run()
    (record,) = [r for r in caplog.records if r.getMessage().startswith("lksup stopped")]
    assert record.exc_info is not None  # the traceback is in the log


async def test_systemd_notifications(tmp_path: Path) -> None:
    """READY=1, then STATUS= every ``status_interval`` (a drain's notifications: the e2e test
    ``test_dev_fleet_runs_takes_jobs_and_drains_on_sigterm``)."""
    with notified_daemon(tmp_path, status_interval=0.05) as (daemon, receiver):

        async def received() -> str:
            await anyio.wait_readable(receiver)
            return receiver.recv(4096).decode()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(daemon.run)
                assert await received() == "READY=1\nSTATUS=0 agent(s) registered"
                for _ in range(2):
                    assert await received() == "STATUS=0 agents (); 0 job(s)"
                tg.cancel_scope.cancel()
