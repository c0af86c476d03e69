"""Server-side frames for protocol tests, built with the real generated messages."""

from __future__ import annotations

from livekit.protocol import agent as pb
from livekit.protocol import models as pb_models


def register(worker_id: str = "AW_test", version: str = "1.13.5") -> bytes:
    message = pb.ServerMessage()
    message.register.worker_id = worker_id
    message.register.server_info.version = version
    message.register.server_info.agent_protocol = 1
    return message.SerializeToString()


def job(job_id: str, room: str = "room-1", agent_name: str = "agent") -> pb.Job:
    return pb.Job(
        id=job_id,
        type=pb.JT_ROOM,
        room=pb_models.Room(name=room, sid="RM_" + room),
        agent_name=agent_name,
        dispatch_id="AD_" + job_id,
        metadata="meta",
        state=pb.JobState(status=pb.JS_RUNNING, worker_id="AW_test"),
    )


def offer(job_id: str, room: str = "room-1") -> bytes:
    message = pb.ServerMessage()
    message.availability.job.CopyFrom(job(job_id, room))
    return message.SerializeToString()


def assignment(job_id: str, token: str = "jwt", room: str = "room-1") -> bytes:
    message = pb.ServerMessage()
    message.assignment.job.CopyFrom(job(job_id, room))
    message.assignment.token = token
    return message.SerializeToString()


def termination(job_id: str) -> bytes:
    message = pb.ServerMessage()
    message.termination.job_id = job_id
    return message.SerializeToString()


def pong(last: int, now: int) -> bytes:
    message = pb.ServerMessage()
    message.pong.last_timestamp = last
    message.pong.timestamp = now
    return message.SerializeToString()


def worker(frame: bytes) -> pb.WorkerMessage:
    message = pb.WorkerMessage()
    message.ParseFromString(frame)
    return message
