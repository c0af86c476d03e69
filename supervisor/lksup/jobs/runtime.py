"""The job process's event loop, after ``Ready``: act on the supervisor's messages.

One anyio task group (asyncio backend: the LiveKit realtime SDK needs asyncio) holds the
frame reader, the SIGTERM watcher, request-function tasks and the job's tasks. The reader
answers ``Ping`` itself, so a ``Pong`` proves that the event loop is alive: user code that
blocks the loop delays pongs, which is what the supervisor's health check is for.

What each message does (anything else is logged and ignored; so is an undecodable frame,
since the framing is still intact):

* ``OfferRequest``: run the request function (or accept with the declarative defaults when the
  agent has none) and send one ``OfferAnswer``; the process stays idle and may get the job.
* ``AwaitJob(poll_s)``: an offer was accepted for this process and its ``StartJob`` is a round
  trip to the server away: poll the socket for up to ``poll_s`` seconds rather than sleep, so
  the job does not wait for the process to be woken (``IpcLoop.poll``).
* ``StartJob``: run the job (``lksup.jobs.runner``); ``JobEnded`` then ends the process, which
  serves one job only. A second ``StartJob`` is ignored.
* ``Shutdown(reason)`` and SIGTERM (reason ``"SIGTERM"``): idle, exit at once; with a job, end
  it gracefully.
* ``Ping``: ``Pong`` with the same ``sent_at_ns``.

End of the stream (the supervisor closed its end or died): exit at once when idle; with a job,
cancel its entrypoint and give what is left ``EOF_CLEANUP_TIMEOUT`` seconds. A framing error
(oversized frame) is handled the same way, with ``ExitCode.PROTOCOL``. Once the runtime is done
an exit watchdog is armed, so a task that ignores cancellation cannot keep the process alive.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
from google.protobuf.message import DecodeError
from livekit.protocol import agent

from lksup.jobs.channel import Outbox, arm_exit_watchdog
from lksup.jobs.context import JobAcceptArguments, JobContext, JobProcess, JobRequest
from lksup.jobs.framing import FrameDecoder, FramingError
from lksup.jobs.ipc import (
    AwaitJob,
    ExitCode,
    Initialize,
    IpcError,
    JobEnded,
    Message,
    OfferAnswer,
    OfferRequest,
    OutcomeReported,
    Ping,
    Pong,
    Shutdown,
    StartJob,
    decode,
)
from lksup.jobs.loader import AgentFunctions, describe_exception
from lksup.jobs.rehearsal import walk
from lksup.jobs.runner import OUTCOME_ACK_TIMEOUT, JobRun
from lksup.jobs.sockio import receive

__all__ = [
    "EOF_CLEANUP_TIMEOUT",
    "EXIT_TIMEOUT",
    "OUTCOME_ACK_TIMEOUT",
    "ChildRuntime",
    "IpcLoop",
]

logger = logging.getLogger("lksup.jobs")

#: After EOF, how long a running job gets to cancel its entrypoint and run its callbacks.
EOF_CLEANUP_TIMEOUT = 0.5
#: Once the runtime is done, how long the process may take to exit before it is forced.
EXIT_TIMEOUT = 2.0


class IpcLoop:
    """What every child loop shares: read frames, dispatch them, end on SIGTERM or EOF.

    Subclasses implement ``_on_message(payload)``, ``_shutdown(reason, job_id)`` (SIGTERM) and
    ``_lost(reason)`` (end of the stream, or a broken one); ``_finish()`` ends ``serve``.
    """

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._exit_code = ExitCode.OK
        self._done: anyio.Event | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._reads = 0  # chunks read from the socket: a poll ends when one arrives
        self._poll_until = 0.0  # time.monotonic() at which the current poll gives up

    async def serve(
        self, sock: socket.socket, decoder: FrameDecoder, received: list[bytes]
    ) -> ExitCode:
        """Serve until the process should exit; returns its exit code.

        Args:
            sock: the IPC socket (this loop takes ownership and closes it).
            decoder: the decoder that read the first frame (it may hold part of a frame).
            received: payloads already decoded after the first frame, handled first.
        """
        if self._done is None:  # a subclass may have made it earlier
            self._done = anyio.Event()
        sock.setblocking(False)
        with sock:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._watch_sigterm, name="sigterm")
                tg.start_soon(self._read, sock, decoder, received, name="ipc reader")
                await self._done.wait()
                arm_exit_watchdog(EXIT_TIMEOUT, self._exit_code)
                tg.cancel_scope.cancel()
        return self._exit_code

    def _finish(self) -> None:
        assert self._done is not None
        self._done.set()

    @property
    def polling(self) -> bool:
        """A poll for an awaited frame is running (``poll``)."""
        return self._poll_until > 0

    def poll(self, seconds: float) -> None:
        """Keep the event loop turning for up to ``seconds``, until the next frame is read.

        Between an accepted offer and its ``StartJob`` there is one round trip to the server.
        A process that sleeps through it is woken by the frame, and waking a sleeping process
        costs from a few hundred microseconds to milliseconds on a busy or virtualised host,
        all of it added to the job's start. While this poll runs, each turn of the event
        loop polls the socket without blocking (a ready task makes asyncio's selector wait
        0 s), so the frame is read as it lands. It costs at most ``seconds`` of one CPU, and
        the supervisor asks for it only when the host has CPU to spare.
        """
        if seconds <= 0 or self._tg is None:
            return
        running = self.polling
        self._poll_until = max(self._poll_until, time.monotonic() + seconds)
        if not running:
            self._tg.start_soon(self._poll, self._reads, name="poll for the job")

    async def _poll(self, reads: int) -> None:
        try:
            while self._reads == reads and time.monotonic() < self._poll_until:
                await anyio.sleep(0)
        finally:
            self._poll_until = 0.0

    async def _watch_sigterm(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                logger.info("SIGTERM received.")
                self._shutdown("SIGTERM")

    async def _read(
        self, sock: socket.socket, decoder: FrameDecoder, received: list[bytes]
    ) -> None:
        for payload in received:
            self._on_message(payload)
        while True:
            try:
                data = await receive(sock)
            except OSError:
                data = b""
            if not data:
                self._lost("supervisor went away")
                return
            self._reads += 1
            try:
                payloads = decoder.feed(data)
            except FramingError as exc:
                logger.error("IPC stream broken: %s.", exc)
                self._exit_code = ExitCode.PROTOCOL
                self._lost("IPC protocol error")
                return
            for payload in payloads:
                self._on_message(payload)

    def _decode(self, payload: bytes) -> Message | None:
        """The message in a frame, or None (logged) when this version cannot read it."""
        try:
            return decode(payload)
        except IpcError as exc:
            logger.warning("Ignoring an IPC frame: %s.", exc)
            return None

    def _answer(self, answer: OfferAnswer, job_id: str) -> None:
        """Send the answer to an offer (a decline when it cannot be framed)."""
        answer = dataclasses.replace(answer, job_id=job_id)
        try:
            self._outbox.send(answer)
        except ValueError as exc:  # e.g. metadata too large to frame
            failed = OfferAnswer(accept=False, error=f"cannot send the answer: {exc}")
            self._outbox.send(dataclasses.replace(failed, job_id=job_id))

    def _busy(self) -> bool:
        """No room for another job (answers offers with a decline)."""
        return False

    def _offered_job(self, msg: OfferRequest) -> agent.Job | None:
        """The offered job, or None once a decline was sent (undecodable, or no room)."""
        try:
            job = agent.Job.FromString(msg.job)
        except DecodeError as exc:
            self._answer(OfferAnswer(accept=False, error=f"undecodable job: {exc}"), "")
            return None
        if self._busy():
            busy = OfferAnswer(accept=False, error="this process is already running a job")
            self._answer(busy, job.id)
            return None
        return job

    async def _ask(
        self,
        job_id: str,
        ask: Awaitable[None],
        *,
        answered: Callable[[], bool],
        decline: Callable[[], Awaitable[None]],
    ) -> None:
        """Run the request function's call ``ask``: a failure or no answer is a decline."""
        try:
            await ask
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:  # user code: SystemExit and friends are failures too
            if answered():
                logger.exception("Request function failed after answering job %s.", job_id)
            else:
                logger.exception("Request function failed; declining job %s.", job_id)
                self._answer(
                    OfferAnswer(accept=False, terminate=False, error=describe_exception(exc)),
                    job_id,
                )
            return
        if not answered():
            logger.warning("Request function did not answer job %s; declining it.", job_id)
            await decline()

    def _on_message(self, payload: bytes) -> None:
        raise NotImplementedError

    def _shutdown(self, reason: str, job_id: str = "") -> None:
        raise NotImplementedError

    def _lost(self, reason: str) -> None:
        raise NotImplementedError


