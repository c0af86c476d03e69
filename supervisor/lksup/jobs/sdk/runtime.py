"""A job process for ``runtime: livekit-agents``: the SDK's own job machinery behind lksup's IPC.

The process is started, initialised and supervised exactly as any lksup job process
(``lksup.jobs.child``): same socket, same messages, same health checks, same stop sequence.
What differs is what runs inside. Entrypoint, prewarm and request function receive the SDK's
own ``JobContext``, ``JobProcess`` and ``JobRequest``, and the job is run by the SDK's job runner
(``_JobProc``, reached only through ``lksup.jobs.sdk.adapter``), so ``get_job_context()``, the
HTTP session context, ``ctx.api``, log context fields, the primary ``AgentSession`` and the
shutdown order are the SDK's.

Message flow once ``Ready`` was sent (the SDK's loop runs as its own asyncio task, fed through
a channel, so that its cleanup is never interrupted by a cancel scope around it):

* ``OfferRequest``: the request function gets the SDK's ``JobRequest``; what its ``accept``
  leaves empty comes from the fleet's declarative policy, as for lksup agents;
* ``StartJob``: a ``RunningJobInfo`` (job, URL, token, worker id, accept arguments, dispatch
  timeline) goes to the SDK's loop; ``JobStarted`` is sent as the user's entrypoint is called;
* ``Shutdown(reason)`` and SIGTERM: the SDK's ``ShutdownRequest`` (idle: the process exits);
* ``InferenceResponse``: handed to the job whose ``ctx.inference_executor`` asked for it;
* ``OutcomeReported``: the outcome sent when the SDK announced its exit reached the server;
  the SDK leaves the room only then (bounded by ``OUTCOME_ACK_TIMEOUT``), so the server never
  records a finished job as failed because its agent left the room first;
* ``Ping``: ``Pong`` from this loop;
* end of the stream: the SDK's loop is cancelled (its own cleanup runs) within
  ``EOF_CLEANUP_TIMEOUT``, as for lksup agents.

Outcome: when the SDK's loop returns after a job, ``JobEnded`` carries the entrypoint's
exception (``"<ExcType>: <message>"``: the job fails, where the SDK's worker reports a raising
entrypoint as a success) and the SDK's shutdown reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
from google.protobuf.message import DecodeError
from livekit.protocol import agent

from lksup.jobs.channel import Outbox, arm_exit_watchdog
from lksup.jobs.framing import FrameDecoder
from lksup.jobs.ipc import (
    AwaitJob,
    ExitCode,
    InferenceRequest,
    InferenceResponse,
    Initialize,
    JobEnded,
    JobOutcome,
    JobStarted,
    OfferAnswer,
    OfferRequest,
    OutcomeReported,
    Ping,
    Pong,
    Ready,
    Shutdown,
    StartJob,
)
from lksup.jobs.loader import (
    AgentFunctions,
    LoadError,
    describe_exception,
    load_agent,
    run_prewarm,
)
from lksup.jobs.runtime import EOF_CLEANUP_TIMEOUT, EXIT_TIMEOUT, OUTCOME_ACK_TIMEOUT, IpcLoop
from lksup.jobs.sdk import adapter

__all__ = ["Prepared", "SdkRuntime", "initialise", "prepare"]

logger = logging.getLogger("lksup.jobs")


@dataclass(frozen=True)
class Prepared:
    """What ``prepare`` made: the SDK version, the agent's functions, the SDK ``JobProcess``."""

    version: str
    functions: AgentFunctions
    job_proc: Any


def prepare(init: Initialize) -> Prepared:
    """Check the SDK, import the agent, run its prewarm through the SDK.

    In the job process, or once in the agent's template before it forks (``prewarm_in:
    template``): every process forked from it then adopts the result.

    Raises:
        LoadError: the SDK is missing or unsupported, the agent cannot be imported, or prewarm
            failed (the message is ``Ready.error``).
    """
    try:
        version = adapter.check_version(adapter.installed_version())
    except adapter.UnsupportedSdk as exc:
        raise LoadError(str(exc)) from None
    functions = load_agent(init)
    try:
        job_proc = adapter.new_job_process(
            http_proxy=os.environ.get("HTTPS_PROXY") or os.environ.get("HTTP_PROXY"),
            thread=init.max_jobs > 1,
        )
    except Exception as exc:  # installed but broken (a missing native library...)
        detail = describe_exception(exc, with_location=True)
        raise LoadError(f"livekit-agents cannot be imported: {detail}") from None
    adapter.track_local_models()
    run_prewarm(functions, job_proc, ref=init.prewarm)
    return Prepared(version=version, functions=functions, job_proc=job_proc)


