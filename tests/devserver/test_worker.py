"""One worker connection: handshake, what drops the socket, permissions, text frames, trace."""

from __future__ import annotations

import json
from typing import Any

import anyio
import jwt
import pytest
from google.protobuf import json_format
from livekit.protocol import agent, models

from lksup.devserver import model

from .helpers import SECRET, WAIT, Worker, running_server, worker

pytestmark = pytest.mark.anyio


async def test_register_response_and_pool() -> None:
    async with running_server(region="test-region") as server, worker(server) as w:
        ping = agent.WorkerMessage()
        ping.ping.timestamp = 1234  # allowed before registration
        await w.send(ping)
        pong = (await w.expect("pong")).pong
        assert pong.last_timestamp == 1234
        assert pong.timestamp > 1_600_000_000_000
        response = await w.register("agent-a", deployment="prod", namespace="ns")
        assert response.worker_id.startswith("AW_")
        assert len(response.worker_id) == 15
        info = response.server_info
        assert (info.edition, info.version, info.protocol, info.agent_protocol, info.region) == (
            models.ServerInfo.Standard,
            "1.13.5",
            17,
            1,
            "test-region",
        )
        assert info.node_id.startswith("ND_")
        (snapshot,) = server.workers()
        assert (snapshot.id, snapshot.agent_name, snapshot.namespace, snapshot.deployment) == (
            response.worker_id,
            "agent-a",
            "ns",
            "prod",
        )
        assert (snapshot.status, snapshot.load, snapshot.version) == (0, 0.0, "test")


def _message(**fields: Any) -> bytes:
    message = agent.WorkerMessage()
    json_format.ParseDict(fields, message)
    return message.SerializeToString()


DROPPED_BEFORE_REGISTRATION = {
    "availability": _message(availability={"jobId": "AJ_x", "available": True}),
    "update_worker": _message(updateWorker={"load": 0.1}),
    "update_job": _message(updateJob={"jobId": "AJ_x", "status": "JS_SUCCESS"}),
    "migrate_job": _message(migrateJob={"jobIds": ["AJ_x"]}),
    "empty": b"",
    "unknown oneof": b"\xca\x06\x00",  # field 105, length 0
    "garbage": b"\xff\xff\xff",
    "invalid type": _message(register={"type": 7}),
    "invalid deployment": _message(register={"deployment": "prod_eu"}),
}


@pytest.mark.parametrize(
    "payload", DROPPED_BEFORE_REGISTRATION.values(), ids=DROPPED_BEFORE_REGISTRATION
)
async def test_dropped_without_close_frame_before_registration(payload: bytes) -> None:
    async with running_server() as server, worker(server) as w:
        await w.ws.send(payload)
        await w.expect_dropped()
        assert server.workers() == []


DROPPED_AFTER_REGISTRATION = {
    "second register": _message(register={"agentName": "again"}),
    "empty": b"",
    "unknown oneof": b"\xca\x06\x00",
    "garbage": b"\x0a\xff",
    "bad json": "{not json",
    "unknown json field": '{"pingg": {}}',
}


@pytest.mark.parametrize(
    "payload", DROPPED_AFTER_REGISTRATION.values(), ids=DROPPED_AFTER_REGISTRATION
)
async def test_dropped_without_close_frame_after_registration(payload: bytes | str) -> None:
    async with running_server() as server, worker(server) as w:
        await w.register("a")
        await w.ws.send(payload)
        await w.expect_dropped()
        with anyio.fail_after(WAIT):
            await server.wait_workers(lambda workers: workers == [])


async def test_unregistered_socket_dropped_at_the_register_deadline() -> None:
    async with running_server(register_timeout=0.2) as server:
        start = anyio.current_time()
        async with worker(server) as w:
            ping = agent.WorkerMessage()
            ping.ping.timestamp = 1
            await w.send(ping)  # pings do not extend the deadline
            await w.expect("pong")
            await w.expect_dropped()
        assert anyio.current_time() - start >= 0.2


async def test_ignored_messages_keep_the_connection() -> None:
    async with running_server() as server, worker(server) as w:
        await w.register("a")
        for payload in (
            _message(availability={"jobId": "AJ_unknown", "available": True}),
            _message(updateJob={"jobId": "AJ_unknown", "status": "JS_SUCCESS"}),
            _message(migrateJob={"jobIds": ["AJ_old"]}),
        ):
            await w.ws.send(payload)
        assert await w.sync() == []
        assert len(server.workers()) == 1


async def test_status_is_sticky_and_load_always_applied() -> None:
    async with running_server() as server, worker(server) as w:
        await w.register("a")
        await w.update(0.5, status=agent.WS_FULL)
        assert (server.workers()[0].status, server.workers()[0].load) == (
            model.WorkerStatus.FULL,
            0.5,
        )
        await w.update(0.0)
        assert (server.workers()[0].status, server.workers()[0].load) == (
            model.WorkerStatus.FULL,
            0.0,
        )
        await w.update(0.25, status=agent.WS_AVAILABLE)
        assert server.workers()[0].status == model.WorkerStatus.AVAILABLE