class ChildRuntime(IpcLoop):
    """Serves the supervisor's messages for one initialised job process."""

    def __init__(
        self,
        *,
        init: Initialize,
        functions: AgentFunctions,
        proc: JobProcess,
        outbox: Outbox,
    ) -> None:
        super().__init__(outbox)
        self._init = init
        self._functions = functions
        self._proc = proc
        self._job: JobRun | None = None

    async def serve(
        self, sock: socket.socket, decoder: FrameDecoder, received: list[bytes]
    ) -> ExitCode:
        """As ``IpcLoop.serve``, once the first job's way was walked (``rehearsal.walk``)."""
        await walk()  # while idle: the job's start then finds its pages copied, caches filled
        return await super().serve(sock, decoder, received)

    def _on_message(self, payload: bytes) -> None:
        msg = self._decode(payload)
        match msg:
            case None:
                return
            case Ping(sent_at_ns=sent_at_ns):
                self._outbox.send(Pong(sent_at_ns=sent_at_ns))
            case OfferRequest():
                assert self._tg is not None
                self._tg.start_soon(self._offer, msg, name="request function")
            case AwaitJob(poll_s=poll_s):
                self.poll(poll_s)
            case StartJob():
                self._start_job(msg)
            case Shutdown(reason=reason, job_id=job_id):
                self._shutdown(reason or "shutdown requested", job_id)
            case OutcomeReported(job_id=job_id):
                self._outcome_reported(job_id)
            case _:
                logger.warning("Ignoring an unexpected %s message.", type(msg).__name__)

    def _outcome_reported(self, job_id: str) -> None:
        if self._job is not None:
            self._job.outcome_reported()

    def _busy(self) -> bool:
        return self._job is not None

    def _shutdown(self, reason: str, job_id: str = "") -> None:
        if self._job is None:
            logger.info("Shutting down while idle: %s.", reason)
            self._finish()
        else:
            self._job.request_shutdown(reason)

    def _lost(self, reason: str) -> None:
        arm_exit_watchdog(EOF_CLEANUP_TIMEOUT + EXIT_TIMEOUT, self._exit_code)
        if self._job is None:
            self._finish()
        else:
            logger.warning("Ending job %s: %s.", self._job.job_id, reason)
            self._job.abort(reason, cleanup_timeout=EOF_CLEANUP_TIMEOUT)

    def _start_job(self, msg: StartJob) -> None:
        if self._job is not None:
            logger.warning("Ignoring StartJob: this process already runs job %s.", self._job.job_id)
            return
        try:
            job = agent.Job.FromString(msg.job)
        except DecodeError as exc:
            self._outbox.send(JobEnded(job_id="", error=f"undecodable job: {exc}"))
            self._finish()
            return
        ctx = JobContext(
            proc=self._proc,
            job=job,
            url=msg.url,
            token=msg.token,
            participant_identity=msg.participant_identity,
            participant_name=msg.participant_name,
        )
        self._job = JobRun(
            ctx=ctx,
            entrypoint=self._functions.entrypoint,
            grace=self._init.shutdown_grace,
            send=self._outbox.send,
            on_ended=self._job_ended,
        )
        assert self._tg is not None
        self._job.start(self._tg)

    def _job_ended(self, ended: JobEnded) -> None:
        self._outbox.send(ended)
        self._finish()

    async def _offer(self, msg: OfferRequest) -> None:
        job = self._offered_job(msg)
        if job is None:
            return

        async def on_accept(arguments: JobAcceptArguments) -> None:
            self._answer(
                OfferAnswer(
                    accept=True,
                    identity=arguments.identity,
                    name=arguments.name,
                    metadata=arguments.metadata,
                    attributes=dict(arguments.attributes),
                ),
                job.id,
            )

        async def on_reject(terminate: bool) -> None:
            self._answer(OfferAnswer(accept=False, terminate=terminate), job.id)

        request = JobRequest(
            job=job,
            on_accept=on_accept,
            on_reject=on_reject,
            defaults=JobAcceptArguments(
                name=msg.default_name,
                identity=msg.default_identity,
                metadata=msg.default_metadata,
                attributes=dict(msg.default_attributes),
            ),
        )
        request_fnc = self._functions.request_fnc
        if request_fnc is None:
            await request.accept()
            return
        await self._ask(
            job.id,
            request_fnc(request),
            answered=lambda: request.answered,
            decline=lambda: request.reject(terminate=False),
        )