def initialise(
    init: Initialize, outbox: Outbox, prepared: Prepared | None = None
) -> SdkRuntime | None:
    """Prepare (unless ``prepared`` came from the template), bind the SDK's runner, send Ready.

    Returns the runtime, or None when initialisation failed (``Ready.error`` was sent).
    """
    started = time.perf_counter()

    def failed(error: str) -> None:
        outbox.send(Ready(pid=os.getpid(), error=error, init_seconds=time.perf_counter() - started))

    try:
        prepared = prepared or prepare(init)
    except LoadError as exc:
        failed(str(exc))
        return None
    functions = prepared.functions
    runtime: SdkRuntime
    try:
        if init.max_jobs > 1:  # job_executor: thread; each job binds a runner of its own
            from lksup.jobs.sdk.threads import SdkThreadHost

            adapter.JobHost.check()
            runtime = SdkThreadHost(init=init, outbox=outbox, prepared=prepared)
        else:
            runtime = SdkRuntime(init=init, outbox=outbox, request_fnc=functions.request_fnc)
            runtime.job.host = runtime.job.make_host(functions, thread=False)
            runtime.job.host.adopt(prepared.job_proc)
    except Exception as exc:  # installed but broken (a missing native library...)
        failed(f"livekit-agents cannot be imported: {describe_exception(exc, with_location=True)}")
        return None
    outbox.send(
        Ready(
            pid=os.getpid(),
            init_seconds=time.perf_counter() - started,
            sdk_version=prepared.version,
            inference_runners=adapter.registered_runners(),
        )
    )
    return runtime


def start_rtc_runtime() -> None:
    """Start livekit-rtc's runtime while the process is idle, not inside a job's start."""
    try:
        adapter.start_rtc_runtime()
    except Exception:  # the job's own rtc.Room() will say what is wrong
        logger.debug("Cannot start livekit-rtc's runtime ahead of a job.", exc_info=True)


class SdkJob:
    """One SDK job's side of lksup's IPC: the hooks the SDK's runner calls, and how it ended.

    ``make_host`` binds them to a ``JobHost``: the entrypoint is wrapped to send ``JobStarted``
    and to remember how it failed; the runner's exiting hook sends ``JobOutcome`` and waits for
    ``OutcomeReported`` (``outcome_reported``, on the job's own event loop); ``ended()`` is the
    ``JobEnded`` once the runner returned. A job process has one; a job host (``job_executor:
    thread``) one per job, each on its own thread.
    """

    def __init__(
        self, outbox: Outbox, *, on_inference: Callable[[str, str, bytes], None] | None = None
    ) -> None:
        self._outbox = outbox
        self._on_inference = on_inference
        self.host: adapter.JobHost | None = None
        self.job_id: str | None = None
        self.error = ""
        self._outcome_acked: asyncio.Event | None = None

    def make_host(self, functions: AgentFunctions, *, thread: bool) -> adapter.JobHost:
        """The SDK's job runner, calling this job's hooks."""
        return adapter.JobHost(
            entrypoint=self.wrap_entrypoint(functions.entrypoint),
            on_inference=self.request_inference,
            on_exiting=self.job_exiting,
            session_end=functions.session_end_fnc,
            thread=thread,
        )

    def wrap_entrypoint(
        self, entrypoint: Callable[[Any], Awaitable[None]]
    ) -> Callable[[Any], Awaitable[None]]:
        """The user's entrypoint, reporting its start and remembering how it failed."""

        async def run(ctx: Any) -> None:
            self._outbox.send(JobStarted(job_id=ctx.job.id))
            try:
                await entrypoint(ctx)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # user code: SystemExit and friends fail the job
                self.error = describe_exception(exc)
                if isinstance(exc, Exception):
                    raise
                # asyncio would stop the whole event loop for these: fail the task instead
                raise RuntimeError(self.error) from exc

        run.__qualname__ = getattr(entrypoint, "__qualname__", run.__qualname__)
        run.__name__ = getattr(entrypoint, "__name__", run.__name__)
        return run

    async def job_exiting(self, reason: str) -> None:
        """The SDK is about to leave the room: report the outcome, wait until it was sent."""
        if self.job_id is None:
            return
        self._outcome_acked = asyncio.Event()
        self._outbox.send(JobOutcome(job_id=self.job_id, error=self.error, reason=reason))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._outcome_acked.wait(), OUTCOME_ACK_TIMEOUT)

    def outcome_reported(self) -> None:
        """The outcome reached the server (call on the job's event loop)."""
        if self._outcome_acked is not None:
            self._outcome_acked.set()

    def request_inference(self, request_id: str, method: str, data: bytes) -> None:
        """Relay a job's inference request to the supervisor."""
        if self._on_inference is not None:
            self._on_inference(request_id, method, data)
        self._outbox.send(InferenceRequest(request_id=request_id, method=method, data=data))

    def start(self, channel: Any, msg: StartJob, job: agent.Job) -> None:
        """Queue ``job`` for the SDK's loop reading ``channel``."""
        assert self.host is not None
        self.job_id = job.id
        self.host.start_job(
            channel,
            job=job,
            url=msg.url,
            token=msg.token,
            worker_id=msg.worker_id,
            identity=msg.participant_identity,
            name=msg.participant_name,
            metadata=msg.participant_metadata,
            attributes=msg.participant_attributes,
            timeline={
                "received_at": msg.received_at,
                "accepted_at": msg.accepted_at,
                "assigned_at": msg.assigned_at,
                "launched_at": msg.launched_at,
            },
        )

    def ended(self) -> JobEnded:
        """The job's ``JobEnded``, once the SDK's loop has returned."""
        assert self.host is not None
        assert self.job_id is not None
        error = self.error
        failure = self.host.job_failure()
        if not error and failure is not None:
            error = f"the job could not run: {describe_exception(failure)}"
        reason = self.host.exit_reason or "job ended"
        return JobEnded(
            job_id=self.job_id,
            error=error,
            reason=reason,
            local_models=adapter.local_models_used(),
        )


