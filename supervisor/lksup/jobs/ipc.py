"""The messages between the supervisor and a job process, and their wire form (pure).

This is the only module besides ``lksup._pb`` that touches the IPC protobuf schema
(``proto/lksup_ipc.proto``): both sides exchange the frozen dataclasses below, and ``encode``
/ ``decode`` turn them into frames and back. Field names and meanings are the schema's.

Invariants:

* ``decode(payload)`` of the payload of ``encode(msg)`` equals ``msg`` for every message
  (strings that cannot be encoded as UTF-8, such as lone surrogates, are the exception: they
  are sent with ``backslashreplace``, so that encoding never fails on text).
* ``decode`` raises nothing but ``IpcError``, for bytes that are not an ``Envelope`` and for an
  envelope that carries no message this version knows (an empty one, or one from a newer
  schema). The framing is intact after an ``IpcError``: the reader may skip the frame.
* ``job`` fields are bytes: a serialized ``livekit.Job`` passed through untouched (the child
  parses it with ``livekit.protocol.agent.Job``; the parent has it as ``Job.wire``).

Exit codes of the job process are part of the same contract and live here too (``ExitCode``),
so the parent can read them without importing the child runtime.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as _PbMessage

from lksup._pb import lksup_ipc_pb2 as pb
from lksup.jobs.framing import MAX_FRAME_SIZE, encode_frame

__all__ = [
    "RUNTIME_LIVEKIT_AGENTS",
    "AwaitJob",
    "ChildMessage",
    "ExitCode",
    "Exited",
    "ForkJob",
    "ForkTemplate",
    "Forked",
    "InferenceRequest",
    "InferenceResponse",
    "Initialize",
    "IpcError",
    "JobEnded",
    "JobOutcome",
    "JobStarted",
    "LogRecord",
    "Message",
    "OfferAnswer",
    "OfferRequest",
    "OutcomeReported",
    "ParentMessage",
    "Ping",
    "Pong",
    "Ready",
    "Shutdown",
    "StartInference",
    "StartJob",
    "ZygoteReady",
    "ZygoteStart",
    "decode",
    "encode",
    "encode_payload",
    "launch_command",
    "runtime_missing_message",
]


#: ``Initialize.runtime`` of agents written against livekit-agents.
RUNTIME_LIVEKIT_AGENTS = "livekit-agents"


class IpcError(ValueError):
    """A frame's payload is not a message this version understands."""


class ExitCode(enum.IntEnum):
    """Exit status of ``python -m lksup.jobs.child``.

    Sysexits-style values, so that none collides with the small codes user code tends to pass
    to ``sys.exit``/``os._exit``.
    """

    OK = 0
    """The job ended (successfully or not: see ``JobEnded``), the process was shut down while
    idle, or the supervisor went away (EOF on the socket)."""
    USAGE = 64
    """Bad command line (missing or invalid ``--ipc-fd``)."""
    RUNTIME_MISSING = 69
    """The interpreter (an agent's ``python:``) cannot import lksup's job runtime."""
    PROTOCOL = 76
    """The supervisor broke the protocol: the first frame is not an ``Initialize``, or a frame
    is larger than the limit (the stream cannot be read any further)."""
    INIT_FAILED = 78
    """Importing the agent's module or running ``prewarm`` failed; ``Ready.error`` says why."""


# ---- supervisor -> child -------------------------------------------------------------------


@dataclass(frozen=True)
class Initialize:
    """First frame: what the process is for. Answered by ``Ready``."""

    agent_name: str
    entrypoint: str
    """``module:attribute`` of ``async def entrypoint(ctx: JobContext)``."""
    prewarm: str = ""
    """``module:attribute`` of ``def prewarm(proc: JobProcess)``; empty: none."""
    request_fnc: str = ""
    """``module:attribute`` of ``async def request(req: JobRequest)``; empty: none."""
    log_level: str = "INFO"
    shutdown_grace: float = 15.0
    """Seconds the entrypoint gets to return after a shutdown request before it is cancelled."""
    runtime: str = ""
    """What the functions are written against: ``lksup`` (empty) or ``livekit-agents``."""
    session_end_fnc: str = ""
    """livekit-agents: ``module:attribute`` run once the primary AgentSession closed."""
    max_jobs: int = 0
    """Above 1: a thread host that runs up to this many jobs at once, each in its own thread
    and event loop (``job_executor: thread``)."""


