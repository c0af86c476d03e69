"""Protobuf at the edge of the worker channel: ``WorkerMessage`` in, ``ServerMessage`` out.

The only devserver module that builds or parses the worker channel's protobuf messages; the
rest of the server sees the values of ``model``. The ``Job``/``Room``/``AgentDispatch``
converters at the end serve the HTTP side (``twirp``) and the server's Python API too.

Framing follows ``pkg/service/wsprotocol.go``: a binary frame carries protobuf binary, a text
frame protojson. ``decode`` accepts both; the session answers in the format of the last frame
it received. JSON out is protojson's default form (lowerCamel names, unpopulated fields left
out), as Go's ``protojson.Marshal`` writes it.

``decode`` raises ``UndecodableMessage`` for everything the real server treats as a read
error or an unknown signal: bytes that do not parse, JSON with unknown fields (Go's protojson
rejects them), and a message whose ``message`` oneof is empty or set to a field number this
schema does not know (it then sits in the unknown fields, and ``WhichOneof`` is None). Unknown
fields next to a known oneof are ignored, as in Go.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from livekit.protocol import agent, agent_dispatch, models

from lksup.devserver import model
from lksup.devserver.rooms import Dispatch

Direction = Literal["recv", "send"]


class UndecodableMessage(ValueError):
    """A frame is not a ``WorkerMessage`` the server understands (the socket is dropped)."""


@dataclass(frozen=True)
class Outgoing:
    """A ``ServerMessage`` ready to send; ``kind`` is the name of its oneof field."""

    kind: str
    message: agent.ServerMessage


@dataclass(frozen=True)
class TraceEntry:
    """One message of a worker connection, kept when the server's tracing is on.

    ``kind`` is the oneof name (``register``, ``availability``, ...); ``message`` is the whole
    decoded ``WorkerMessage`` (received) or ``ServerMessage`` (sent); ``text`` tells whether it
    travelled as a JSON text frame; ``at`` is ``anyio.current_time()`` when it was received, or
    just before it was written (benchmarks measure answer latency from it).
    """

    direction: Direction
    kind: str
    message: Message
    text: bool = False
    at: float = 0.0


@dataclass(frozen=True)
class ServerInfo:
    """What ``RegisterWorkerResponse.server_info`` says about this server."""

    version: str
    protocol: int
    agent_protocol: int
    region: str
    node_id: str


# --- worker -> server ------------------------------------------------------------------------


def decode(payload: bytes | str) -> tuple[model.WorkerEvent, agent.WorkerMessage]:
    """Parse one frame into an event, and the decoded message (for the trace).

    Raises:
        UndecodableMessage: see the module docstring.
    """
    msg = agent.WorkerMessage()
    try:
        if isinstance(payload, str):
            json_format.Parse(payload, msg)
        else:
            msg.ParseFromString(payload)
    except (DecodeError, json_format.ParseError) as exc:
        raise UndecodableMessage(f"cannot parse a WorkerMessage: {exc}") from None
    kind = msg.WhichOneof("message")
    if kind is None:
        raise UndecodableMessage("WorkerMessage without a known message")
    return _event(msg, kind), msg


def _event(msg: agent.WorkerMessage, kind: str) -> model.WorkerEvent:
    match kind:
        case "register":
            reg = msg.register
            perms = (
                permissions_from_proto(reg.allowed_permissions)
                if reg.HasField("allowed_permissions")
                else None
            )
            return model.Register(
                job_type=reg.type,
                agent_name=reg.agent_name,
                namespace=reg.namespace,
                deployment=reg.deployment,
                version=reg.version,
                permissions=perms,
            )
        case "availability":
            av = msg.availability
            return model.Availability(
                job_id=av.job_id,
                available=av.available,
                terminate=av.terminate,
                participant_identity=av.participant_identity,
                participant_name=av.participant_name,
                participant_metadata=av.participant_metadata,
                participant_attributes=dict(av.participant_attributes),
            )
        case "update_worker":
            up = msg.update_worker
            status = up.status if up.HasField("status") else None
            return model.UpdateWorker(status=status, load=up.load)
        case "update_job":
            uj = msg.update_job
            return model.UpdateJob(job_id=uj.job_id, status=uj.status, error=uj.error)
        case "ping":
            return model.Ping(timestamp=msg.ping.timestamp)
        case "simulate_job":
            sim = msg.simulate_job
            room = room_from_proto(sim.room) if sim.HasField("room") else None
            participant = (
                sim.participant.SerializeToString() if sim.HasField("participant") else None
            )
            return model.SimulateJob(room=room, participant=participant)
        case "migrate_job":
            return model.MigrateJob(job_ids=tuple(msg.migrate_job.job_ids))
    raise UndecodableMessage(f"unsupported message {kind!r}")  # a oneof this code predates


def permissions_from_proto(perm: models.ParticipantPermission) -> model.Permissions:
    """The token-relevant part of a registered ``ParticipantPermission``."""
    return model.Permissions(
        can_subscribe=perm.can_subscribe,
        can_publish=perm.can_publish,
        can_publish_data=perm.can_publish_data,
        can_update_metadata=perm.can_update_metadata,
        hidden=perm.hidden,
        can_subscribe_metrics=perm.can_subscribe_metrics,
    )


# --- server -> worker ------------------------------------------------------------------------


def register_response(worker_id: str, info: ServerInfo) -> Outgoing:
    """``register{worker_id, server_info}`` (edition Standard = 0)."""
    msg = agent.ServerMessage()
    msg.register.worker_id = worker_id
    si = msg.register.server_info
    si.edition = models.ServerInfo.Standard
    si.version = info.version
    si.protocol = info.protocol
    si.agent_protocol = info.agent_protocol
    si.region = info.region
    si.node_id = info.node_id
    return Outgoing("register", msg)


def pong(last_timestamp: int, timestamp: int) -> Outgoing:
    """``pong{last_timestamp, timestamp}`` in milliseconds."""
    msg = agent.ServerMessage()
    msg.pong.last_timestamp = last_timestamp
    msg.pong.timestamp = timestamp
    return Outgoing("pong", msg)


def availability_request(job: model.Job) -> Outgoing:
    """``availability{job, resuming: false}``."""
    msg = agent.ServerMessage()
    msg.availability.job.CopyFrom(job_to_proto(job))
    return Outgoing("availability", msg)


def assignment(job: model.Job, token: str) -> Outgoing:
    """``assignment{job, token}`` with ``url`` unset (the worker keeps its server URL)."""
    msg = agent.ServerMessage()
    msg.assignment.job.CopyFrom(job_to_proto(job))
    msg.assignment.token = token
    return Outgoing("assignment", msg)


def termination(job_id: str) -> Outgoing:
    """``termination{job_id}``."""
    msg = agent.ServerMessage()
    msg.termination.job_id = job_id
    return Outgoing("termination", msg)


def encode(out: Outgoing, *, text: bool) -> bytes | str:
    """The frame payload: protojson text when ``text``, else protobuf binary."""
    if text:
        return json_format.MessageToJson(out.message, indent=None)
    return out.message.SerializeToString()


# --- shared converters -----------------------------------------------------------------------


#: The codecs a v1.13.5 server lists for every room (its defaults), in its order.
ENABLED_CODECS = (
    "audio/PCMU",
    "audio/PCMA",
    "audio/opus",
    "audio/red",
    "video/VP8",
    "video/H264",
    "video/VP9",
    "video/AV1",
    "video/H265",
    "video/rtx",
)


#: ``RoomInfo`` mirrors these ``livekit.Room`` fields one to one (same names).
_ROOM_FIELDS = tuple(f.name for f in dataclasses.fields(model.RoomInfo))


def room_to_proto(room: model.RoomInfo) -> models.Room:
    """``RoomInfo`` as a ``livekit.Room`` (with the real server's default codec list)."""
    return models.Room(
        enabled_codecs=[models.Codec(mime=mime) for mime in ENABLED_CODECS],
        **{name: getattr(room, name) for name in _ROOM_FIELDS},
    )


def room_from_proto(room: models.Room) -> model.RoomInfo:
    """The kept fields of a ``livekit.Room`` (codecs and version are dropped)."""
    return model.RoomInfo(**{name: getattr(room, name) for name in _ROOM_FIELDS})


def job_to_proto(job: model.Job) -> agent.Job:
    """A ``Job`` value as a ``livekit.Job``."""
    out = agent.Job(
        id=job.id,
        dispatch_id=job.dispatch_id,
        type=job.type,  # type: ignore[arg-type]  # an int, as proto3 enums are open
        namespace=job.namespace,
        metadata=job.metadata,
        agent_name=job.agent_name,
        enable_recording=job.enable_recording,
        deployment=job.deployment,
        attributes=dict(job.attributes),
        enable_redaction=job.enable_redaction,
    )
    if job.room is not None:
        out.room.CopyFrom(room_to_proto(job.room))
    if job.participant is not None:
        out.participant.ParseFromString(job.participant)
    state = job.state
    out.state.CopyFrom(
        agent.JobState(
            status=state.status,  # type: ignore[arg-type]
            error=state.error,
            started_at=state.started_at,
            ended_at=state.ended_at,
            updated_at=state.updated_at,
            participant_identity=state.participant_identity,
            worker_id=state.worker_id,
            agent_id=state.agent_id,
        )
    )
    return out


def dispatch_to_proto(dispatch: Dispatch) -> agent_dispatch.AgentDispatch:
    """A dispatch record as ``livekit.AgentDispatch`` (job states as launched)."""
    spec = dispatch.spec
    return agent_dispatch.AgentDispatch(
        id=dispatch.id,
        agent_name=spec.agent_name,
        room=dispatch.room,
        metadata=spec.metadata,
        deployment=spec.deployment,
        attributes=dict(spec.attributes),
        state=agent_dispatch.AgentDispatchState(
            jobs=[job_to_proto(job) for job in dispatch.jobs],
            created_at=dispatch.created_at,
        ),
    )
