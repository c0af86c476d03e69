"""What the worker protocol talks about, as frozen dataclasses (protobuf stays in ``codec``).

Server messages decode to past-tense events (``OfferReceived``, ``JobAssigned``...). The machine
adds its own events (``Registered``, ``ConnectionClosed``, ``GaveUp``...) and commands for its
shell (``OpenConnection``, ``CloseConnection``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal


class JobType(enum.Enum):
    """``livekit.JobType``."""

    ROOM = 0
    PUBLISHER = 1
    PARTICIPANT = 2


class JobStatus(enum.Enum):
    """``livekit.JobStatus`` (only SUCCESS and FAILED end a job on the server)."""

    PENDING = 0
    RUNNING = 1
    SUCCESS = 2
    FAILED = 3


class WorkerStatus(enum.Enum):
    """``livekit.WorkerStatus``."""

    AVAILABLE = 0
    FULL = 1


@dataclass(frozen=True)
class Permissions:
    """``ParticipantPermission`` sent at registration (``agent`` is always true)."""

    can_publish: bool = True
    can_subscribe: bool = True
    can_publish_data: bool = True
    can_update_metadata: bool = True
    can_publish_sources: tuple[str, ...] = ()
    hidden: bool = False


@dataclass(frozen=True)
class Job:
    """A job as the server describes it.

    ``wire`` is the ``livekit.Job`` as received, handed unchanged to the job process so that no
    field is lost on the way.
    """

    id: str
    type: JobType
    room_name: str
    room_sid: str = ""
    agent_name: str = ""
    metadata: str = ""
    dispatch_id: str = ""
    participant_identity: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    agent_identity: str = ""  # the agent participant's identity once assigned (job.state)
    wire: bytes = b""


# --- server messages ----------------------------------------------------------------------


@dataclass(frozen=True)
class RegisterResponse:
    """``register``: the server accepted the worker."""

    worker_id: str
    server_version: str = ""
    server_region: str = ""
    agent_protocol: int = 0


@dataclass(frozen=True)
class OfferReceived:
    """``availability``: the server offers a job; answer within the server's ~3 s budget."""

    job: Job
    resuming: bool = False


@dataclass(frozen=True)
class JobAssigned:
    """``assignment``: run this job; ``token`` joins the room, ``url`` is None for same server."""

    job: Job
    token: str
    url: str | None = None


@dataclass(frozen=True)
class TerminationRequested:
    """``termination``: end this job (may arrive for a job already ending, or never)."""

    job_id: str


@dataclass(frozen=True)
class PongReceived:
    """``pong``: answer to a ``WorkerPing`` (milliseconds)."""

    last_timestamp: int
    timestamp: int


@dataclass(frozen=True)
class UnknownMessage:
    """A well-formed server message this client does not know (a newer server's addition)."""

    field_number: int | None


ServerMessage = (
    RegisterResponse
    | OfferReceived
    | JobAssigned
    | TerminationRequested
    | PongReceived
    | UnknownMessage
)


# --- answers to offers ---------------------------------------------------------------------


@dataclass(frozen=True)
class Accept:
    """Take the job as this participant (identity must not be empty)."""

    identity: str
    name: str = ""
    metadata: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)


#: Why an offer was declined: the agent is draining or full, the room does not match its
#: policy, it is stopping, the fleet's memory budget is spent, no job process could be had,
#: the request function said no (or failed), no answer in time, or another error.
DeclineCause = Literal[
    "draining",
    "full",
    "room",
    "stopping",
    "memory",
    "no_process",
    "request_fnc",
    "timeout",
    "error",
    "other",
]


@dataclass(frozen=True)
class Decline:
    """Decline an offer.

    ``terminate=False`` lets the server retry another worker; ``terminate=True`` ends the job
    (the server records it as finished and retries nowhere).
    """

    terminate: bool = False
    reason: str = ""
    cause: DeclineCause = "other"
    """Why, as one of a few classes (metrics count declines by it); ``reason`` says it in words."""


Answer = Accept | Decline


# --- machine events (what happened) ----------------------------------------------------------


@dataclass(frozen=True)
class Registered:
    """The connection registered; ``attempts`` failed attempts preceded it."""

    worker_id: str
    server_version: str
    attempts: int


@dataclass(frozen=True)
class OfferAnswered:
    """An offer was answered (after the machine's own checks)."""

    job_id: str
    answer: Answer


@dataclass(frozen=True)
class ReservationExpired:
    """An accepted offer got no assignment in time; its capacity is free again."""

    job_id: str


@dataclass(frozen=True)
class ProtocolViolation:
    """The server sent something this client cannot use; ``fatal`` means reconnect."""

    description: str
    fatal: bool


@dataclass(frozen=True)
class ConnectionClosed:
    """The connection ended; a reconnect follows after ``retry_delay`` (None: no retry)."""

    reason: str
    retry_delay: float | None


@dataclass(frozen=True)
class GaveUp:
    """``max_retry`` consecutive attempts failed; the agent stays failed until restarted."""

    attempts: int
    reason: str


@dataclass(frozen=True)
class Drained:
    """Draining finished: no job left, the connection is being closed for good."""


Event = (
    Registered
    | OfferReceived
    | OfferAnswered
    | JobAssigned
    | TerminationRequested
    | ReservationExpired
    | ProtocolViolation
    | ConnectionClosed
    | GaveUp
    | Drained
    | PongReceived
)


# --- commands for the shell ----------------------------------------------------------------


@dataclass(frozen=True)
class OpenConnection:
    """Open a new WebSocket (with a fresh token) and report the outcome."""


@dataclass(frozen=True)
class CloseConnection:
    """Close the WebSocket with this code (1000 normal, 1001 going away, 1002 protocol)."""

    code: int
    reason: str


Command = OpenConnection | CloseConnection
