"""One job process, seen from the supervisor: spawn, handshake, messages, health, stop.

A ``JobProcessHandle`` is a fresh interpreter (``python -m lksup.jobs.child``) in its own session
(signals sent to the supervisor's process group never reach it), in the agent's working
directory and environment, connected by a socketpair. ``run`` spawns it, sends ``Initialize``
and reports the handle through ``task_status`` once ``Ready`` arrives within the
initialisation timeout; it then serves until the process exits, and always reaps it.

Lifecycle: STARTING -> READY -> (RESERVED) -> RUNNING -> STOPPING -> EXITED. One process serves
at most one job. Invariants:

- both output pipes are drained for the process's whole life (a chatty child never blocks);
  every line and every forwarded logging record is logged with agent, job id and pid;
- the stop sequence is Shutdown over IPC -> ``shutdown_timeout`` -> SIGTERM -> ``term_grace``
  -> SIGKILL, and the process is always reaped (``stop`` is idempotent and bounded);
- a process that answers no ping for ``ping_timeout`` is killed and reported unresponsive;
- how a process ended is always known: ``JobEnded`` from the child, or its exit status (code or
  signal) turned into a reason such as "job process killed by signal SIGSEGV".
"""

from __future__ import annotations

import contextlib
import enum
import logging
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import anyio
import anyio.abc
from anyio.abc import SocketAttribute, UNIXSocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from lksup.fleet.budget import TERM_GRACE
from lksup.fleet.secrets import Redactor
from lksup.jobs import ipc
from lksup.jobs.framing import FrameDecoder, FramingError
from lksup.jobs.sigmask import blocked_while_spawning
from lksup.jobs.sockio import receive

log = logging.getLogger("lksup.pool")
job_log = logging.getLogger("lksup.job")

MAX_LINE = 8192
#: After a process exited, how long its last output may take to be read to the end.
OUTPUT_TAIL_TIMEOUT = 1.0


class ProcessState(enum.Enum):
    """Where a job process is in its life."""

    STARTING = "starting"
    READY = "ready"
    RESERVED = "reserved"
    RUNNING = "running"
    STOPPING = "stopping"
    EXITED = "exited"


def child_command(python: str, fd: int, *, module: str = "lksup.jobs.child") -> list[str]:
    """The command line of a job (or inference) process on IPC descriptor ``fd``."""
    return ipc.launch_command(python, module, "--ipc-fd", str(fd))


class InitFailed(Exception):
    """The process did not become ready (import or prewarm error, timeout, early exit)."""


class ProcessHandle(Protocol):
    """The OS process behind a ``JobProcessHandle``.

    Spawned (``anyio.abc.Process``) or forked from a template (``lksup.pool.zygote``).
    """

    @property
    def pid(self) -> int:
        """The process id."""
        ...

    @property
    def returncode(self) -> int | None:
        """The exit status once known (negative: a signal)."""
        ...

    @property
    def stdout(self) -> anyio.abc.ByteReceiveStream | None:
        """The process's standard output."""
        ...

    @property
    def stderr(self) -> anyio.abc.ByteReceiveStream | None:
        """The process's standard error."""
        ...

    async def wait(self) -> int:
        """Wait until it exited; its exit status."""
        ...

    def send_signal(self, signal: signal.Signals) -> None:
        """Signal it (``ProcessLookupError`` when it is gone)."""
        ...

    def kill(self) -> None:
        """SIGKILL it."""
        ...

    async def aclose(self) -> None:
        """Release what the handle holds (streams, descriptors)."""
        ...


class Launcher(Protocol):
    """Creates the OS process of a ``JobProcessHandle`` whose IPC socket end is ``child``."""

    async def launch(self, process: JobProcessHandle, child: socket.socket) -> ProcessHandle:
        """Start the process (raises ``InitFailed`` with the reason)."""
        ...


