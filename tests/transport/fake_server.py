"""A scriptable stand-in for a LiveKit server, for session tests that need one server
misbehaving in a precise way (the dev server and the real server are tested elsewhere).

Each accepted connection is handed to the test as a ``Peer``: the test reads the worker's
messages and writes server frames, or misbehaves (garbage, text, silence, abrupt drop).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import jwt
from livekit.protocol import agent as pb
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

SECRET = "fake-server-secret-0123456789abcdef"


@dataclass
class Peer:
    connection: ServerConnection
    token_claims: dict[str, object] = field(default_factory=dict)

    async def next(self, kind: str | None = None, timeout: float = 5.0) -> pb.WorkerMessage:
        """The next worker message (of ``kind``, skipping others, when given)."""
        with anyio.fail_after(timeout):
            while True:
                data = await self.connection.recv()
                assert isinstance(data, bytes), "workers must send binary frames"
                message = pb.WorkerMessage()
                message.ParseFromString(data)
                if kind is None or message.WhichOneof("message") == kind:
                    return message

    async def send(self, message: pb.ServerMessage) -> None:
        await self.connection.send(message.SerializeToString())

    async def register(self, worker_id: str = "AW_fake") -> pb.RegisterWorkerRequest:
        request = (await self.next("register")).register
        reply = pb.ServerMessage()
        reply.register.worker_id = worker_id
        reply.register.server_info.version = "fake"
        await self.send(reply)
        return request

    def drop(self) -> None:
        """Vanish without a close frame (what the real server does)."""
        self.connection.transport.abort()


@dataclass
class FakeServer:
    server: Server
    peers: anyio.abc.ObjectReceiveStream[Peer]
    reject_status: int | None = None

    @property
    def url(self) -> str:
        host, port = next(iter(self.server.sockets)).getsockname()[:2]
        return f"ws://{host}:{port}"

    async def accept(self, timeout: float = 5.0) -> Peer:
        with anyio.fail_after(timeout):
            return await self.peers.receive()


@asynccontextmanager
async def fake_server(*, reject_status: int | None = None) -> AsyncIterator[FakeServer]:
    send, receive = anyio.create_memory_object_stream[Peer](16)
    state: dict[str, int | None] = {"reject": reject_status}

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        if request.path != "/agent":
            return connection.respond(404, "not found\n")
        if state["reject"] is not None:
            return connection.respond(state["reject"], "rejected\n")
        auth = request.headers.get("Authorization", "")
        claims = jwt.decode(auth.removeprefix("Bearer "), SECRET, algorithms=["HS256"])
        connection.token_claims = claims  # type: ignore[attr-defined]
        return None

    async def handler(connection: ServerConnection) -> None:
        peer = Peer(connection, getattr(connection, "token_claims", {}))
        await send.send(peer)
        await connection.wait_closed()

    async with serve(
        handler, "127.0.0.1", 0, process_request=process_request, compression=None
    ) as server:
        fake = FakeServer(server, receive, reject_status)
        try:
            yield fake
        finally:
            server.close(close_connections=True)
            send.close()
            receive.close()
