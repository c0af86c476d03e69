"""A raw protobuf worker client and a running dev server, for the devserver tests."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import jwt
import pytest
from livekit.protocol import agent, models
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError

from lksup.devserver import DevServer

KEY = "devkey"
SECRET = "0123456789abcdef0123456789abcdef-secret"
OTHER_KEY = "otherkey"
OTHER_SECRET = "fedcba9876543210fedcba9876543210-other"
KEYS = {KEY: SECRET, OTHER_KEY: OTHER_SECRET}
#: Every wait in these tests is a handshake bounded by this.
WAIT = 5.0


def token(
    video: dict[str, Any] | None,
    *,
    key: str = KEY,
    secret: str = SECRET,
    ttl: int = 600,
    **claims: Any,
) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"iss": key, "sub": "", "nbf": now, "exp": now + ttl}
    if video is not None:
        payload["video"] = video
    payload.update(claims)
    return jwt.encode(
        {k: v for k, v in payload.items() if v is not None}, secret, algorithm="HS256"
    )


def worker_token(**kwargs: Any) -> str:
    return token({"agent": True}, **kwargs)


def http_url(server: DevServer) -> str:
    return server.url.replace("ws://", "http://")


@asynccontextmanager
async def running_server(**options: Any) -> AsyncIterator[DevServer]:
    options.setdefault("port", 0)
    options.setdefault("claim_delay", 0.0)
    server = DevServer(KEYS, **options)
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


class Worker:
    """One raw worker connection speaking protobuf (binary frames)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.worker_id = ""
        self._ping = 0

    async def send(self, message: agent.WorkerMessage) -> None:
        await self.ws.send(message.SerializeToString())

    async def recv(self) -> agent.ServerMessage:
        with anyio.fail_after(WAIT):
            data = await self.ws.recv()
        assert isinstance(data, bytes), data
        return agent.ServerMessage.FromString(data)

    async def expect(self, kind: str) -> agent.ServerMessage:
        message = await self.recv()
        assert message.WhichOneof("message") == kind, message
        return message

    async def register(
        self,
        agent_name: str = "",
        *,
        job_type: int = agent.JT_ROOM,
        deployment: str = "",
        permissions: models.ParticipantPermission | None = None,
        namespace: str | None = None,
    ) -> agent.RegisterWorkerResponse:
        message = agent.WorkerMessage()
        message.register.agent_name = agent_name
        message.register.type = job_type  # type: ignore[assignment]
        message.register.deployment = deployment
        message.register.version = "test"
        if namespace is not None:
            message.register.namespace = namespace
        if permissions is not None:
            message.register.allowed_permissions.CopyFrom(permissions)
        await self.send(message)
        response = (await self.expect("register")).register
        self.worker_id = response.worker_id
        await self.sync()  # the worker joins its pool after the response went out
        return response

    async def sync(self) -> list[agent.ServerMessage]:
        """Ping and read up to the pong: the server has handled everything sent before.

        Returns what arrived before the pong.
        """
        self._ping += 1
        message = agent.WorkerMessage()
        message.ping.timestamp = self._ping
        await self.send(message)
        before: list[agent.ServerMessage] = []
        while True:
            reply = await self.recv()
            if reply.WhichOneof("message") == "pong" and reply.pong.last_timestamp == self._ping:
                return before
            before.append(reply)

    async def update(self, load: float, status: int | None = None) -> None:
        message = agent.WorkerMessage()
        message.update_worker.load = load
        if status is not None:
            message.update_worker.status = status  # type: ignore[assignment]
        await self.send(message)
        assert await self.sync() == []

    async def answer(
        self,
        job_id: str,
        *,
        available: bool = True,
        terminate: bool = False,
        identity: str = "",
        name: str = "",
        metadata: str = "",
        attributes: dict[str, str] | None = None,
    ) -> None:
        message = agent.WorkerMessage()
        av = message.availability
        av.job_id = job_id
        av.available = available
        av.terminate = terminate
        av.participant_identity = identity
        av.participant_name = name
        av.participant_metadata = metadata
        av.participant_attributes.update(attributes or {})
        await self.send(message)

    async def update_job(self, job_id: str, status: int, error: str = "") -> None:
        message = agent.WorkerMessage()
        message.update_job.job_id = job_id
        message.update_job.status = status  # type: ignore[assignment]
        message.update_job.error = error
        await self.send(message)

    async def expect_dropped(self) -> None:
        """The server closes the TCP connection without a close frame (code 1006)."""
        with pytest.raises(ConnectionClosedError) as info, anyio.fail_after(WAIT):
            await self.ws.recv()
        assert info.value.rcvd is None
        assert self.ws.protocol.close_code == 1006


@asynccontextmanager
async def worker(
    server: DevServer, *, auth: str | None = None, path: str = "/agent"
) -> AsyncIterator[Worker]:
    headers = {"Authorization": f"Bearer {auth or worker_token()}"}
    async with connect(
        server.url + path, additional_headers=headers, ping_interval=None, open_timeout=WAIT
    ) as ws:
        yield Worker(ws)