async def _claims_of_first_job(w: Worker) -> dict[str, Any]:
    offer = (await w.expect("availability")).availability
    await w.answer(offer.job.id, identity="agent-1")
    assignment = (await w.expect("assignment")).assignment
    claims: dict[str, Any] = jwt.decode(assignment.token, SECRET, algorithms=["HS256"])
    return claims


@pytest.mark.parametrize(
    ("permissions", "expected"),
    [
        (
            None,
            {
                "canPublish": True,
                "canSubscribe": True,
                "canPublishData": True,
                "canUpdateOwnMetadata": True,
                "canSubscribeMetrics": False,
            },
        ),
        (
            models.ParticipantPermission(),
            {
                "canPublish": False,
                "canSubscribe": False,
                "canPublishData": False,
                "canUpdateOwnMetadata": False,
                "canSubscribeMetrics": False,
            },
        ),
        (
            models.ParticipantPermission(
                can_subscribe=True, hidden=True, can_subscribe_metrics=True, agent=True
            ),
            {
                "canPublish": False,
                "canSubscribe": True,
                "canPublishData": False,
                "canUpdateOwnMetadata": False,
                "canSubscribeMetrics": True,
                "hidden": True,
            },
        ),
    ],
    ids=["absent", "present-empty", "explicit"],
)
async def test_registered_permissions_reach_the_job_token(
    permissions: models.ParticipantPermission | None, expected: dict[str, bool]
) -> None:
    async with running_server() as server, worker(server) as w:
        await w.register("perm", permissions=permissions)
        await server.create_dispatch("room-p", "perm")
        claims = await _claims_of_first_job(w)
        video = claims["video"]
        assert {
            k: v for k, v in video.items() if k not in ("roomJoin", "room", "agent")
        } == expected
        assert (video["roomJoin"], video["room"], video["agent"]) == (True, "room-p", True)


async def test_text_frames_switch_replies_to_json() -> None:
    async with running_server() as server, worker(server) as w:
        await w.ws.send(json.dumps({"register": {"agent_name": "json", "type": "JT_ROOM"}}))
        with anyio.fail_after(WAIT):
            text = await w.ws.recv()
        assert isinstance(text, str)
        reply = json_format.Parse(text, agent.ServerMessage())
        assert reply.register.worker_id.startswith("AW_")
        assert "workerId" in json.loads(text)["register"]  # protojson: lowerCamel names
        await w.ws.send('{"ping": {"timestamp": "7"}}')
        with anyio.fail_after(WAIT):
            pong = await w.ws.recv()
        assert json_format.Parse(pong, agent.ServerMessage()).pong.last_timestamp == 7
        # A binary frame switches back to binary.
        ping = agent.WorkerMessage()
        ping.ping.timestamp = 8
        await w.send(ping)
        assert (await w.expect("pong")).pong.last_timestamp == 8


async def test_trace_records_both_directions() -> None:
    async with running_server(trace=True) as server:
        async with worker(server) as w:
            await w.register("traced")
            worker_id = w.worker_id
        with anyio.fail_after(WAIT):
            await server.wait_workers(lambda workers: workers == [])
        trace = server.traces()[worker_id]
        assert [(e.direction, e.kind) for e in trace] == [
            ("recv", "register"),
            ("send", "register"),
            ("recv", "ping"),
            ("send", "pong"),
        ]
        assert isinstance(trace[1].message, agent.ServerMessage)
        assert trace[1].message.register.worker_id == worker_id


async def test_simulate_job_offers_only_to_the_sender() -> None:
    async with running_server() as server, worker(server) as w:
        await w.register("sim")
        simulate = agent.WorkerMessage()
        simulate.simulate_job.type = agent.JT_PARTICIPANT  # ignored by the server
        simulate.simulate_job.room.name = "sim-room"
        await w.send(simulate)
        offer = (await w.expect("availability")).availability
        assert (offer.job.type, offer.job.room.name, offer.job.agent_name) == (
            agent.JT_ROOM,
            "sim-room",
            "sim",
        )
        await w.answer(offer.job.id, identity="sim-agent")
        assignment = (await w.expect("assignment")).assignment
        assert (
            jwt.decode(assignment.token, SECRET, algorithms=["HS256"])["video"]["room"]
            == "sim-room"
        )
        assert server.workers()[0].running_jobs == (offer.job.id,)


async def test_simulate_job_without_room_is_dropped_on_accept() -> None:
    """The real server crashes here; the dev server drops the job and keeps serving."""
    async with running_server() as server, worker(server) as w:
        await w.register("sim")
        simulate = agent.WorkerMessage()
        simulate.simulate_job.participant.identity = "caller"
        await w.send(simulate)
        offer = (await w.expect("availability")).availability
        assert offer.job.type == agent.JT_PUBLISHER
        assert not offer.job.HasField("room")
        assert offer.job.participant.identity == "caller"
        await w.answer(offer.job.id, identity="x")
        assert await w.sync() == []
        assert server.workers()[0].running_jobs == ()
