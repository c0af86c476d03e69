"""One worker connection, from the WebSocket upgrade to the dropped socket.

``WorkerSession`` is the server side of one ``/agent`` connection (reference §2.1, §2.2, §2.4,
§2.6-§2.9). It reads messages in order, answers them, and offers jobs when the server asks
(``assign_job``); the server owns the pools, this class owns the connection's state.

Invariants:

* Before registration only ``ping`` and ``register`` are accepted, within an absolute deadline
  counted from the upgrade; anything else, a second ``register``, an empty or unknown oneof,
  an undecodable frame, an invalid job type or deployment ends the session. Ending means
  ``run`` returns and the transport drops the TCP connection **without** a close frame: no
  error message is ever sent.
* The ``register`` answer is sent first; only then does the worker join its pool.
* A job offer waits for the first of: the worker's answer (matched by ``job_id`` on this
  connection only), the caller's timeout, or the session ending. Late or unknown answers are
  logged and ignored.
* ``running_jobs`` holds accepted jobs until ``update_job`` reports SUCCESS/FAILED or the
  server sends a termination; a dropped session forgets them and tells nobody.
* Messages go out in the format of the last frame received (binary protobuf or JSON text).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Protocol

import anyio

from lksup.devserver import auth, codec, model
from lksup.devserver.dispatch import ASSIGN_TIMEOUT, Verdict, token_attributes, verdict
from lksup.devserver.http import ChannelClosed

_log = logging.getLogger(__name__)


class Channel(Protocol):
    """A message-oriented connection (``http.WebSocketChannel``)."""

    async def receive(self) -> bytes | str:
        """The next data message. Raises ``ChannelClosed`` when the connection ended."""
        ...

    async def send(self, payload: bytes | str) -> None:
        """Send one message. Raises ``ChannelClosed`` when the connection ended."""
        ...


class Hub(Protocol):
    """What a session needs from the server."""

    def worker_registered(self, session: WorkerSession) -> None:
        """The session registered; add it to its pool."""

    def worker_changed(self, session: WorkerSession) -> None:
        """The session's status, load or jobs changed."""

    def worker_closed(self, session: WorkerSession) -> None:
        """The session ended; forget it."""

    def new_id(self, prefix: str) -> str:
        """A fresh random ID with ``prefix`` (``AJ_`` ...)."""

    def wall_time(self) -> float:
        """Unix time in seconds (for timestamps and tokens)."""


@dataclass(frozen=True)
class SessionSettings:
    """Per-server settings every session shares."""

    register_timeout: float
    server_info: codec.ServerInfo
    trace: bool = False


class Outcome(enum.Enum):
    """How one job offer to one worker ended."""

    ACCEPTED = "accepted"
    TERMINATED = "terminated"
    NOT_AVAILABLE = "not available"
    WORKER_CLOSED = "worker closed"
    TIMEOUT = "timeout"
    DUPLICATE = "duplicate"
    SEND_FAILED = "send failed"
    DROPPED = "dropped"


#: Outcomes after which the next worker is tried.
RETRY = frozenset({Outcome.NOT_AVAILABLE, Outcome.WORKER_CLOSED})


@dataclass(frozen=True)
class AssignResult:
    """``job`` carries the final state for ACCEPTED (RUNNING) and TERMINATED (SUCCESS)."""

    outcome: Outcome
    job: model.Job | None = None


@dataclass(frozen=True)
class WorkerInfo:
    """A snapshot of one registered worker."""

    id: str
    agent_name: str
    namespace: str
    job_type: int
    deployment: str
    version: str
    status: int
    load: float
    permissions: model.Permissions
    api_key: str
    running_jobs: tuple[str, ...]


class _Drop(Exception):
    """The session ends; the message says why (for the log)."""


class _Pending:
    __slots__ = ("answer", "closed", "event")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.answer: model.Availability | None = None
        self.closed = False


