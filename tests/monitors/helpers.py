"""A real child process that allocates memory on request, for the sampling and monitor tests.

The child reads one number per line from stdin, allocates that many MB (touched, so they are
resident and count in its PSS) and answers ``allocated`` on stdout: every wait is that
handshake, under ``fail_after``. Closing stdin makes it exit; on the way out the process is
killed if it is still running and always reaped, so no test leaves a child behind.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

WAIT = 10.0

CHILD = """\
import sys
held = []
for line in sys.stdin:
    held.append(b"\\x01" * (int(line) * 1024 * 1024))
    print("allocated", flush=True)
"""


class Allocator:
    """The test's end of an allocating child."""

    def __init__(self, process: anyio.abc.Process) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self.process = process
        self.stdin = process.stdin
        self.stdout = BufferedByteReceiveStream(process.stdout)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def allocate(self, mb: int) -> None:
        """Make the child hold ``mb`` more MB; returns once it has."""
        with anyio.fail_after(WAIT):
            await self.stdin.send(f"{mb}\n".encode())
            line = await self.stdout.receive_until(b"\n", 100)
        assert line == b"allocated"


@asynccontextmanager
async def allocating_child() -> AsyncIterator[Allocator]:
    process = await anyio.open_process(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None
    )
    try:
        yield Allocator(process)
    finally:
        with anyio.CancelScope(shield=True):
            if process.stdin is not None:
                await process.stdin.aclose()  # EOF: the child exits
            with anyio.move_on_after(WAIT):
                await process.wait()
            if process.returncode is None:
                process.kill()
            await process.aclose()
