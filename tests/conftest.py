from __future__ import annotations

import inspect
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, overload

import anyio
import anyio.abc
import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent

T = TypeVar("T")


def script_tool(script: str, failure: str) -> Path:
    """The path ``scripts/SCRIPT`` prints (a tool it built or found); its exit 3 (this machine
    lacks what it needs) skips the test locally and fails it in CI, as ``scripts/test.sh``
    does; any other failure fails the test with ``failure`` and the script's output."""
    result = subprocess.run(
        [str(ROOT / "scripts" / script)], capture_output=True, text=True, check=False
    )
    if result.returncode == 3:
        message = result.stderr.strip() or f"{script}: unavailable"
        if os.environ.get("CI"):
            pytest.fail(f"required in CI: {message}")
        pytest.skip(message)
    if result.returncode != 0:
        pytest.fail(f"{failure}:\n{result.stderr[-2000:]}")
    return Path(result.stdout.strip())


async def stop_process(
    process: anyio.abc.Process, steps: tuple[tuple[signal.Signals, float], ...]
) -> None:
    """Send each signal in turn until ``process`` exits (waiting its grace after each), then
    release it; shielded, so a cancelled test still leaves nothing behind."""
    with anyio.CancelScope(shield=True):
        for sig, grace in steps:
            if process.returncode is not None:
                break
            process.send_signal(sig)
            with anyio.move_on_after(grace):
                await process.wait()
        await process.aclose()


@overload
async def eventually(
    check: Callable[[], Awaitable[T | None]], *, timeout: float, interval: float = ...
) -> T: ...
@overload
async def eventually(
    check: Callable[[], T | None], *, timeout: float, interval: float = ...
) -> T: ...
async def eventually(check: Callable[[], Any], *, timeout: float, interval: float = 0.05) -> Any:
    """The first truthy answer of ``check`` (sync or async), asked every ``interval`` seconds
    until ``timeout`` (then ``TimeoutError``).

    Only for a condition nothing announces, so that only looking again can see it: a pid
    gone, a file a child writes, a sampled measurement, the process table. Anything the code
    under test reports (a READY frame, a daemon event or log record) is waited on instead.
    """
    with anyio.fail_after(timeout):
        while True:
            answer = check()
            value = await answer if inspect.isawaitable(answer) else answer
            if value:
                return value
            await anyio.sleep(interval)


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (TCP unless ``kind`` says otherwise)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(autouse=True)
def no_leaked_children() -> Iterator[None]:
    """Every test leaves no child process behind."""
    yield
    children = psutil.Process(os.getpid()).children(recursive=True)
    alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"child processes left behind: {[c.pid for c in alive]}"


_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status[:] = [int(exitstatus)]


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process as lksup's job processes end, once it has joined a room itself.

    Some tests join rooms as a participant in this process (``livekit.rtc``), which starts
    livekit-rtc's native runtime. Its threads may call into Python while the interpreter is
    being finalised, which aborts the process (SIGABRT) after every test passed. Job processes
    avoid that by not finalising (``lksup.jobs.channel.exit_process``); so does this process,
    last of all, with pytest's exit status, once its report is written.
    """
    ffi = sys.modules.get("livekit.rtc._ffi_client")
    if ffi is None or getattr(ffi.FfiClient, "_instance", None) is None or not _exit_status:
        return
    from lksup.jobs.channel import exit_process

    exit_process(_exit_status[0])