class SdkRuntime(IpcLoop):
    """Serves the supervisor's messages for one initialised livekit-agents job process."""

    def __init__(
        self,
        *,
        init: Initialize,
        outbox: Outbox,
        request_fnc: Callable[[Any], Awaitable[None]] | None,
    ) -> None:
        super().__init__(outbox)
        self._init = init
        self._request_fnc = request_fnc
        self.job = SdkJob(outbox)
        self._channel: Any = None
        self._main: asyncio.Task[None] | None = None

    # --- the loop -----------------------------------------------------------------------------

    @property
    def host(self) -> adapter.JobHost:
        """The SDK's job runner (bound by ``initialise``)."""
        assert self.job.host is not None
        return self.job.host

    async def serve(
        self, sock: socket.socket, decoder: FrameDecoder, received: list[bytes]
    ) -> ExitCode:
        """Serve until the process should exit; returns its exit code (see ``ChildRuntime``)."""
        start_rtc_runtime()
        self._done = anyio.Event()
        self._channel = adapter.new_channel()
        self._main = asyncio.get_running_loop().create_task(
            self.host.run(self._channel), name="livekit-agents job loop"
        )
        self._main.add_done_callback(self._main_done)
        code = await super().serve(sock, decoder, received)
        if self.job.job_id is not None:
            self._outbox.send(self.job.ended())
        return code

    def _main_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("The livekit-agents job loop failed.", exc_info=task.exception())
            if not self.job.error and self.job.job_id is not None:
                self.job.error = describe_exception(task.exception() or RuntimeError())
        assert self._done is not None
        self._done.set()

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
            case InferenceResponse():
                self._inference_answer(msg)
            case _:
                logger.warning("Ignoring an unexpected %s message.", type(msg).__name__)

    def _outcome_reported(self, job_id: str) -> None:
        self.job.outcome_reported()

    def _inference_answer(self, msg: InferenceResponse) -> None:
        data = msg.data if msg.has_data else None
        self.host.inference_answer(self._channel, msg.request_id, data, msg.error)

    def _shutdown(self, reason: str, job_id: str = "") -> None:
        self.host.shutdown(self._channel, reason)

    def _lost(self, reason: str) -> None:
        arm_exit_watchdog(EOF_CLEANUP_TIMEOUT + EXIT_TIMEOUT, self._exit_code)
        assert self._main is not None
        assert self._done is not None
        if self.job.job_id is None:
            self._main.cancel()
            self._done.set()
            return
        logger.warning("Ending job %s: %s.", self.job.job_id, reason)
        self._main.cancel()  # the SDK's loop cancels the job task and runs its cleanup

    def _decode_job(self, msg: StartJob) -> agent.Job | None:
        """The job of ``StartJob``, or None once it was ended as undecodable."""
        try:
            return agent.Job.FromString(msg.job)
        except DecodeError as exc:
            self._outbox.send(JobEnded(job_id="", error=f"undecodable job: {exc}"))
            return None

    def _start_job(self, msg: StartJob) -> None:
        if self.job.job_id is not None:
            logger.warning("Ignoring StartJob: this process already runs job %s.", self.job.job_id)
            return
        job = self._decode_job(msg)
        if job is None:
            assert self._done is not None
            self._done.set()
            return
        self.job.start(self._channel, msg, job)

    def _busy(self) -> bool:
        return self.job.job_id is not None

    async def _offer(self, msg: OfferRequest) -> None:
        job = self._offered_job(msg)
        if job is None:
            return
        answered = False

        async def on_accept(
            identity: str, name: str, metadata: str, attributes: Mapping[str, str]
        ) -> None:
            nonlocal answered
            if answered:
                logger.warning("Job request %s was already answered; ignoring.", job.id)
                return
            answered = True
            sdk_default = f"agent-{job.id}"
            if not identity or identity == sdk_default:  # the SDK's default: the fleet's wins
                identity = msg.default_identity or sdk_default
            self._answer(
                OfferAnswer(
                    accept=True,
                    identity=identity,
                    name=name or msg.default_name,
                    metadata=metadata or msg.default_metadata,
                    attributes={**msg.default_attributes, **attributes},
                ),
                job.id,
            )

        async def on_reject(terminate: bool) -> None:
            nonlocal answered
            if answered:
                logger.warning("Job request %s was already answered; ignoring.", job.id)
                return
            answered = True
            self._answer(OfferAnswer(accept=False, terminate=terminate), job.id)

        request = adapter.make_job_request(job, on_accept=on_accept, on_reject=on_reject)
        if self._request_fnc is None:
            await request.accept()
            return
        await self._ask(
            job.id,
            self._request_fnc(request),
            answered=lambda: answered,
            decline=lambda: on_reject(False),
        )
