"""Shared pieces of the interop suites: a scriptable test agent driving ``AgentSession``, a
recorder of the frames a session exchanges, and the servers under test behind one interface."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
from google.protobuf import json_format
from livekit.protocol import agent as pb

from lksup.protocol.events import Accept, Answer, JobAssigned, OfferReceived
from lksup.protocol.machine import Options
from lksup.transport import session as session_module
from lksup.transport.dispatch import ApiSettings, create_dispatch
from lksup.transport.session import AgentSession, Credentials, Timeouts
from lksup.transport.websocket import WebSocket

_rooms = itertools.count(1)


def unique_room(prefix: str = "interop") -> str:
    return f"{prefix}-{next(_rooms)}"


@dataclass
class ServerUnderTest:
    kind: str
    url: str
    api_key: str
    api_secret: str
    restart: Callable[[], Awaitable[None]] | None = None
    stop: Callable[[], Awaitable[None]] | None = None

    @property
    def api(self) -> ApiSettings:
        return ApiSettings(self.url.replace("ws://", "http://"), self.api_key, self.api_secret)


class ScriptedAgent:
    """Answers offers with ``answer`` (accept by default) and runs jobs until told to end them."""

    def __init__(self) -> None:
        self.answer: Callable[[OfferReceived], Answer] = lambda offer: Accept(
            identity=f"lksup-{offer.job.id}", name="Interop"
        )
        send, self.offers = anyio.create_memory_object_stream[OfferReceived](100)
        self._offers_in = send
        send_a, self.assignments = anyio.create_memory_object_stream[JobAssigned](100)
        self._assignments_in = send_a
        self.finish: dict[str, anyio.Event] = {}
        self.terminated: list[str] = []
        self.released: list[str] = []
        self.error: dict[str, str] = {}

    async def decide(self, offer: OfferReceived) -> Answer:
        await self._offers_in.send(offer)
        return self.answer(offer)

    async def run_job(self, assignment: JobAssigned, session: AgentSession) -> None:
        job_id = assignment.job.id
        session.job_started(job_id)
        await self._assignments_in.send(assignment)
        await self.finish.setdefault(job_id, anyio.Event()).wait()
        session.job_ended(job_id, error=self.error.get(job_id))

    def terminate(self, job_id: str) -> None:
        self.terminated.append(job_id)
        self.finish.setdefault(job_id, anyio.Event()).set()

    def release(self, job_id: str) -> None:
        self.released.append(job_id)

    def end(self, job_id: str, error: str | None = None) -> None:
        if error is not None:
            self.error[job_id] = error
        self.finish.setdefault(job_id, anyio.Event()).set()

    def close(self) -> None:
        for event in self.finish.values():
            event.set()
        for stream in (self._offers_in, self.offers, self._assignments_in, self.assignments):
            stream.close()


@dataclass
class Trace:
    """Messages in both directions, as (direction, oneof kind, message as dict)."""

    entries: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def masked(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [(d, k, _mask(m)) for d, k, m in self.entries]


_MASKED_KEYS = {
    "workerId",
    "worker_id",
    "id",
    "jobId",
    "job_id",
    "jobIds",
    "sid",
    "dispatchId",
    "token",
    "startedAt",
    "updatedAt",
    "creationTime",
    "creationTimeMs",
    "nodeId",
    "version",
    "region",
    "timestamp",
    "lastTimestamp",
    "participantIdentity",
    "room",
    "name",
    "load",
    "turnPassword",
}


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: ("*" if k in _MASKED_KEYS and not isinstance(v, dict) else _mask(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def recording(trace: Trace) -> type[WebSocket]:
    class RecordingWebSocket(WebSocket):
        async def send(self, data: bytes) -> None:
            message = pb.WorkerMessage()
            message.ParseFromString(data)
            trace.entries.append(
                ("worker", message.WhichOneof("message") or "", json_format.MessageToDict(message))
            )
            await super().send(data)

        async def recv(self) -> bytes | str:
            data = await super().recv()
            if isinstance(data, bytes):
                message = pb.ServerMessage()
                message.ParseFromString(data)
                trace.entries.append(
                    (
                        "server",
                        message.WhichOneof("message") or "",
                        json_format.MessageToDict(message),
                    )
                )
            return data

    return RecordingWebSocket


@asynccontextmanager
async def agent_session(
    server: ServerUnderTest,
    agent: ScriptedAgent,
    *,
    name: str = "interop-agent",
    trace: Trace | None = None,
    monkeypatch: Any = None,
    **options: Any,
) -> AsyncIterator[AgentSession]:
    if trace is not None:
        monkeypatch.setattr(session_module, "WebSocket", recording(trace))
    options.setdefault("max_retry", 0)
    session = AgentSession(
        Options(agent_name=name, version="0.1.0", **options),
        Credentials(server.url, server.api_key, server.api_secret),
        agent,
        timeouts=Timeouts(open_timeout=5, answer_timeout=2.0),
    )
    async with anyio.create_task_group() as tg:
        await tg.start(session.run)
        try:
            yield session
        finally:
            session.stop()
            agent.close()


async def next_item(stream: anyio.abc.ObjectReceiveStream[Any], timeout: float = 10.0) -> Any:
    with anyio.fail_after(timeout):
        return await stream.receive()


async def dispatch_until_offered(
    server: ServerUnderTest,
    agent: ScriptedAgent,
    agent_name: str,
    *,
    attempts: int = 5,
    offer_timeout: float = 3.0,
) -> tuple[OfferReceived, str, str]:
    """Create a dispatch (a new room each time) until the agent is offered its job.

    A real server may drop a dispatch made right after a worker registered (its agent-name
    cache is refreshed asynchronously): the offer is the handshake, and a missed one is
    retried with a fresh room. Returns (offer, room, dispatch id).
    """
    for _ in range(attempts):
        room = unique_room()
        dispatch = await create_dispatch(server.api, agent_name=agent_name, room=room)
        with anyio.move_on_after(offer_timeout):
            while True:
                offer = await agent.offers.receive()
                if offer.job.room_name == room:
                    return offer, room, dispatch.id
    raise AssertionError(f"no offer for {agent_name!r} after {attempts} dispatches")
