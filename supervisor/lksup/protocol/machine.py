r"""The worker connection of one agent as a sans-I/O state machine.

Inputs are calls with an explicit ``now`` (seconds on any monotonic clock): lifecycle
(``start``, ``connection_opened``, ``connection_failed``, ``connection_lost``, ``stop``), frames
(``receive``, ``receive_text``), time (``tick``), and the agent's decisions (``set_load``,
``answer``, ``job_started``, ``job_ended``, ``drain``, ``undrain``, ``simulate``). Outputs are
pulled: ``data_to_send()`` (binary frames), ``events()`` and ``commands()`` (for the shell), and
``next_deadline()`` (when ``tick`` must run next).

States::

    IDLE -> CONNECTING -> REGISTERING -> READY --(lost)--> BACKOFF -> CONNECTING ...
                  \-----(failed)------------------------> BACKOFF / FAILED (max_retry)
    any --(stop, or drained with no job left)--> CLOSED

Invariants (checked by property tests):
- an offer is never accepted while draining or while the agent reports itself full;
- accepted-but-unassigned offers (reservations) plus running jobs never exceed ``max_jobs``;
- a reservation lasts until its assignment arrives or ``assignment_timeout`` passes;
- the failed-attempt counter resets only when a connection registers, so a server that
  accepts sockets but never registers ends in FAILED after ``max_retry`` attempts;
- jobs survive reconnects; after re-registration they are reported with ``migrate_job``;
- nothing the server sends raises: bad input becomes a ``ProtocolViolation`` event, and a
  reconnect when the connection cannot be trusted any more.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from lksup.protocol import codec
from lksup.protocol.backoff import Backoff
from lksup.protocol.events import (
    Accept,
    Answer,
    CloseConnection,
    Command,
    ConnectionClosed,
    Decline,
    DeclineCause,
    Drained,
    Event,
    GaveUp,
    Job,
    JobAssigned,
    JobStatus,
    JobType,
    OfferAnswered,
    OfferReceived,
    OpenConnection,
    Permissions,
    PongReceived,
    ProtocolViolation,
    Registered,
    RegisterResponse,
    ReservationExpired,
    TerminationRequested,
    UnknownMessage,
    WorkerStatus,
)

STATUS_INTERVAL = 2.5
REGISTER_TIMEOUT = 10.0
ASSIGNMENT_TIMEOUT = 7.5
LOAD_STEP = 0.01  # load changes smaller than this wait for the periodic update


class State(enum.Enum):
    """Where the connection is."""

    IDLE = "idle"
    CONNECTING = "connecting"
    REGISTERING = "registering"
    READY = "ready"
    BACKOFF = "backoff"
    FAILED = "failed"
    CLOSED = "closed"


class InvalidState(RuntimeError):
    """A call that makes no sense in the current state (a bug in the caller)."""


@dataclass
class _Job:
    job: Job
    status: JobStatus = JobStatus.PENDING
    ending: bool = False


@dataclass(frozen=True)
class Options:
    """What one agent registers with, and its protocol timings."""

    agent_name: str
    version: str
    job_type: JobType = JobType.ROOM
    permissions: Permissions = field(default_factory=Permissions)
    deployment: str = ""
    max_jobs: int | None = None
    max_retry: int = 16
    backoff: Backoff = field(default_factory=Backoff)
    register_timeout: float = REGISTER_TIMEOUT
    status_interval: float = STATUS_INTERVAL
    assignment_timeout: float = ASSIGNMENT_TIMEOUT


class WorkerMachine:
    """One agent's worker connection (see the module docstring)."""

    def __init__(self, options: Options, *, rand: Callable[[], float]) -> None:
        self.options = options
        self._rand = rand
        self.state = State.IDLE
        self.worker_id: str | None = None
        self.attempts = 0  # consecutive failed connection attempts
        self.load = 0.0
        self.full = False
        self.draining = False
        self.last_error = ""
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self._commands: list[Command] = []
        self._jobs: dict[str, _Job] = {}
        self._offers: dict[str, Job] = {}  # offered on this connection, not yet answered
        self._reservations: dict[str, float] = {}  # job id -> expiry deadline
        self._register_deadline: float | None = None
        self._retry_deadline: float | None = None
        self._status_deadline: float | None = None
        self._sent_status: tuple[WorkerStatus, float, int, bool] | None = None

    # --- outputs ---------------------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        """Binary frames to write, in order (cleared by the call)."""
        out, self._out = self._out, []
        return out

    def data_to_send_pending(self) -> bool:
        """Whether frames are queued (without taking them)."""
        return bool(self._out)

    def events(self) -> list[Event]:
        """What happened since the last call."""
        events, self._events = self._events, []
        return events

    def commands(self) -> list[Command]:
        """What the shell must do (open or close the connection)."""
        commands, self._commands = self._commands, []
        return commands

    def next_deadline(self) -> float | None:
        """When ``tick`` must be called next (None: only on input)."""
        deadlines = [
            d
            for d in (self._register_deadline, self._retry_deadline, self._status_deadline)
            if d is not None
        ]
        deadlines.extend(self._reservations.values())
        return min(deadlines) if deadlines else None

    # --- introspection -----------------------------------------------------------------------

    @property
    def status(self) -> WorkerStatus:
        """FULL when draining, reported full, or at ``max_jobs``; else AVAILABLE."""
        at_capacity = self.options.max_jobs is not None and self.job_count >= self.options.max_jobs
        return (
            WorkerStatus.FULL
            if self.draining or self.full or at_capacity
            else WorkerStatus.AVAILABLE
        )

    @property
    def job_count(self) -> int:
        """Running jobs plus reservations."""
        return len(self._jobs) + len(self._reservations)

    @property
    def running_jobs(self) -> dict[str, Job]:
        """Jobs assigned and not yet ended."""
        return {job_id: entry.job for job_id, entry in self._jobs.items()}

    @property
    def reservations(self) -> frozenset[str]:
        """Accepted offers waiting for their assignment."""
        return frozenset(self._reservations)

    @property
    def connected(self) -> bool:
        """Whether a socket is open (registering or registered)."""
        return self.state in (State.REGISTERING, State.READY)

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin connecting (from IDLE, or again after FAILED)."""
        if self.state not in (State.IDLE, State.FAILED):
            raise InvalidState(f"start() in state {self.state.value}")
        self.attempts = 0
        self._connect()

    def _connect(self) -> None:
        self.state = State.CONNECTING
        self._retry_deadline = None
        self._commands.append(OpenConnection())

    def connection_opened(self, now: float) -> None:
        """The WebSocket is open: register."""
        if self.state is not State.CONNECTING:
            raise InvalidState(f"connection_opened() in state {self.state.value}")
        self.state = State.REGISTERING
        self._register_deadline = now + self.options.register_timeout
        self._out.append(
            codec.encode_register(
                agent_name=self.options.agent_name,
                job_type=self.options.job_type,
                version=self.options.version,
                permissions=self.options.permissions,
                deployment=self.options.deployment,
            )
        )

    def connection_failed(self, now: float, reason: str) -> None:
        """Opening the WebSocket failed (refused, TLS, HTTP 401, timeout...)."""
        if self.state is not State.CONNECTING:
            raise InvalidState(f"connection_failed() in state {self.state.value}")
        self._failed_attempt(now, reason)

    def connection_lost(self, now: float, reason: str) -> None:
        """The open WebSocket ended (closed by either side, or broken)."""
        if self.state not in (State.REGISTERING, State.READY):
            return  # already handled (e.g. we asked for the close ourselves)
        registered = self.state is State.READY
        self._drop_connection_state()
        if self._drained():
            return
        if registered:
            self._schedule_retry(now, reason)
        else:
            self._failed_attempt(now, reason)

    def stop(self, now: float, *, code: int = 1000, reason: str = "supervisor stopping") -> None:
        """Close for good (no reconnect). Running jobs are the caller's to stop."""
        if self.connected:
            self._commands.append(CloseConnection(code, reason))
        self._drop_connection_state()
        self._retry_deadline = None
        self.state = State.CLOSED

    def _drop_connection_state(self) -> None:
        self.worker_id = None
        self._offers.clear()
        for job_id in list(self._reservations):  # their assignments can no longer arrive
            del self._reservations[job_id]
            self._events.append(ReservationExpired(job_id))
        self._register_deadline = None
        self._status_deadline = None
        self._sent_status = None

    def _failed_attempt(self, now: float, reason: str) -> None:
        self.attempts += 1
        self.last_error = reason
        limit = self.options.max_retry
        if limit and self.attempts >= limit:
            self.state = State.FAILED
            self._retry_deadline = None
            self._events.append(ConnectionClosed(reason, None))
            self._events.append(GaveUp(self.attempts, reason))
            return
        self._schedule_retry(now, reason)

    def _schedule_retry(self, now: float, reason: str) -> None:
        delay = self.options.backoff.delay(self.attempts, self._rand())
        self.state = State.BACKOFF
        self.last_error = reason
        self._retry_deadline = now + delay
        self._events.append(ConnectionClosed(reason, delay))

    def _abort(self, now: float, description: str) -> None:
        """The connection cannot be trusted: close it and reconnect."""
        self._events.append(ProtocolViolation(description, fatal=True))
        self._commands.append(CloseConnection(1002, description[:120]))
        self.connection_lost(now, description)

    # --- time ---------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Act on every deadline that has passed."""
        if self._register_deadline is not None and now >= self._register_deadline:
            self._register_deadline = None
            self._commands.append(CloseConnection(1000, "no register response"))
            self.connection_lost(now, "no register response in time")
        if self._retry_deadline is not None and now >= self._retry_deadline:
            self._connect()
        for job_id, deadline in list(self._reservations.items()):
            if now >= deadline:
                del self._reservations[job_id]
                self._events.append(ReservationExpired(job_id))
                self._status_changed(now)
        if self.state is State.READY:
            if self._drained():
                return
            if self._status_deadline is not None and now >= self._status_deadline:
                self._send_status(now)

    # --- frames ----------------------------------------------------------------------------------

    def receive_text(self, text: str, now: float) -> None:
        """A text frame: the server switched to JSON, which this client never asked for."""
        del text
        self._events.append(ProtocolViolation("text frame ignored (expected binary)", fatal=False))

    def receive(self, data: bytes, now: float) -> None:
        """One binary frame from the server."""
        if not self.connected:
            return
        try:
            message = codec.decode_server(data)
        except codec.CodecError as exc:
            self._abort(now, str(exc))
            return
        if isinstance(message, RegisterResponse):
            self._on_register(message, now)
        elif self.state is not State.READY:
            self._abort(now, f"{type(message).__name__} before the register response")
        elif isinstance(message, OfferReceived):
            self._on_offer(message, now)
        elif isinstance(message, JobAssigned):
            self._on_assignment(message, now)
        elif isinstance(message, TerminationRequested):
            self._on_termination(message)
        elif isinstance(message, PongReceived):
            self._events.append(message)
        elif isinstance(message, UnknownMessage):
            self._events.append(
                ProtocolViolation(
                    f"unknown server message (field {message.field_number}) ignored", fatal=False
                )
            )

    def _on_register(self, message: RegisterResponse, now: float) -> None:
        if self.state is not State.REGISTERING:
            self._abort(now, "a second register response")
            return
        self.state = State.READY
        self.worker_id = message.worker_id
        self._register_deadline = None
        self._events.append(Registered(message.worker_id, message.server_version, self.attempts))
        self.attempts = 0
        self.last_error = ""
        if self._jobs:
            self._out.append(codec.encode_migrate(sorted(self._jobs)))
        self._send_status(now)

    def _on_offer(self, message: OfferReceived, now: float) -> None:
        job = message.job
        if self.status is WorkerStatus.FULL:
            reason: DeclineCause = "draining" if self.draining else "full"
            self._send_answer(job.id, Decline(reason=reason, cause=reason))
            return
        self._offers[job.id] = job
        self._events.append(message)

    def _on_assignment(self, message: JobAssigned, now: float) -> None:
        job_id = message.job.id
        reserved = self._reservations.pop(job_id, None) is not None
        if job_id in self._jobs:
            self._events.append(
                ProtocolViolation(f"duplicate assignment of job {job_id} ignored", fatal=False)
            )
            return
        if not reserved and self._at_capacity():
            self._out.append(
                codec.encode_job_status(job_id, JobStatus.FAILED, "no capacity for this job")
            )
            self._events.append(
                ProtocolViolation(f"unexpected assignment of job {job_id} declined", fatal=False)
            )
            return
        self._jobs[job_id] = _Job(message.job)
        self._events.append(message)
        self._status_changed(now)

    def _on_termination(self, message: TerminationRequested) -> None:
        entry = self._jobs.get(message.job_id)
        if entry is None or entry.ending:
            return  # idempotent: unknown or already ending
        entry.ending = True
        self._events.append(message)

    # --- the agent's decisions -------------------------------------------------------------------

    def set_load(self, load: float, *, full: bool, now: float) -> None:
        """The agent's current load (clamped to [0, 1]) and whether it considers itself full."""
        self.load = min(1.0, max(0.0, load))
        self.full = full
        self._status_changed(now)

    def answer(self, job_id: str, answer: Answer, now: float) -> Answer | None:
        """Answer an offer; returns what was sent, or None when the offer is gone.

        The machine may turn an accept into a decline (draining, full, at capacity) and fills
        an empty identity. An offer is gone once answered or when its connection was lost.
        """
        job = self._offers.pop(job_id, None)
        if job is None or self.state is not State.READY:
            return None
        if isinstance(answer, Accept):
            if self.draining:
                answer = Decline(reason="draining", cause="draining")
            elif self.full or self._at_capacity():
                answer = Decline(reason="full", cause="full")
            elif not answer.identity:
                answer = Accept(
                    f"agent-{job_id}", answer.name, answer.metadata, dict(answer.attributes)
                )
        if isinstance(answer, Accept):
            self._reservations[job_id] = now + self.options.assignment_timeout
        self._send_answer(job_id, answer)
        if isinstance(answer, Accept):
            self._status_changed(now)
        return answer

    def _send_answer(self, job_id: str, answer: Answer) -> None:
        self._out.append(codec.encode_answer(job_id, answer, agent_name=self.options.agent_name))
        self._events.append(OfferAnswered(job_id, answer))

    def _at_capacity(self) -> bool:
        limit = self.options.max_jobs
        return limit is not None and self.job_count >= limit

    def job_started(self, job_id: str, now: float) -> None:
        """The job's entrypoint is running: report JS_RUNNING."""
        entry = self._jobs.get(job_id)
        if entry is None or entry.status is not JobStatus.PENDING:
            return
        entry.status = JobStatus.RUNNING
        if self.state is State.READY:
            self._out.append(codec.encode_job_status(job_id, JobStatus.RUNNING))

    def job_ended(self, job_id: str, *, error: str | None, now: float) -> None:
        """The job is over: report JS_SUCCESS, or JS_FAILED with ``error``."""
        entry = self._jobs.pop(job_id, None)
        if entry is None:
            return
        if self.state is State.READY:
            status = JobStatus.FAILED if error is not None else JobStatus.SUCCESS
            self._out.append(codec.encode_job_status(job_id, status, error or ""))
        self._status_changed(now)
        self._drained()

    def drain(self, now: float) -> None:
        """Stop taking jobs; close for good once the last job ends."""
        self.draining = True
        for job_id in list(self._offers):
            self._offers.pop(job_id)
            self._send_answer(job_id, Decline(reason="draining", cause="draining"))
        if not self._drained():
            self._status_changed(now)

    def undrain(self, now: float) -> None:
        """Take jobs again (if the connection was not closed already)."""
        if self.state is State.CLOSED:
            return
        self.draining = False
        self._status_changed(now)

    def simulate(self, room_name: str, participant_identity: str | None, now: float) -> None:
        """Ask the server for a job on this connection (``SimulateJobRequest``)."""
        if self.state is not State.READY:
            raise InvalidState("simulate() needs a registered connection")
        self._out.append(codec.encode_simulate(room_name, participant_identity))

    # --- status -----------------------------------------------------------------------------------

    def _drained(self) -> bool:
        if not self.draining or self.job_count or self.state is State.CLOSED:
            return False
        if self.connected:
            self._commands.append(CloseConnection(1001, "drained"))
        self._drop_connection_state()
        self._retry_deadline = None
        self.state = State.CLOSED
        self._events.append(Drained())
        return True

    def _status_changed(self, now: float) -> None:
        if self.state is not State.READY or self._sent_status is None:
            return
        status, load, count, draining = self._sent_status
        if (
            status is not self.status
            or count != self.job_count
            or draining != self.draining
            or abs(load - self.load) >= LOAD_STEP
        ):
            self._send_status(now)

    def _send_status(self, now: float) -> None:
        current = (self.status, self.load, self.job_count, self.draining)
        self._out.append(
            codec.encode_status(
                current[0], load=current[1], job_count=current[2], draining=current[3]
            )
        )
        self._sent_status = current
        self._status_deadline = now + self.options.status_interval
