"""A throwaway redis-server on a free loopback port, for livekit-server nodes to share.

The binary comes from scripts/redis-server.sh (Debian's package, installed when missing and
possible). The server keeps nothing: no RDB snapshots, no append-only file, its working
directory a temporary one; it lives as long as the block that started it.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc

from tests.conftest import eventually, free_port, script_tool, stop_process


def redis_binary() -> Path:
    """The redis-server binary; skips the test locally when there is none, fails in CI."""
    return script_tool("redis-server.sh", "installing redis-server failed")


@dataclass
class RedisServer:
    process: anyio.abc.Process
    port: int
    log: Path

    @property
    def address(self) -> str:
        """``HOST:PORT``, as livekit-server's ``--redis-host`` takes it."""
        return f"127.0.0.1:{self.port}"


async def _ping(port: int) -> bool:
    """Whether redis answers PING on ``port`` (the inline command; the reply is ``+PONG``)."""
    try:
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"PING\r\n")
            reply = b""
            with anyio.move_on_after(1):
                while not reply.endswith(b"\r\n"):
                    reply += await stream.receive()
            return reply == b"+PONG\r\n"
    except (OSError, anyio.EndOfStream):
        return False


async def _wait_ready(server: RedisServer, timeout: float) -> None:

    async def answers() -> bool:  # before it serves, the server tells nothing: probe it
        if server.process.returncode is not None:
            raise RuntimeError(
                f"redis-server exited ({server.process.returncode}):\n"
                + server.log.read_text()[-3000:]
            )
        return await _ping(server.port)

    await eventually(answers, timeout=timeout)


@asynccontextmanager
async def real_redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """redis-server on 127.0.0.1 and a free port, without persistence, until the block ends."""
    binary = redis_binary()
    port = free_port()
    workdir = tmp_path / f"redis-{port}"
    workdir.mkdir()
    log = workdir / "redis.log"
    args = [
        str(binary),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--protected-mode",
        "yes",
    ]
    with log.open("wb") as sink:
        process = await anyio.open_process(args, stdout=sink, stderr=sink, cwd=workdir)
    server = RedisServer(process, port, log)
    try:
        await _wait_ready(server, timeout=30)
        yield server
    finally:
        await stop_process(process, ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)))
