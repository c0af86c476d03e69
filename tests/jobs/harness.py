"""Drive a real job process from a test, playing the supervisor's side of the socket.

``spawn(cwd)`` starts ``python -m lksup.jobs.child`` exactly as the pool does (own session,
socketpair end passed as ``--ipc-fd``, stdout/stderr piped and always drained) and yields a
``Child``. Every wait is a handshake on a frame or on the process's exit, under ``fail_after``.
On the way out the socket is closed and the process is killed if it is still running, then
reaped, so no test leaves a child behind.
"""

from __future__ import annotations

import socket
import subprocess
import textwrap
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.abc
from anyio.abc import UNIXSocketStream
from anyio.streams.text import TextReceiveStream
from livekit.protocol import agent

from lksup.jobs import ipc
from lksup.jobs.framing import FrameDecoder

WAIT = 10.0
M = TypeVar("M", bound=ipc.ChildMessage)


def write_agent(directory: Path, source: str, name: str = "agent") -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


def job_wire(job_id: str = "AJ_1", room: str = "room-1", **fields: object) -> bytes:
    return agent.Job(id=job_id, room={"name": room, "sid": "RM_1"}, **fields).SerializeToString()  # type: ignore[arg-type]


def initialize(**overrides: object) -> ipc.Initialize:
    values: dict[str, object] = {
        "agent_name": "support",
        "entrypoint": "agent:entrypoint",
        "shutdown_grace": 5.0,
    }
    values.update(overrides)
    return ipc.Initialize(**values)  # type: ignore[arg-type]


class Child:
    """The test's end of one job process."""

    def __init__(self, process: anyio.abc.Process, stream: UNIXSocketStream) -> None:
        self.process = process
        self.stream = stream
        self.decoder = FrameDecoder()
        self.messages: deque[ipc.ChildMessage] = deque()
        self.logs: list[ipc.LogRecord] = []
        self.outcomes: list[ipc.JobOutcome] = []
        self.stdout = ""
        self.stderr = ""
        self.output_closed = anyio.Event()

    async def send(self, msg: ipc.ParentMessage) -> None:
        await self.stream.send(ipc.encode(msg))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send(data)

    async def _receive(self) -> None:
        """Read until at least one more frame has arrived."""
        while True:
            try:
                data = await self.stream.receive()
            except anyio.EndOfStream:
                raise AssertionError(
                    f"the child closed the socket; stderr:\n{self.stderr}"
                ) from None
            payloads = self.decoder.feed(data)
            for payload in payloads:
                msg = ipc.decode(payload)
                if isinstance(msg, ipc.LogRecord):
                    self.logs.append(msg)
                elif isinstance(msg, ipc.JobOutcome):  # as the supervisor: reported at once
                    self.outcomes.append(msg)
                    await self.send(ipc.OutcomeReported(job_id=msg.job_id))
                else:
                    self.messages.append(msg)  # type: ignore[arg-type]
            if payloads:
                return

    async def next(self) -> ipc.ChildMessage:
        """The next message that is not a log record."""
        with anyio.fail_after(WAIT):
            while not self.messages:
                await self._receive()
        return self.messages.popleft()

    async def expect(self, cls: type[M]) -> M:
        msg = await self.next()
        assert isinstance(msg, cls), f"expected {cls.__name__}, got {msg!r}"
        return msg

    async def ready(self, init: ipc.Initialize | None = None) -> ipc.Ready:
        await self.send(init or initialize())
        ready = await self.expect(ipc.Ready)
        assert ready.error == "", ready.error
        return ready

    async def wait_log(self, predicate: Callable[[ipc.LogRecord], bool]) -> ipc.LogRecord:
        with anyio.fail_after(WAIT):
            seen = 0
            while True:
                for record in self.logs[seen:]:
                    if predicate(record):
                        return record
                seen = len(self.logs)
                await self._receive()

    def log_messages(self) -> list[str]:
        return [record.message for record in self.logs]

    async def collect_until_eof(self) -> None:
        """Read every remaining frame until the child closes its end (or the test closed ours)."""
        with anyio.fail_after(WAIT):
            while True:
                try:
                    await self._receive()
                except (AssertionError, anyio.ClosedResourceError):
                    return

    async def wait_exit(self, timeout: float = WAIT) -> int:
        """The exit status, once the process has exited and its frames and output are all read."""
        with anyio.fail_after(timeout):
            await self.collect_until_eof()
            status = await self.process.wait()
            await self.output_closed.wait()
        return status


async def _drain(stream: anyio.abc.ByteReceiveStream | None, sink: Callable[[str], None]) -> None:
    if stream is None:
        return
    async for text in TextReceiveStream(stream, errors="replace"):
        sink(text)


#: The interpreter ``spawn`` starts job processes with ("": this one); a test may change it.
PYTHON = ""


@asynccontextmanager
async def spawn(
    cwd: Path, *, env: Mapping[str, str] | None = None, python: str | None = None
) -> AsyncIterator[Child]:
    parent, child_end = socket.socketpair()
    try:
        fd = child_end.fileno()
        interpreter = PYTHON if python is None else python
        process = await anyio.open_process(
            ipc.launch_command(interpreter, "lksup.jobs.child", "--ipc-fd", str(fd)),
            pass_fds=[fd],
            start_new_session=True,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except BaseException:
        parent.close()
        raise
    finally:
        child_end.close()
    async with process:
        stream = await UNIXSocketStream.from_socket(parent)
        child = Child(process, stream)

        def out(text: str) -> None:
            child.stdout += text

        def err(text: str) -> None:
            child.stderr += text

        async def drain_all() -> None:
            async with anyio.create_task_group() as drains:
                drains.start_soon(_drain, process.stdout, out)
                drains.start_soon(_drain, process.stderr, err)
            child.output_closed.set()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(drain_all)
                try:
                    yield child
                finally:
                    with anyio.CancelScope(shield=True):
                        await stream.aclose()
                        if process.returncode is None:
                            process.kill()
                        await process.wait()
        finally:
            await stream.aclose()
