"""Values of the dev server: rooms, jobs, registrations and the messages a worker sends.

Everything here is an immutable value and pure: no protobuf (``codec`` converts at the edge),
no clocks (timestamps are passed in as integers) and no I/O. The job-state transitions of the
real livekit-server (reference §2.4, §2.6, §2.7) live here as functions, so that they can be
tested table by table.

Invariants:

* A job's ``state.status`` is an ``int``, not a ``StatusCode``: the real server stores whatever
  enum value a worker reports (proto3 enums are open), and only ``JS_SUCCESS``/``JS_FAILED`` end
  a job.
* Timestamps in ``JobState`` are Unix nanoseconds, ``RoomInfo.creation_time`` is seconds and
  ``creation_time_ms`` milliseconds, as on the wire.
* ``Permissions`` is what a worker registered (or the defaults when it sent none); the job
  token is built from it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from lksup.errors import LksupError

#: ``deployment`` is at most this many bytes (``protoagent.ValidateDeployment``).
MAX_DEPLOYMENT_BYTES = 64
#: CreateDispatch limits (``agent_dispatch_service.go``).
MAX_METADATA_BYTES = 512 * 1024
MAX_ATTRIBUTES_BYTES = 64 * 1024


class JobType(enum.IntEnum):
    """``livekit.JobType``."""

    ROOM = 0
    PUBLISHER = 1
    PARTICIPANT = 2


class StatusCode(enum.IntEnum):
    """The codes of ``livekit.JobStatus`` the OSS server knows (not the wheel's ``JS_CANCELLED``).

    Named apart from ``protocol.events.JobStatus`` (a worker's side of the same enum): the dev
    server stands apart from the worker code, and stores codes, not enum members.
    """

    PENDING = 0
    RUNNING = 1
    SUCCESS = 2
    FAILED = 3


class WorkerStatus(enum.IntEnum):
    """``livekit.WorkerStatus``."""

    AVAILABLE = 0
    FULL = 1


ENDED = frozenset({int(StatusCode.SUCCESS), int(StatusCode.FAILED)})
JOB_TYPES = frozenset(int(t) for t in JobType)


class DevServerError(LksupError):
    """A request to the dev server cannot be served; ``code`` is the Twirp error code."""

    code = "internal"


class NotFound(DevServerError):
    """The room or dispatch a request names does not exist."""

    code = "not_found"


class InvalidArgument(DevServerError):
    """A request field is invalid."""

    code = "invalid_argument"


def valid_deployment(deployment: str) -> bool:
    """Whether ``deployment`` passes ``protoagent.ValidateDeployment``.

    Valid: empty, or at most 64 bytes with no ``_``, whitespace, control byte or DEL (checked
    byte by byte on the UTF-8 encoding).
    """
    raw = deployment.encode()
    if len(raw) > MAX_DEPLOYMENT_BYTES:
        return False
    return all(byte != ord("_") and byte > ord(" ") and byte != 0x7F for byte in raw)


@dataclass(frozen=True)
class Permissions:
    """The parts of ``ParticipantPermission`` that reach the job token."""

    can_subscribe: bool = False
    can_publish: bool = False
    can_publish_data: bool = False
    can_update_metadata: bool = False
    hidden: bool = False
    can_subscribe_metrics: bool = False


#: Used when a worker registers without ``allowed_permissions`` (field absent, not empty).
DEFAULT_PERMISSIONS = Permissions(
    can_subscribe=True, can_publish=True, can_publish_data=True, can_update_metadata=True
)


@dataclass(frozen=True)
class RoomInfo:
    """The fields of ``livekit.Room`` the dev server keeps."""

    sid: str
    name: str
    empty_timeout: int = 0
    departure_timeout: int = 0
    max_participants: int = 0
    creation_time: int = 0
    creation_time_ms: int = 0
    metadata: str = ""
    num_participants: int = 0
    num_publishers: int = 0
    active_recording: bool = False
    turn_password: str = ""


@dataclass(frozen=True)
class JobState:
    """``livekit.JobState``; times are Unix nanoseconds."""

    status: int = StatusCode.PENDING
    error: str = ""
    started_at: int = 0
    ended_at: int = 0
    updated_at: int = 0
    participant_identity: str = ""
    worker_id: str = ""
    agent_id: str = ""


@dataclass(frozen=True)
class Job:
    """``livekit.Job``. ``participant`` is an opaque serialized ``ParticipantInfo``."""

    id: str
    type: int
    room: RoomInfo | None
    participant: bytes | None = None
    namespace: str = ""
    metadata: str = ""
    agent_name: str = ""
    state: JobState = JobState()
    dispatch_id: str = ""
    enable_recording: bool = False
    deployment: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    enable_redaction: bool = False


@dataclass(frozen=True)
class PoolKey:
    """Workers with equal keys form one pool; a job reaches only the pool of its key."""

    agent_name: str
    namespace: str
    job_type: int
    deployment: str


@dataclass(frozen=True)
class DispatchSpec:
    """What to dispatch into a room (``RoomAgentDispatch`` / ``CreateAgentDispatchRequest``)."""

    agent_name: str = ""
    metadata: str = ""
    deployment: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)


def validate_dispatch(spec: DispatchSpec) -> None:
    """The checks CreateDispatch makes before anything else.

    Raises:
        InvalidArgument: invalid deployment, or metadata or attributes too large.
    """
    if not valid_deployment(spec.deployment):
        raise InvalidArgument("invalid deployment")
    if len(spec.metadata.encode()) > MAX_METADATA_BYTES:
        raise InvalidArgument("metadata exceeds the size limit")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in spec.attributes.items())
    if size > MAX_ATTRIBUTES_BYTES:
        raise InvalidArgument("attributes exceed the size limit")


# --- job-state transitions -------------------------------------------------------------------


def offered(job: Job, *, worker_id: str, now_ns: int) -> Job:
    """The job as sent in an AvailabilityRequest: already RUNNING on ``worker_id`` (§2.4)."""
    state = JobState(
        status=StatusCode.RUNNING, worker_id=worker_id, started_at=now_ns, updated_at=now_ns
    )
    return replace(job, state=state)


def accepted(job: Job, *, participant_identity: str) -> Job:
    """The offered job after the worker accepted it."""
    return replace(job, state=replace(job.state, participant_identity=participant_identity))


def ended(job: Job, *, status: int, now_ns: int, error: str = "") -> Job:
    """The job marked ended by the server (terminate answer, termination sent)."""
    state = replace(job.state, status=status, error=error, ended_at=now_ns, updated_at=now_ns)
    return replace(job, state=state)


def status_updated(job: Job, *, status: int, error: str, now_ns: int) -> Job:
    """``Worker.UpdateJobStatus`` (§2.6): any status is stored; ended ones set ``ended_at``."""
    state = job.state
    started_at = state.started_at
    if state.status == StatusCode.PENDING and status != StatusCode.PENDING:
        started_at = now_ns
    ended_at = now_ns if status in ENDED else state.ended_at
    new = replace(
        state,
        status=status,
        error=error,
        updated_at=now_ns,
        started_at=started_at,
        ended_at=ended_at,
    )
    return replace(job, state=new)


# --- messages from a worker (decoded by codec) -----------------------------------------------


@dataclass(frozen=True)
class Register:
    """``RegisterWorkerRequest``; ``permissions`` is None when the field was absent."""

    job_type: int
    agent_name: str
    namespace: str
    deployment: str
    version: str
    permissions: Permissions | None


@dataclass(frozen=True)
class Availability:
    """``AvailabilityResponse``."""

    job_id: str
    available: bool
    terminate: bool
    participant_identity: str = ""
    participant_name: str = ""
    participant_metadata: str = ""
    participant_attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class UpdateWorker:
    """``UpdateWorkerStatus``; ``status`` is None when absent (then it is not applied)."""

    status: int | None
    load: float


@dataclass(frozen=True)
class UpdateJob:
    """``UpdateJobStatus``."""

    job_id: str
    status: int
    error: str


@dataclass(frozen=True)
class Ping:
    """``WorkerPing``; ``timestamp`` in milliseconds."""

    timestamp: int


@dataclass(frozen=True)
class SimulateJob:
    """``SimulateJobRequest``; its ``type`` is ignored by the server, so it is not kept."""

    room: RoomInfo | None
    participant: bytes | None


@dataclass(frozen=True)
class MigrateJob:
    """``MigrateJobRequest`` (ignored by OSS)."""

    job_ids: tuple[str, ...]


WorkerEvent = Register | Availability | UpdateWorker | UpdateJob | Ping | SimulateJob | MigrateJob