@dataclass(frozen=True)
class ProcessSpec:
    """How to start the job processes of one agent."""

    agent_name: str
    entrypoint: str
    prewarm: str = ""
    request_fnc: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    log_level: str = "INFO"
    shutdown_grace: float = 15.0
    initialize_timeout: float = 10.0
    shutdown_timeout: float = 10.0
    term_grace: float = TERM_GRACE
    ping_interval: float = 2.5
    ping_timeout: float = 60.0
    max_jobs: int = 1
    """Jobs one process runs at once: above 1, a thread host (``job_executor: thread``)."""
    secrets: frozenset[str] = field(default_factory=frozenset, repr=False)
    """Resolved secret values in ``env``: masked in everything the process says (its log
    records, stdout, stderr and error messages) before it reaches the supervisor's log."""
    runtime: str = ""
    """What the agent's functions are written against: lksup (empty) or livekit-agents."""
    session_end_fnc: str = ""
    """livekit-agents: run once the job's primary AgentSession closed."""
    python: str = ""
    """The interpreter of the job processes; empty: the supervisor's own."""


def _send_now(stream: UNIXSocketStream, data: bytes) -> int:
    """Write what the (non-blocking) socket takes now; how many bytes that was."""
    raw: socket.socket = stream.extra(SocketAttribute.raw_socket)
    try:
        return raw.send(data)
    except BlockingIOError:
        return 0


def initialize_message(spec: ProcessSpec) -> ipc.Initialize:
    """The ``Initialize`` that ``spec``'s job processes get (and their template prepares)."""
    return ipc.Initialize(
        agent_name=spec.agent_name,
        entrypoint=spec.entrypoint,
        prewarm=spec.prewarm,
        request_fnc=spec.request_fnc,
        log_level=spec.log_level,
        shutdown_grace=spec.shutdown_grace,
        runtime=spec.runtime,
        session_end_fnc=spec.session_end_fnc,
        max_jobs=spec.max_jobs if spec.max_jobs > 1 else 0,
    )


#: Why a job failed: it raised (or reported an error), its process exited or was killed by a
#: signal without reporting, the memory limit or the unresponsive check killed it, the
#: supervisor killed it for another reason, or no job process could be had for it.
FailureKind = Literal[
    "exception", "exit_code", "signal", "memory", "unresponsive", "killed", "no_process"
]


@dataclass
class _JobSlot:
    """One job of a process: when it started and how it ended."""

    started: anyio.Event = field(default_factory=anyio.Event)
    ended: anyio.Event = field(default_factory=anyio.Event)
    outcome: JobOutcome | None = None
    failure: str | None = None
    """The supervisor ended the process as a failure while this job ran: that wins."""
    failure_kind: FailureKind = "killed"
    room: str = ""
    worker_id: str = ""
    """The worker connection the job was assigned on (log fields)."""
    awaits_ack: bool = False
    """It reported its outcome before leaving its room and waits for it to be sent."""


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended: ``error`` None means success."""

    error: str | None
    reason: str
    kind: FailureKind | None = None
    """Why it failed, as a class (metrics count failures by it); None when it succeeded."""


def describe_exit(code: int | None) -> str:
    """A process's exit status as words (negative codes are signals)."""
    if code is None:
        return "job process still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"job process killed by signal {name}"
    return f"job process exited with code {code}"


