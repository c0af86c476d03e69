"""A job host (``job_executor: thread``): several jobs of one agent in one process.

The SDK's thread executor, behind lksup's IPC: the process is started, initialised (imports,
prewarm once) and supervised like any job process, but it takes up to ``Initialize.max_jobs``
jobs at once, each in its own thread with its own event loop, so a job that blocks its loop
delays only itself. It is meant for light agents on small machines: jobs share the process's
memory (and its memory limit) and its fate.

What differs from a one-job process (``lksup.jobs.runtime.ChildRuntime``):

* ``StartJob`` starts a thread running the job (``lksup.jobs.runner.JobRun`` on the thread's
  own loop); ``JobStarted``, ``JobOutcome`` and ``JobEnded`` carry the job's id, and the process
  stays up after a job ends;
* ``OfferRequest`` is declined while ``max_jobs`` jobs run;
* ``Shutdown(job_id)`` ends that job; ``Shutdown`` without a job id (and SIGTERM) ends every job
  and then the process, which also exits at once when it has none;
* the end of the stream aborts every job (``EOF_CLEANUP_TIMEOUT``), as for one job.

Calls into a job go through its loop (``call_soon_threadsafe``); the job tells the host it is
over through the host's loop the same way. Frames are sent through the thread-safe outbox.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable

import anyio
from google.protobuf.message import DecodeError
from livekit.protocol import agent

from lksup.jobs.channel import Outbox, arm_exit_watchdog
from lksup.jobs.context import JobContext, JobProcess
from lksup.jobs.framing import FrameDecoder
from lksup.jobs.ipc import ExitCode, Initialize, JobEnded, StartJob
from lksup.jobs.loader import AgentFunctions, describe_exception
from lksup.jobs.runner import JobRun
from lksup.jobs.runtime import EOF_CLEANUP_TIMEOUT, EXIT_TIMEOUT, ChildRuntime

__all__ = ["ThreadHost"]

logger = logging.getLogger("lksup.jobs")


class _ThreadJob:
    """One job on a thread and event loop of its own."""

    def __init__(
        self,
        msg: StartJob,
        job: agent.Job,
        *,
        host: ThreadHost,
    ) -> None:
        self.job_id = job.id
        self._msg = msg
        self._job = job
        self._host = host
        self._loop: asyncio.AbstractEventLoop | None = None
        self._run: JobRun | None = None
        self._pending: list[Callable[[JobRun], None]] = []
        self._lock = threading.Lock()
        self.ended = False
        """Its ``JobEnded`` is sent: its place in the host is free, though its thread may still
        be winding down (its loop's executor, async generators)."""

    def start(self) -> None:
        thread = threading.Thread(target=self._main, name=f"job {self.job_id}", daemon=True)
        thread.start()

    def call(self, action: Callable[[JobRun], None]) -> None:
        """Run ``action(job_run)`` on the job's loop (queued until the loop runs)."""
        with self._lock:
            loop, run = self._loop, self._run
            if loop is None or run is None:
                self._pending.append(action)
                return
        loop.call_soon_threadsafe(action, run)

    def _main(self) -> None:
        try:
            anyio.run(self._serve, backend="asyncio")
        except BaseException as exc:  # the job's own failures are in JobEnded; this is ours
            logger.exception("The thread of job %s failed.", self.job_id)
            if not self.ended:
                self.ended = True
                error = describe_exception(exc)
                self._host._outbox.send(JobEnded(job_id=self.job_id, error=error))
        finally:
            self._host.job_done(self.job_id)

    async def _serve(self) -> None:
        msg, host = self._msg, self._host
        ctx = JobContext(
            proc=host._proc,
            job=self._job,
            url=msg.url,
            token=msg.token,
            participant_identity=msg.participant_identity,
            participant_name=msg.participant_name,
        )
        ended = anyio.Event()

        def on_ended(message: JobEnded) -> None:
            self.ended = True  # before the supervisor can hear of it and send the next job
            host._outbox.send(message)
            ended.set()

        async with anyio.create_task_group() as tg:
            run = JobRun(
                ctx=ctx,
                entrypoint=host._functions.entrypoint,
                grace=host._init.shutdown_grace,
                send=host._outbox.send,
                on_ended=on_ended,
            )
            run.start(tg)
            with self._lock:
                self._loop, self._run = asyncio.get_running_loop(), run
                pending, self._pending = self._pending, []
            for action in pending:
                action(run)
            await ended.wait()
            tg.cancel_scope.cancel()


class ThreadHost(ChildRuntime):
    """A job process that runs up to ``init.max_jobs`` jobs at once (see module docstring)."""

    def __init__(
        self,
        *,
        init: Initialize,
        functions: AgentFunctions,
        proc: JobProcess,
        outbox: Outbox,
    ) -> None:
        super().__init__(init=init, functions=functions, proc=proc, outbox=outbox)
        self._jobs: dict[str, _ThreadJob] = {}
        self._closing = False
        self._host_loop: asyncio.AbstractEventLoop | None = None

    async def serve(
        self, sock: socket.socket, decoder: FrameDecoder, received: list[bytes]
    ) -> ExitCode:
        """As ``ChildRuntime.serve``; jobs run on their own threads meanwhile."""
        self._host_loop = asyncio.get_running_loop()
        return await super().serve(sock, decoder, received)

    def _busy(self) -> bool:
        running = sum(1 for job in self._jobs.values() if not job.ended)
        return self._closing or running >= self._init.max_jobs

    def _start_job(self, msg: StartJob) -> None:
        try:
            job = agent.Job.FromString(msg.job)
        except DecodeError as exc:
            self._outbox.send(JobEnded(job_id="", error=f"undecodable job: {exc}"))
            return
        if (job.id in self._jobs and not self._jobs[job.id].ended) or self._busy():
            logger.warning("Ignoring StartJob %s: no room for it in this host.", job.id)
            self._outbox.send(JobEnded(job_id=job.id, error="this job host is full"))
            return
        thread_job = self._jobs[job.id] = _ThreadJob(msg, job, host=self)
        thread_job.start()

    def job_done(self, job_id: str) -> None:
        """A job's thread is over (called from that thread)."""
        if self._host_loop is not None:
            self._host_loop.call_soon_threadsafe(self._forget, job_id)

    def _forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)
        if self._closing and not self._jobs:
            self._finish()

    def _outcome_reported(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            job.call(lambda run: run.outcome_reported())

    def _shutdown(self, reason: str, job_id: str = "") -> None:
        if job_id:
            job = self._jobs.get(job_id)
            if job is not None:
                job.call(lambda run: run.request_shutdown(reason))
            return
        self._closing = True
        if not self._jobs:
            logger.info("Shutting down while idle: %s.", reason)
            self._finish()
            return
        for job in self._jobs.values():
            job.call(lambda run: run.request_shutdown(reason))

    def _lost(self, reason: str) -> None:
        arm_exit_watchdog(EOF_CLEANUP_TIMEOUT + EXIT_TIMEOUT, self._exit_code)
        self._closing = True
        if not self._jobs:
            self._finish()
            return
        for job in self._jobs.values():
            logger.warning("Ending job %s: %s.", job.job_id, reason)
            job.call(lambda run: run.abort(reason, cleanup_timeout=EOF_CLEANUP_TIMEOUT))