@dataclass(frozen=True)
class StartInference:
    """First frame to an inference process: load these runners, then answer ``Ready``."""

    runners: tuple[str, ...]
    """``module:qualname`` of each livekit-agents inference runner class."""
    log_level: str = "INFO"


@dataclass(frozen=True)
class ZygoteStart:
    """First frame to a template (``lksup.jobs.zygote``); answered by ``ZygoteReady``."""

    preload: tuple[str, ...] = ()
    """Shared modules to import first (a failure is reported, not fatal)."""
    imports: tuple[str, ...] = ()
    """The agent's own modules (an agent template; a failure is the agent's init error)."""
    log_level: str = "INFO"
    agent_name: str = ""
    prepare: bytes = b""
    """An encoded ``Initialize`` (``encode_payload``) whose prewarm the template runs before it
    forks: its job processes then start prepared. Empty: they prewarm themselves."""


@dataclass(frozen=True)
class ForkTemplate:
    """Fork an agent template (sent with its control socket, stdout and stderr)."""

    request_id: str
    agent_name: str
    env: Mapping[str, str] = field(default_factory=dict, hash=False, repr=False)
    cwd: str = ""
    imports: tuple[str, ...] = ()
    log_level: str = "INFO"
    prepare: bytes = b""
    """As ``ZygoteStart.prepare``."""


@dataclass(frozen=True)
class ForkJob:
    """Fork a job process (sent with its IPC socket, stdout and stderr)."""

    request_id: str


@dataclass(frozen=True)
class OfferRequest:
    """Evaluate the request function for an offer; answered by ``OfferAnswer``."""

    job: bytes
    default_identity: str = ""
    default_name: str = ""
    default_metadata: str = ""
    default_attributes: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class AwaitJob:
    """An offer was accepted for this process; its ``StartJob`` follows within a round trip.

    The process polls its socket for up to ``poll_s`` seconds instead of sleeping, so the job
    does not wait for the process to be woken (see ``IpcLoop.poll``). 0: do not poll.
    """

    job_id: str
    poll_s: float = 0.0


@dataclass(frozen=True)
class StartJob:
    """Run the job this process was reserved for; answered by ``JobStarted`` then ``JobEnded``."""

    job: bytes
    url: str
    token: str
    participant_identity: str = ""
    participant_name: str = ""
    participant_metadata: str = ""
    participant_attributes: Mapping[str, str] = field(default_factory=dict, hash=False)
    worker_id: str = ""
    received_at: float = 0.0
    """The dispatch timeline in wall-clock unix seconds (display and tracing only; 0: unknown)."""
    accepted_at: float = 0.0
    assigned_at: float = 0.0
    launched_at: float = 0.0


@dataclass(frozen=True)
class InferenceResponse:
    """The shared inference process's answer to an ``InferenceRequest``, relayed."""

    request_id: str
    data: bytes = b""
    has_data: bool = False
    """False: the runner returned None."""
    error: str = ""


@dataclass(frozen=True)
class OutcomeReported:
    """The job's outcome reached the server (answer to ``JobOutcome``)."""

    job_id: str


@dataclass(frozen=True)
class Shutdown:
    """End the job (or stop an idle process)."""

    reason: str = ""
    job_id: str = ""
    """A thread host: end this job only. Empty: the job, or the whole process."""


@dataclass(frozen=True)
class Ping:
    """Health check; answered by a ``Pong`` with the same ``sent_at_ns`` from the event loop."""

    sent_at_ns: int


# ---- child -> supervisor -------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """The answer to ``Initialize``; a non-empty ``error`` means the process is about to exit."""

    pid: int
    error: str = ""
    init_seconds: float = 0.0
    sdk_version: str = ""
    """The livekit-agents version (runtime ``livekit-agents``)."""
    inference_runners: tuple[str, ...] = ()
    """``module:qualname`` of each inference runner the agent's imports registered."""


