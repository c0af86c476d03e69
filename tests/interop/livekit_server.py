"""The real livekit-server, built from its Go module by scripts/livekit-server.sh and started
on loopback with free ports for a test.

Facts about v1.13.5 this relies on (checked when the script was written): ``GET /`` answers
200 once it serves; it exits 0 even when startup fails (a busy port), printing the error on
stdout, so an early exit of any kind is a failure here; a SIGTERM in the first ~100 ms after
it is ready can be lost, so stopping escalates (SIGTERM, again, then SIGKILL).

Several servers form one deployment (LiveKit's distributed mode) when they share a Redis:
``redis="HOST:PORT"`` (the ``--redis-host`` flag). Each node then needs its own HTTP port and
UDP port (TCP ICE stays off: ``--rtc.tcp_port 0``) and ``--node-ip 127.0.0.1``, so the
nodes advertise loopback to each other and to clients. A node restarted with the same ports
and Redis comes back as a new node (a new ``ND_`` id) of the same deployment.
"""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import httpx

from tests.conftest import eventually, script_tool, stop_process
from tests.conftest import free_port as shared_free_port

API_KEY = "devkey"
API_SECRET = "interop-secret-0123456789abcdef0123456789"


def server_binary() -> Path:
    """The built server; skips the test locally without Go, fails in CI."""
    return script_tool("livekit-server.sh", "building livekit-server failed")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A free port on every interface (the server binds its media ports there)."""
    return shared_free_port(kind, host="0.0.0.0")


@dataclass
class RealServer:
    process: anyio.abc.Process
    port: int
    log: Path
    udp_port: int = 0
    redis: str | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def node_id(self) -> str:
        """The ``ND_`` id this run of the server announced (a restart announces a new one)."""
        found = ""
        for line in self.log.read_text(errors="replace").splitlines():
            if "\tstarting LiveKit server\t" in line:
                found = json.loads(line.rsplit("\t", 1)[1]).get("nodeID", "")
        return found


async def _wait_ready(server: RealServer, timeout: float) -> None:
    async with httpx.AsyncClient() as client:

        async def answers() -> bool:  # before it serves, the server tells nothing: probe it
            if server.process.returncode is not None:
                raise RuntimeError(
                    f"livekit-server exited ({server.process.returncode}):\n"
                    + server.log.read_text()[-3000:]
                )
            try:
                response = await client.get(server.http_url + "/", timeout=1.0)
            except httpx.TransportError:
                return False
            return response.status_code == 200

        await eventually(answers, timeout=timeout)


async def kill(server: RealServer) -> None:
    """SIGKILL: the server vanishes without closing anything (workers see 1006)."""
    if server.process.returncode is None:
        server.process.send_signal(signal.SIGKILL)
    await server.process.wait()


async def stop(server: RealServer) -> None:
    # a first SIGTERM right after start-up can be lost: repeat it, then kill
    steps = ((signal.SIGTERM, 1.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0))
    await stop_process(server.process, steps)


@asynccontextmanager
async def real_livekit_server(
    tmp_path: Path,
    *,
    port: int | None = None,
    target_load: float | None = None,
    udp_port: int | None = None,
    redis: str | None = None,
) -> AsyncIterator[RealServer]:
    """The server on loopback until the block ends.

    Args:
        tmp_path: Where its log goes (``livekit-server-PORT.log``; a restart on the same port
            appends to it).
        port: Its HTTP port (WebSocket signalling, ``/agent``, Twirp); free when None.
        target_load: ``agents.target_load``: above this load a worker gets no job.
        udp_port: Its WebRTC UDP port; free when None.
        redis: ``HOST:PORT`` of a Redis shared with other nodes (distributed mode).
    """
    binary = server_binary()
    port = port or free_port()
    udp_port = udp_port or free_port(socket.SOCK_DGRAM)
    log = tmp_path / f"livekit-server-{port}.log"
    args = [
        str(binary),
        "--dev",
        "--bind",
        "127.0.0.1",
        "--keys",
        f"{API_KEY}: {API_SECRET}",
        "--port",
        str(port),
        "--rtc.tcp_port",
        "0",
        "--udp-port",
        str(udp_port),
    ]
    if target_load is not None:
        args += ["--agents.target_load", str(target_load)]
    if redis is not None:
        args += ["--redis-host", redis, "--node-ip", "127.0.0.1"]
    with log.open("ab") as sink:
        process = await anyio.open_process(args, stdout=sink, stderr=sink)
    server = RealServer(process, port, log, udp_port, redis)
    try:
        await _wait_ready(server, timeout=30)
        yield server
    finally:
        with anyio.CancelScope(shield=True):
            await stop(server)