class JobProcessHandle:
    """The supervisor's handle on one job process or job host (see the module docstring).

    Not to be confused with ``lksup.JobProcess``, what an agent's prewarm is given.
    """

    def __init__(self, spec: ProcessSpec, *, launcher: Launcher | None = None) -> None:
        self.spec = spec
        self.launcher = launcher
        self._scrub = Redactor(spec.secrets)
        self.state = ProcessState.STARTING
        self.pid: int | None = None
        self.job_id: str | None = None
        self.exit_code: int | None = None
        self.init_seconds = 0.0
        self.sdk_version = ""
        self.inference_runners: tuple[str, ...] = ()
        self.on_inference: Callable[[JobProcessHandle, ipc.InferenceRequest], None] | None = None
        self.on_inference_response: Callable[[ipc.InferenceResponse], None] | None = None
        self.on_local_models: Callable[[tuple[str, ...]], None] | None = None
        """Told which of the SDK's local models (``"eot"``, ``"vad"``) a job used."""
        self.generation = 0
        """The template generation it was forked from (0: spawned)."""
        self.jobs: dict[str, _JobSlot] = {}
        """Its jobs (several at once in a thread host), kept until the process exits."""
        self.started_at = 0.0
        self.ready_at: float | None = None
        self.job_started_at: float | None = None
        self._process: ProcessHandle | None = None
        self._stream: UNIXSocketStream | None = None
        self._send_lock = anyio.Lock(fast_acquire=True)  # uncontended: no loop trip
        self._ready = anyio.Event()
        self._ready_message: ipc.Ready | None = None
        self._exited = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._answers: dict[str, anyio.Event] = {}
        self._answer_values: dict[str, ipc.OfferAnswer] = {}
        self._last_pong = 0.0
        self._stop_reason: str | None = None
        self._stopping = False

    def __repr__(self) -> str:
        return f"JobProcessHandle({self.spec.agent_name}, pid={self.pid}, {self.state.value})"

    @property
    def alive(self) -> bool:
        """Spawned and not exited."""
        return self._process is not None and not self._exited.is_set()

    @property
    def stopping(self) -> bool:
        """The stop sequence (or a kill) was started by the supervisor."""
        return self._stopping

    @property
    def exit_description(self) -> str:
        """How the process ended, in words."""
        return describe_exit(self.exit_code)

    async def wait_exited(self) -> None:
        """Wait until the process has exited."""
        await self._exited.wait()

    def _extra(self, job_id: str | None = None) -> dict[str, object]:
        job_id = job_id or self.job_id
        extra: dict[str, object] = {
            "agent": self.spec.agent_name,
            "job_id": job_id,
            "pid": self.pid,
        }
        slot = self.jobs.get(job_id) if job_id else None
        if slot is not None:  # where the job is: its room and the worker it came through
            extra["room"] = slot.room or None
            extra["worker_id"] = slot.worker_id or None
        return extra

    # --- life -----------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[JobProcessHandle] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Spawn, initialise, report ready, serve until exit; always reap.

        Raises:
            InitFailed: before ``task_status.started``: the process could not become ready.
        """
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        parent.set_inheritable(False)
        self.started_at = anyio.current_time()
        process: ProcessHandle
        try:
            if self.launcher is not None:
                process = await self.launcher.launch(self, child)
            else:
                with blocked_while_spawning():  # no group signal before its setsid()
                    process = await anyio.open_process(
                        self._command(child.fileno()),
                        stdin=-3,  # DEVNULL
                        pass_fds=[child.fileno()],
                        start_new_session=True,
                        cwd=self.spec.cwd,
                        env=dict(self.spec.env),
                    )
        except OSError as exc:
            parent.close()
            raise InitFailed(f"cannot start a job process: {exc}") from None
        except BaseException:  # cancelled while starting, or InitFailed: no socket left open
            parent.close()
            raise
        finally:
            child.close()
        self._process = process
        self.pid = process.pid
        failure: str | None = None
        try:
            try:
                self._stream = await UNIXSocketStream.from_socket(parent)
            except BaseException:
                parent.close()
                raise
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._reader)
                drained = [anyio.Event(), anyio.Event()]
                tg.start_soon(
                    self._forward_output, process.stdout, logging.INFO, "stdout", drained[0]
                )
                tg.start_soon(
                    self._forward_output, process.stderr, logging.WARNING, "stderr", drained[1]
                )
                tg.start_soon(self._waiter)
                failure = await self._initialize()
                if failure is None:
                    self.state = ProcessState.READY
                    self.ready_at = anyio.current_time()
                    tg.start_soon(self._pinger)
                    task_status.started(self)
                    await self._exited.wait()
                # what it wrote just before exiting is still in flight: read it to the end
                # (bounded: a process it started may hold the output open)
                with anyio.move_on_after(OUTPUT_TAIL_TIMEOUT):
                    for done in drained:
                        await done.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._reap()
        if failure is not None:
            raise InitFailed(failure)

    def _command(self, fd: int) -> list[str]:
        """The process's command line, with the IPC socket on ``fd``."""
        return child_command(self.spec.python, fd)

    def _first_message(self) -> ipc.ParentMessage | None:
        """What the process is for (answered by ``Ready``)."""
        return initialize_message(self.spec)

    async def _initialize(self) -> str | None:
        """Initialize and wait for Ready; the reason it failed, or None."""
        spec = self.spec
        first = self._first_message()
        if first is not None:
            await self.send(first)
        with anyio.move_on_after(spec.initialize_timeout):
            async with anyio.create_task_group() as tg:

                async def exited() -> None:
                    await self._exited.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(exited)
                await self._ready.wait()
                tg.cancel_scope.cancel()
        ready = self._ready_message
        if ready is not None and not ready.error:
            self.init_seconds = ready.init_seconds
            self.sdk_version = ready.sdk_version
            self.inference_runners = ready.inference_runners
            return None
        if ready is not None:
            reason = self._scrub(ready.error)
        elif self._exited.is_set() and self.exit_code == ipc.ExitCode.RUNTIME_MISSING:
            reason = ipc.runtime_missing_message(spec.python or sys.executable)
        elif self._exited.is_set():
            reason = f"{describe_exit(self.exit_code)} before it was ready"
        else:
            reason = f"not ready within initialize_process_timeout ({spec.initialize_timeout:g}s)"
        await self._kill()
        return reason

    async def _reap(self) -> None:
        try:
            if self._process is not None:
                if self._process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        self._process.kill()
                await self._process.wait()
                self.exit_code = self._process.returncode
                await self._process.aclose()
        finally:  # whatever happened above, the socket is closed and the state settled
            if self._stream is not None:
                await self._stream.aclose()
            self.state = ProcessState.EXITED
            self._exited.set()
            self._settle_job()

    async def _waiter(self) -> None:
        assert self._process is not None
        self.exit_code = await self._process.wait()
        self._exited.set()

    # --- messages --------------------------------------------------------------------------

    async def send(self, message: ipc.ParentMessage) -> bool:
        """Send a message; False when the process is gone."""
        if self._stream is None or self._exited.is_set():
            return False
        data = ipc.encode(message)
        async with self._send_lock:
            try:
                # straight into the socket when it has room (a job's start waits for this
                # frame): no trip round the event loop first; the stream writes what is left
                sent = _send_now(self._stream, data)
                if sent < len(data):
                    await self._stream.send(data[sent:])
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return False
        return True

    def _send_soon(self, message: ipc.ParentMessage) -> None:
        if self._tg is not None:
            self._tg.start_soon(self.send, message)

    async def _receive(self) -> bytes:
        """The next bytes from the process (a template's also carry descriptors).

        Read with ``lksup.jobs.sockio.receive``, not the stream's own ``receive``: the reader
        is cancelled when the process has exited, in the loop turn its socket's EOF may land
        in, and anyio's stream then logs an ``InvalidStateError`` traceback. The stream is
        closed only once the reader is done (``_reap``).
        """
        assert self._stream is not None
        try:
            data = await receive(self._stream.extra(SocketAttribute.raw_socket))
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
        if not data:
            raise anyio.EndOfStream
        return data

    async def _reader(self) -> None:
        assert self._stream is not None
        decoder = FrameDecoder()
        while True:
            try:
                data = await self._receive()
                payloads = decoder.feed(data)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            except FramingError as exc:
                log.warning(
                    "Job process %s sent a bad frame: %s", self.pid, exc, extra=self._extra()
                )
                return
            for payload in payloads:
                try:
                    message = ipc.decode(payload)
                except ipc.IpcError as exc:
                    log.warning("Job process %s: %s", self.pid, exc, extra=self._extra())
                    continue
                self._on_message(message)

    def _on_message(self, message: ipc.Message) -> None:
        if isinstance(message, ipc.Ready):
            self._ready_message = message
            self._ready.set()
        elif isinstance(message, ipc.Pong):
            self._last_pong = anyio.current_time()
        elif isinstance(message, ipc.OfferAnswer):
            waiter = self._answers.get(message.job_id)
            if waiter is not None:
                self._answer_values[message.job_id] = message
                waiter.set()
        elif isinstance(message, ipc.JobStarted):
            slot = self._slot(message.job_id)
            if slot is not None:
                slot.started.set()
        elif isinstance(message, ipc.JobOutcome | ipc.JobEnded):
            if isinstance(message, ipc.JobEnded) and message.local_models and self.on_local_models:
                self.on_local_models(message.local_models)
            slot = self._slot(message.job_id)
            if slot is None:
                return
            if slot.outcome is None:  # an early outcome was reported already: it stands
                error = self._scrub(message.error) or None
                reason = self._scrub(message.reason)
                slot.outcome = JobOutcome(
                    error,
                    reason or ("failed" if error else "done"),
                    "exception" if error else None,
                )
                slot.awaits_ack = isinstance(message, ipc.JobOutcome)
            slot.ended.set()
        elif isinstance(message, ipc.LogRecord):
            text = self._scrub(message.message)
            fields = {key: self._scrub(value) for key, value in message.fields.items()}
            # several jobs in a host: the record's own, if it came from a job's thread
            own = (message.job_id or None) if self.host else self.job_id
            extra = {**self._extra(own), "source_logger": message.logger}
            if self.host:
                extra["job_id"] = own
            if message.exc_text:  # a field of its own in JSON, after the message on a console
                extra["traceback"] = self._scrub(message.exc_text)
            if fields:
                extra["fields"] = fields
            job_log.log(message.level, "%s", text, extra=extra)
        elif isinstance(message, ipc.InferenceResponse):
            if self.on_inference_response is not None:
                self.on_inference_response(message)
        elif isinstance(message, ipc.InferenceRequest):
            if self.on_inference is not None:
                self.on_inference(self, message)
            else:
                error = f"no inference process serves {message.method!r}"
                self._send_soon(ipc.InferenceResponse(request_id=message.request_id, error=error))

    async def _forward_output(
        self,
        stream: anyio.abc.ByteReceiveStream | None,
        level: int,
        name: str,
        done: anyio.Event,
    ) -> None:
        try:
            await self._forward_lines(stream, level, name)
        finally:
            done.set()

    async def _forward_lines(
        self, stream: anyio.abc.ByteReceiveStream | None, level: int, name: str
    ) -> None:
        if stream is None:
            return
        buffered = BufferedByteReceiveStream(stream)
        while True:
            try:
                line = await buffered.receive_until(b"\n", MAX_LINE)
            except anyio.DelimiterNotFound:
                line = await buffered.receive_exactly(MAX_LINE)
            except (anyio.IncompleteRead, anyio.EndOfStream, anyio.ClosedResourceError):
                rest = buffered.buffer
                if rest:
                    job_log.log(
                        level,
                        "%s",
                        self._scrub(bytes(rest).decode("utf-8", "replace")),
                        extra={**self._extra(), "stream": name},
                    )
                return
            job_log.log(
                level,
                "%s",
                self._scrub(line.decode("utf-8", "replace").rstrip("\r")),
                extra={**self._extra(), "stream": name},
            )

    async def _pinger(self) -> None:
        self._last_pong = anyio.current_time()
        while not self._exited.is_set():
            await anyio.sleep(self.spec.ping_interval)
            if anyio.current_time() - self._last_pong > self.spec.ping_timeout:
                log.error(
                    "Job process %s did not answer pings for %.0fs; killing it.",
                    self.pid,
                    self.spec.ping_timeout,
                    extra=self._extra(),
                )
                self._fail_running("job process unresponsive", "unresponsive")
                await self._kill()
                return
            await self.send(ipc.Ping(sent_at_ns=int(anyio.current_time() * 1e9)))

    # --- offers and the job --------------------------------------------------------------------

    async def offer(self, request: ipc.OfferRequest, job_id: str) -> ipc.OfferAnswer | None:
        """Ask the agent's request function about an offer (the caller bounds the wait)."""
        waiter = self._answers[job_id] = anyio.Event()
        try:
            if not await self.send(request):
                return None
            async with anyio.create_task_group() as tg:

                async def exited() -> None:
                    await self._exited.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(exited)
                await waiter.wait()
                tg.cancel_scope.cancel()
            return self._answer_values.pop(job_id, None)
        finally:
            self._answers.pop(job_id, None)

    def _slot(self, job_id: str) -> _JobSlot | None:
        """The job a message is about (an empty id: the only one, from an older child)."""
        if job_id:
            return self.jobs.get(job_id)
        return next(iter(self.jobs.values()), None) if len(self.jobs) == 1 else None

    @property
    def host(self) -> bool:
        """A thread host: several jobs at once, and it outlives them."""
        return bool(self.spec.max_jobs > 1)

    async def _until(self, event: anyio.Event) -> None:
        """Wait for ``event`` or the exit of the process, whichever comes first."""
        async with anyio.create_task_group() as tg:

            async def exited() -> None:
                await self._exited.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(exited)
            await event.wait()
            tg.cancel_scope.cancel()

    async def start_job(self, start: ipc.StartJob, job_id: str, *, room: str = "") -> bool:
        """Hand the job over; True once the entrypoint was called (JobStarted)."""
        slot = self.jobs[job_id] = _JobSlot(room=room, worker_id=start.worker_id)
        self.job_id = job_id
        self.job_started_at = anyio.current_time()
        if not self.host:
            self.state = ProcessState.RUNNING
        if not await self.send(start):
            return False
        await self._until(slot.started)
        return slot.started.is_set()

    async def wait_job(self, job_id: str) -> JobOutcome:
        """Wait until the job ended (JobEnded, or the process died)."""
        slot = self.jobs[job_id]
        await self._until(slot.ended)
        self._settle(slot)
        assert slot.outcome is not None
        return slot.outcome

    def awaits_outcome_ack(self, job_id: str) -> bool:
        """The job reported its outcome early and waits to hear that it was sent."""
        slot = self.jobs.get(job_id)
        return slot is not None and slot.awaits_ack

    def running_jobs(self) -> int:
        """Jobs handed over that have not ended."""
        return sum(1 for slot in self.jobs.values() if not slot.ended.is_set())

    def _settle_job(self) -> None:
        for slot in self.jobs.values():
            self._settle(slot)

    def _fail_running(self, reason: str, kind: FailureKind) -> None:
        """The supervisor ends the process as a failure: its running jobs fail with ``reason``."""
        self._stop_reason = reason
        for slot in self.jobs.values():
            if not slot.ended.is_set():
                slot.failure = reason
                slot.failure_kind = kind

    def _settle(self, slot: _JobSlot) -> None:
        if slot.failure is not None:  # the supervisor ended it as a failure: that wins
            slot.outcome = JobOutcome(slot.failure, slot.failure, slot.failure_kind)
        elif slot.outcome is None and self._exited.is_set():
            reason = describe_exit(self.exit_code)
            code = self.exit_code
            slot.outcome = JobOutcome(
                reason, reason, "signal" if code is not None and code < 0 else "exit_code"
            )

    async def stop_job(self, job_id: str, reason: str) -> None:
        """End one job of a thread host: Shutdown(job_id), then ``shutdown_timeout``.

        A job that does not end in time takes its host down (the stop sequence): its thread
        cannot be stopped on its own, and the host's other jobs fail with it.
        """
        slot = self.jobs.get(job_id)
        if slot is None or slot.ended.is_set():
            return
        await self.send(ipc.Shutdown(reason=reason, job_id=job_id))
        with anyio.move_on_after(self.spec.shutdown_timeout):
            await self._until(slot.ended)
        if not slot.ended.is_set() and self.alive:
            log.warning(
                "Job %s did not end in %gs; stopping its host %s.",
                job_id,
                self.spec.shutdown_timeout,
                self.pid,
                extra=self._extra(),
            )
            await self.stop(f"job {job_id} did not end in time")

    async def kill(self, reason: str, kind: FailureKind = "killed") -> None:
        """End the process now (SIGKILL) and fail its job with ``reason``."""
        self._fail_running(reason, kind)
        self._stopping = True
        await self._kill()

    async def stop(
        self,
        reason: str = "stopping",
        *,
        shutdown_timeout: float | None = None,
        term_grace: float | None = None,
    ) -> None:
        """The stop sequence: Shutdown -> shutdown_timeout -> SIGTERM -> grace -> SIGKILL.

        The timeouts default to the spec's; a forced stop passes short ones.
        """
        shutdown_timeout = (
            self.spec.shutdown_timeout if shutdown_timeout is None else shutdown_timeout
        )
        term_grace = self.spec.term_grace if term_grace is None else term_grace
        if self._stopping or self._process is None:
            await self._exited.wait()
            return
        self._stopping = True
        if self.state is not ProcessState.EXITED:
            self.state = ProcessState.STOPPING
        with anyio.CancelScope(shield=True):
            await self.send(ipc.Shutdown(reason=reason))
            with anyio.move_on_after(shutdown_timeout):
                await self._exited.wait()
            if not self._exited.is_set():
                log.warning(
                    "Job process %s did not stop in %gs; sending SIGTERM.",
                    self.pid,
                    shutdown_timeout,
                    extra=self._extra(),
                )
                self._signal(signal.SIGTERM)
                with anyio.move_on_after(term_grace):
                    await self._exited.wait()
            if not self._exited.is_set():
                log.warning(
                    "Job process %s ignored SIGTERM; killing it.", self.pid, extra=self._extra()
                )
                await self._kill()
            await self._exited.wait()

    async def _kill(self) -> None:
        self._signal(signal.SIGKILL)
        with anyio.CancelScope(shield=True):
            await self._exited.wait()

    def _signal(self, sig: signal.Signals) -> None:
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(sig)