@dataclass(frozen=True)
class OfferAnswer:
    """The request function's decision (``error``: it failed, which is a decline)."""

    accept: bool
    terminate: bool = False
    identity: str = ""
    name: str = ""
    metadata: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict, hash=False)
    error: str = ""
    job_id: str = ""  # the offer this answers


@dataclass(frozen=True)
class JobStarted:
    """The entrypoint has been called."""

    job_id: str


@dataclass(frozen=True)
class JobEnded:
    """The job is over (``error`` empty: success); the process exits next.

    ``local_models``: the SDK's local models (``"eot"``, ``"vad"``) the process has used so far.
    """

    job_id: str
    error: str = ""
    reason: str = ""
    local_models: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobOutcome:
    """The job's outcome is known and the room is about to be left: report it to the server.

    Answered by ``OutcomeReported``; ``JobEnded`` still follows when the job is over.
    """

    job_id: str
    error: str = ""
    reason: str = ""


@dataclass(frozen=True)
class Pong:
    """Answer to ``Ping``."""

    sent_at_ns: int


@dataclass(frozen=True)
class LogRecord:
    """One logging record of the child, already formatted."""

    level: int
    logger: str
    message: str
    created: float = 0.0
    """Wall-clock seconds (display only)."""
    exc_text: str = ""
    fields: Mapping[str, str] = field(default_factory=dict, hash=False)
    """The record's extra attributes (the SDK's job context fields, ``extra=``), as text."""
    job_id: str = ""
    """In a job host: the job whose thread logged it (empty: the host's own, or unknown)."""


@dataclass(frozen=True)
class ZygoteReady:
    """A template's answer to ``ZygoteStart``; a non-empty ``error`` means it is exiting."""

    pid: int
    error: str = ""
    init_seconds: float = 0.0
    plugins: tuple[str, ...] = ()
    """``livekit.plugins.*`` modules loaded, which the base template can preload."""
    preload_failed: tuple[str, ...] = ()
    """``module: error`` of each preload that could not be imported."""
    prepared: bool = False
    """It ran the prewarm of ``ZygoteStart.prepare``: its job processes start prepared."""
    unforkable: str = ""
    """Non-empty: that prewarm left the template unsafe to fork (threads still running,
    descriptors open), and why; the supervisor stops it, and the agent's processes prewarm
    themselves."""


@dataclass(frozen=True)
class Forked:
    """A fork request's answer (the child's pidfd travels with it when ``pid`` is set)."""

    request_id: str
    pid: int = 0
    error: str = ""


@dataclass(frozen=True)
class Exited:
    """A template's child ended; ``returncode`` is negative for a signal."""

    pid: int
    returncode: int


@dataclass(frozen=True)
class InferenceRequest:
    """A job's inference request (``ctx.inference_executor``); answered by ``InferenceResponse``."""

    request_id: str
    method: str
    data: bytes = b""


# An inference request goes job process -> supervisor -> inference process, and its response
# back the same way: both directions carry both.
ParentMessage: TypeAlias = (
    Initialize
    | ZygoteStart
    | ForkTemplate
    | ForkJob
    | StartInference
    | OfferRequest
    | AwaitJob
    | StartJob
    | OutcomeReported
    | Shutdown
    | Ping
    | InferenceRequest
    | InferenceResponse
)
ChildMessage: TypeAlias = (
    Ready
    | OfferAnswer
    | JobStarted
    | JobEnded
    | JobOutcome
    | Pong
    | LogRecord
    | InferenceRequest
    | InferenceResponse
    | ZygoteReady
    | Forked
    | Exited
)
Message: TypeAlias = ParentMessage | ChildMessage

#: Each message type and the name of its field in ``Envelope.message``.
_ONEOF: dict[type[Message], str] = {
    Initialize: "initialize",
    OfferRequest: "offer_request",
    AwaitJob: "await_job",
    StartJob: "start_job",
    Shutdown: "shutdown",
    Ping: "ping",
    InferenceResponse: "inference_response",
    StartInference: "start_inference",
    ZygoteStart: "zygote_start",
    ForkTemplate: "fork_template",
    ForkJob: "fork_job",
    OutcomeReported: "outcome_reported",
    JobOutcome: "job_outcome",
    ZygoteReady: "zygote_ready",
    Forked: "forked",
    Exited: "exited",
    Ready: "ready",
    OfferAnswer: "offer_answer",
    JobStarted: "job_started",
    JobEnded: "job_ended",
    Pong: "pong",
    LogRecord: "log",
    InferenceRequest: "inference_request",
}
_BY_ONEOF: dict[str, type[Message]] = {name: cls for cls, name in _ONEOF.items()}