class WorkerSession:
    """The server side of one worker connection."""

    def __init__(
        self,
        worker_id: str,
        channel: Channel,
        *,
        api_key: str,
        secret: str,
        hub: Hub,
        settings: SessionSettings,
        upgraded_at: float,
    ) -> None:
        self.id = worker_id
        self.api_key = api_key
        self._secret = secret
        self._channel = channel
        self._hub = hub
        self._settings = settings
        self._register_deadline = upgraded_at + settings.register_timeout
        self.registration: model.Register | None = None
        self.permissions = model.DEFAULT_PERMISSIONS
        self.status: int = model.WorkerStatus.AVAILABLE
        self.load = 0.0
        self.running_jobs: dict[str, model.Job] = {}
        self.trace: list[codec.TraceEntry] | None = [] if settings.trace else None
        self.closed = False
        self._pending: dict[str, _Pending] = {}
        self._text = False

    @property
    def key(self) -> model.PoolKey:
        """The pool this worker belongs to (only meaningful once registered)."""
        reg = self.registration
        if reg is None:
            raise RuntimeError("worker is not registered")
        return model.PoolKey(reg.agent_name, reg.namespace, reg.job_type, reg.deployment)

    def info(self) -> WorkerInfo:
        """A snapshot for ``DevServer.workers()``."""
        reg = self.registration or model.Register(0, "", "", "", "", None)
        return WorkerInfo(
            id=self.id,
            agent_name=reg.agent_name,
            namespace=reg.namespace,
            job_type=reg.job_type,
            deployment=reg.deployment,
            version=reg.version,
            status=self.status,
            load=self.load,
            permissions=self.permissions,
            api_key=self.api_key,
            running_jobs=tuple(self.running_jobs),
        )

    async def run(self) -> None:
        """Serve the connection; return when the socket is to be dropped."""
        try:
            async with anyio.create_task_group() as tg:
                try:
                    await self._serve(tg)
                except _Drop as exc:
                    _log.info("Worker %s closed: %s.", self.id, exc)
                tg.cancel_scope.cancel()
        finally:
            self._close()

    # --- reading -----------------------------------------------------------------------------

    async def _next(self) -> model.WorkerEvent:
        try:
            payload = await self._channel.receive()
        except ChannelClosed:
            raise _Drop("connection closed") from None
        self._text = isinstance(payload, str)
        try:
            event, message = codec.decode(payload)
        except codec.UndecodableMessage as exc:
            raise _Drop(str(exc)) from None
        if self.trace is not None:
            kind = message.WhichOneof("message") or ""
            self.trace.append(
                codec.TraceEntry("recv", kind, message, self._text, anyio.current_time())
            )
        return event

    async def _serve(self, tg: anyio.abc.TaskGroup) -> None:
        with anyio.CancelScope(deadline=self._register_deadline) as scope:
            await self._handshake()
        if scope.cancelled_caught:
            raise _Drop("no registration before the deadline")
        while True:
            event = await self._next()
            match event:
                case model.Ping(timestamp=ts):
                    await self._send(codec.pong(ts, self._now_ms()))
                case model.UpdateWorker(status=status, load=load):
                    if status is not None:
                        self.status = status
                    self.load = load
                    self._hub.worker_changed(self)
                case model.Availability():
                    self._deliver(event)
                case model.UpdateJob():
                    self._update_job(event)
                case model.SimulateJob():
                    tg.start_soon(self._simulate, event)
                case model.MigrateJob():
                    _log.debug("Worker %s: migrate_job ignored.", self.id)
                case model.Register():
                    raise _Drop("second register")

    async def _handshake(self) -> None:
        while True:
            event = await self._next()
            if isinstance(event, model.Ping):
                await self._send(codec.pong(event.timestamp, self._now_ms()))
            elif isinstance(event, model.Register):
                await self._register(event)
                return
            else:
                raise _Drop(f"{type(event).__name__} before registration")

    async def _register(self, event: model.Register) -> None:
        if event.job_type not in model.JOB_TYPES:
            raise _Drop("invalid job type")
        if not model.valid_deployment(event.deployment):
            raise _Drop("invalid deployment")
        self.registration = event
        if event.permissions is not None:
            self.permissions = event.permissions
        await self._send(codec.register_response(self.id, self._settings.server_info))
        self._hub.worker_registered(self)
        _log.info("Worker %s registered (agent %r).", self.id, event.agent_name)

    def _deliver(self, event: model.Availability) -> None:
        pending = self._pending.pop(event.job_id, None)
        if pending is None:
            _log.warning("Worker %s: answer for unknown job %s ignored.", self.id, event.job_id)
            return
        pending.answer = event
        pending.event.set()

    def _update_job(self, event: model.UpdateJob) -> None:
        job = self.running_jobs.get(event.job_id)
        if job is None:
            _log.debug("Worker %s: update for unknown job %s ignored.", self.id, event.job_id)
            return
        job = model.status_updated(
            job, status=event.status, error=event.error, now_ns=self._now_ns()
        )
        if job.state.status in model.ENDED:
            del self.running_jobs[event.job_id]
            _log.info("Job %s ended on worker %s.", event.job_id, self.id)
        else:
            self.running_jobs[event.job_id] = job
        self._hub.worker_changed(self)

    async def _simulate(self, event: model.SimulateJob) -> None:
        reg = self.registration
        assert reg is not None  # only reachable after registration
        job_type = model.JobType.PUBLISHER if event.participant is not None else model.JobType.ROOM
        job = model.Job(
            id=self._hub.new_id("AJ_"),
            type=job_type,
            room=event.room,
            participant=event.participant,
            namespace=reg.namespace,
            agent_name=reg.agent_name,
        )
        result = await self.assign_job(job, timeout=ASSIGN_TIMEOUT)
        _log.info("Simulated job %s: %s.", job.id, result.outcome.value)

    # --- writing -----------------------------------------------------------------------------

    async def _send(self, out: codec.Outgoing) -> None:
        payload = codec.encode(out, text=self._text)
        if self.trace is not None:
            self.trace.append(
                codec.TraceEntry("send", out.kind, out.message, self._text, anyio.current_time())
            )
        try:
            await self._channel.send(payload)
        except ChannelClosed:
            raise _Drop("connection closed") from None

    async def assign_job(self, job: model.Job, *, timeout: float) -> AssignResult:
        """Offer ``job`` to this worker and, if it accepts, assign it (``Worker.AssignJob``)."""
        if self.closed or self.registration is None:
            return AssignResult(Outcome.WORKER_CLOSED)
        if job.id in self._pending:
            return AssignResult(Outcome.DUPLICATE)
        job = model.offered(job, worker_id=self.id, now_ns=self._now_ns())
        pending = _Pending()
        self._pending[job.id] = pending
        try:
            await self._send(codec.availability_request(job))
            with anyio.move_on_after(timeout):
                await pending.event.wait()
        except _Drop:
            return AssignResult(Outcome.SEND_FAILED)
        finally:
            if self._pending.get(job.id) is pending:
                del self._pending[job.id]
        if pending.closed:
            return AssignResult(Outcome.WORKER_CLOSED)
        answer = pending.answer
        if answer is None:
            return AssignResult(Outcome.TIMEOUT)
        match verdict(available=answer.available, terminate=answer.terminate):
            case Verdict.TERMINATED:
                done = model.ended(job, status=model.StatusCode.SUCCESS, now_ns=self._now_ns())
                return AssignResult(Outcome.TERMINATED, done)
            case Verdict.RETRY:
                return AssignResult(Outcome.NOT_AVAILABLE)
        job = model.accepted(job, participant_identity=answer.participant_identity)
        return await self._assign(job, answer)

    async def _assign(self, job: model.Job, answer: model.Availability) -> AssignResult:
        if job.room is None:
            # The real server dereferences the nil room here and crashes; we drop the job.
            _log.error("Simulated job %s accepted without a room; dropped.", job.id)
            return AssignResult(Outcome.DROPPED)
        request = auth.JobTokenRequest(
            room=job.room.name,
            identity=answer.participant_identity,
            name=answer.participant_name,
            metadata=answer.participant_metadata,
            attributes=token_attributes(answer.participant_attributes, job.agent_name),
            permissions=self.permissions,
        )
        token = auth.job_token(self.api_key, self._secret, request, now=self._hub.wall_time())
        try:
            await self._send(codec.assignment(job, token))
        except _Drop:
            return AssignResult(Outcome.SEND_FAILED)
        self.running_jobs[job.id] = job
        self._hub.worker_changed(self)
        _log.info("Job %s assigned to worker %s.", job.id, self.id)
        return AssignResult(Outcome.ACCEPTED, job)

    async def terminate_job(self, job_id: str) -> model.Job | None:
        """Send ``termination`` and mark the job ended at once; None for an unknown job."""
        job = self.running_jobs.get(job_id)
        if job is None or self.closed:
            return None
        try:
            await self._send(codec.termination(job_id))
        except _Drop:
            _log.debug("Worker %s: termination of %s not sent.", self.id, job_id)
        job = model.status_updated(
            job, status=model.StatusCode.SUCCESS, error="", now_ns=self._now_ns()
        )
        self.running_jobs.pop(job_id, None)
        self._hub.worker_changed(self)
        return job

    # --- helpers -----------------------------------------------------------------------------

    def _close(self) -> None:
        self.closed = True
        for pending in self._pending.values():
            pending.closed = True
            pending.event.set()
        self._pending.clear()
        self.running_jobs.clear()
        self._hub.worker_closed(self)

    def _now_ns(self) -> int:
        return int(self._hub.wall_time() * 1e9)

    def _now_ms(self) -> int:
        return int(self._hub.wall_time() * 1e3)
