"""Protobuf <-> protocol dataclasses for the worker channel.

The only protocol module that imports protobuf: the rest of lksup never sees a generated
message.

Decoding never raises anything but ``CodecError``; encoding is total. Field choices follow
what the real server reads (see the protocol reference): ``UpdateWorkerStatus.status`` is always
set explicitly (it is sticky and only applied when present), ``load`` is always sent,
``allowed_permissions`` is always present and explicit (absent would mean server defaults).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet
from livekit.protocol import agent as pb
from livekit.protocol import models as pb_models

from lksup.protocol.events import (
    Accept,
    Answer,
    Job,
    JobAssigned,
    JobStatus,
    JobType,
    OfferReceived,
    Permissions,
    PongReceived,
    RegisterResponse,
    ServerMessage,
    TerminationRequested,
    UnknownMessage,
    WorkerStatus,
)

AGENT_NAME_ATTRIBUTE = "lk.agent.name"
_SOURCES = {
    "camera": pb_models.TrackSource.CAMERA,
    "microphone": pb_models.TrackSource.MICROPHONE,
    "screen_share": pb_models.TrackSource.SCREEN_SHARE,
    "screen_share_audio": pb_models.TrackSource.SCREEN_SHARE_AUDIO,
}


class CodecError(ValueError):
    """Bytes that are not a ``ServerMessage``."""


def decode_server(data: bytes) -> ServerMessage:
    """Decode one binary frame from the server.

    Raises:
        CodecError: the bytes are not a valid ``ServerMessage``.
    """
    message = pb.ServerMessage()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise CodecError(f"undecodable server message ({len(data)} bytes): {exc}") from None
    kind = message.WhichOneof("message")
    if kind == "register":
        info = message.register.server_info
        return RegisterResponse(
            worker_id=message.register.worker_id,
            server_version=info.version,
            server_region=info.region,
            agent_protocol=info.agent_protocol,
        )
    if kind == "availability":
        return OfferReceived(
            job=decode_job(message.availability.job), resuming=message.availability.resuming
        )
    if kind == "assignment":
        url = message.assignment.url if message.assignment.HasField("url") else None
        return JobAssigned(
            job=decode_job(message.assignment.job), token=message.assignment.token, url=url or None
        )
    if kind == "termination":
        return TerminationRequested(job_id=message.termination.job_id)
    if kind == "pong":
        return PongReceived(message.pong.last_timestamp, message.pong.timestamp)
    if kind is not None:  # known to the schema, not to this client (e.g. go_away)
        return UnknownMessage(message.DESCRIPTOR.fields_by_name[kind].number)
    unknown = UnknownFieldSet(message)
    return UnknownMessage(unknown[0].field_number if len(unknown) else None)


def decode_job(job: pb.Job) -> Job:
    """A ``livekit.Job`` as a ``Job`` (keeping the wire form for the job process)."""
    participant = job.participant.identity if job.HasField("participant") else None
    try:
        job_type = JobType(job.type)
    except ValueError:
        job_type = JobType.ROOM
    return Job(
        id=job.id,
        type=job_type,
        room_name=job.room.name,
        room_sid=job.room.sid,
        agent_name=job.agent_name,
        metadata=job.metadata,
        dispatch_id=job.dispatch_id,
        participant_identity=participant,
        attributes=dict(job.attributes),
        agent_identity=job.state.participant_identity,
        wire=job.SerializeToString(),
    )


def decode_job_wire(wire: bytes) -> Job:
    """A ``Job`` from its wire form (as handed to a job process).

    Raises:
        CodecError: the bytes are not a ``livekit.Job``.
    """
    job = pb.Job()
    try:
        job.ParseFromString(wire)
    except DecodeError as exc:
        raise CodecError(f"undecodable job: {exc}") from None
    return decode_job(job)


def _frame(message: pb.WorkerMessage) -> bytes:
    return message.SerializeToString()


def encode_register(
    *,
    agent_name: str,
    job_type: JobType,
    version: str,
    permissions: Permissions,
    deployment: str = "",
) -> bytes:
    """``register`` with explicit permissions (``agent`` forced true, like the SDK)."""
    allowed = pb_models.ParticipantPermission(
        can_subscribe=permissions.can_subscribe,
        can_publish=permissions.can_publish,
        can_publish_data=permissions.can_publish_data,
        can_update_metadata=permissions.can_update_metadata,
        can_publish_sources=[_SOURCES[s] for s in permissions.can_publish_sources],
        hidden=permissions.hidden,
        agent=True,
    )
    register = pb.RegisterWorkerRequest(
        type=cast("pb.JobType", job_type.value),
        agent_name=agent_name,
        version=version,
        allowed_permissions=allowed,
        deployment=deployment,
    )
    return _frame(pb.WorkerMessage(register=register))


def encode_answer(job_id: str, answer: Answer, *, agent_name: str) -> bytes:
    """``availability`` for an offer."""
    if isinstance(answer, Accept):
        attributes = dict(answer.attributes)
        attributes[AGENT_NAME_ATTRIBUTE] = agent_name
        response = pb.AvailabilityResponse(
            job_id=job_id,
            available=True,
            participant_identity=answer.identity,
            participant_name=answer.name,
            participant_metadata=answer.metadata,
            participant_attributes=attributes,
        )
    else:
        response = pb.AvailabilityResponse(
            job_id=job_id, available=False, terminate=answer.terminate
        )
    return _frame(pb.WorkerMessage(availability=response))


def encode_status(status: WorkerStatus, *, load: float, job_count: int, draining: bool) -> bytes:
    """``update_worker``: status always explicit, load always sent."""
    update = pb.UpdateWorkerStatus(
        status=cast("pb.WorkerStatus", status.value),
        load=load,
        job_count=job_count,
        draining=draining,
    )
    return _frame(pb.WorkerMessage(update_worker=update))


def encode_job_status(job_id: str, status: JobStatus, error: str = "") -> bytes:
    """``update_job``."""
    update = pb.UpdateJobStatus(
        job_id=job_id, status=cast("pb.JobStatus", status.value), error=error
    )
    return _frame(pb.WorkerMessage(update_job=update))


def encode_migrate(job_ids: Iterable[str]) -> bytes:
    """``migrate_job``: the jobs this worker still runs after a reconnect."""
    return _frame(pb.WorkerMessage(migrate_job=pb.MigrateJobRequest(job_ids=list(job_ids))))


def encode_simulate(room_name: str, participant_identity: str | None = None) -> bytes:
    """``simulate_job`` for a room (and a participant: a publisher job)."""
    request = pb.SimulateJobRequest(
        type=pb.JT_PUBLISHER if participant_identity else pb.JT_ROOM,
        room=pb_models.Room(name=room_name, sid=f"RM_SIM_{room_name}"),
    )
    if participant_identity:
        request.participant.CopyFrom(
            pb_models.ParticipantInfo(identity=participant_identity, sid=f"PA_SIM_{room_name}")
        )
    return _frame(pb.WorkerMessage(simulate_job=request))


def encode_ping(timestamp_ms: int) -> bytes:
    """``ping`` (the server answers with ``pong``)."""
    return _frame(pb.WorkerMessage(ping=pb.WorkerPing(timestamp=timestamp_ms)))