def _fields(msg: Message) -> dict[str, Any]:
    return {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, Mapping):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_clean(v) for v in value)
    return value


def _envelope(msg: Message, values: dict[str, Any]) -> pb.Envelope:
    envelope = pb.Envelope()
    getattr(envelope, _ONEOF[type(msg)]).CopyFrom(_pb_class(msg)(**values))
    return envelope


def _pb_class(msg: Message) -> type[_PbMessage]:
    cls: type[_PbMessage] = getattr(pb, type(msg).__name__)
    return cls


def encode_payload(msg: Message) -> bytes:
    """``msg`` as a serialized ``Envelope`` (no length prefix).

    Raises:
        ValueError: a number is outside its field's range (``pid``, ``level``: int32;
            ``sent_at_ns``: int64).
    """
    values = _fields(msg)
    try:
        envelope = _envelope(msg, values)
    except UnicodeEncodeError:
        envelope = _envelope(msg, {name: _clean(value) for name, value in values.items()})
    return envelope.SerializeToString()


def encode(msg: Message, *, max_size: int = MAX_FRAME_SIZE) -> bytes:
    """``msg`` as one frame, ready to write to the socket.

    Raises:
        FrameTooLarge: the message is larger than ``max_size`` once serialized.
        ValueError: a number is outside its field's range (see ``encode_payload``).
    """
    return encode_frame(encode_payload(msg), max_size=max_size)


def decode(payload: bytes) -> Message:
    """The message in one frame's payload.

    Raises:
        IpcError: the payload is not an ``Envelope``, or it carries no known message.
    """
    envelope = pb.Envelope()
    try:
        envelope.ParseFromString(payload)
    except DecodeError as exc:
        raise IpcError(f"undecodable IPC frame: {exc}") from None
    which = envelope.WhichOneof("message")
    if which is None:
        raise IpcError("IPC frame carries no known message (empty, or from a newer schema)")
    cls = _BY_ONEOF[which]
    inner = getattr(envelope, which)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        value = getattr(inner, f.name)
        if isinstance(value, Mapping):
            value = dict(value)
        elif not isinstance(value, str | bytes | int | float):  # a repeated field
            value = tuple(value)
        values[f.name] = value
    return cls(**values)


#: Another interpreter (an agent's ``python:``) runs lksup's modules through this, so that a
#: missing lksup is one clear exit status instead of a traceback.
_BOOTSTRAP = """\
import importlib.util, runpy, sys
try:  # lksup and what it needs (its source alone on sys.path is not an installation)
    import anyio, google.protobuf, lksup.jobs.ipc
    found = importlib.util.find_spec(MODULE) is not None
except ImportError as exc:
    sys.stderr.write("cannot import lksup's job runtime: " + str(exc) + "\\n")
    found = False
if not found:
    sys.stderr.write("cannot import " + MODULE + " (is lksup installed here?)\\n")
    sys.exit(CODE)
runpy.run_module(MODULE, run_name="__main__", alter_sys=True)
"""


def launch_command(python: str, module: str, *args: str) -> list[str]:
    """The command line that runs lksup's ``module`` (``python -m``) on ``python``.

    Empty ``python``: the supervisor's own interpreter. Another interpreter that cannot import
    ``module`` exits with ``ExitCode.RUNTIME_MISSING``.
    """
    if not python:
        return [sys.executable, "-m", module, *args]
    code = _BOOTSTRAP.replace("MODULE", repr(module)).replace(
        "CODE", str(int(ExitCode.RUNTIME_MISSING))
    )
    return [python, "-c", code, *args]


def runtime_missing_message(python: str) -> str:
    """What to do when ``python`` cannot import lksup's job runtime."""
    from lksup import __version__

    return (
        f"lksup's job runtime cannot be imported by {python}: install lksup there "
        f"(`{python} -m pip install 'lksup=={__version__}'`, or `pip install -e` of this "
        "checkout)"
    )
