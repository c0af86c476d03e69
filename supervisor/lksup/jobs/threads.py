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

``JobThread`` and ``ThreadJobs`` are that machinery without the job's runner: the job host of
``runtime: livekit-agents`` (``lksup.jobs.sdk.threads``) runs the SDK's runner on them.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
from google.protobuf.message import DecodeError
from livekit.protocol import agent

from lksup.jobs.channel import Outbox, arm_exit_watchdog, set_thread_job
from lksup.jobs.context import JobContext
from lksup.jobs.framing import FrameDecoder
from lksup.jobs.ipc import ExitCode, Initialize, JobEnded, StartJob
from lksup.jobs.loader import describe_exception
from lksup.jobs.runner import JobRun
from lksup.jobs.runtime import EOF_CLEANUP_TIMEOUT, EXIT_TIMEOUT, ChildRuntime

__all__ = ["JobThread", "ThreadHost", "ThreadJobs"]

logger = logging.getLogger("lksup.jobs")

T = TypeVar("T")


class JobThread(abc.ABC, Generic[T]):
    """One job on a thread and event loop of its own; ``T`` is what runs it on that loop.

    Subclasses implement ``_serve`` (on the job's loop: start the job, ``_bind`` what runs it,
    return once it is over and its ``JobEnded`` is sent through ``_report``) and the three
    requests the host relays.
    """

    def __init__(self, job_id: str, outbox: Outbox, on_done: Callable[[str], None]) -> None:
        self.job_id = job_id
        self._outbox = outbox
        self._on_done = on_done
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: T | None = None
        self._pending: list[Callable[[T], None]] = []
        self._lock = threading.Lock()
        self.ended = False
        """Its ``JobEnded`` is sent: its place in the host is free, though its thread may still
        be winding down (its loop's executor, async generators)."""

    def start(self) -> None:
        """Start the job's thread."""
        thread = threading.Thread(target=self._main, name=f"job {self.job_id}", daemon=True)
        thread.start()

    def call(self, action: Callable[[T], None]) -> None:
        """Run ``action(runner)`` on the job's loop (queued until the loop runs).

        Nothing happens once the job has ended: its loop may already be closed while the
        host still counts its thread.
        """
        with self._lock:
            loop, runner = self._loop, self._runner
            if loop is None or runner is None:
                self._pending.append(action)
                return
        if self.ended:
            return
        with contextlib.suppress(RuntimeError):  # closed since: the job is over
            loop.call_soon_threadsafe(action, runner)

    def _bind(self, runner: T) -> None:
        """``runner`` runs the job on the current loop: queued calls reach it now."""
        with self._lock:
            self._loop, self._runner = asyncio.get_running_loop(), runner
            pending, self._pending = self._pending, []
        for action in pending:
            action(runner)

    def _report(self, message: JobEnded) -> None:
        self.ended = True  # before the supervisor can hear of it and send the next job
        self._outbox.send(message)

    def _main(self) -> None:
        set_thread_job(self.job_id)  # the supervisor logs this thread's records as the job's
        try:
            anyio.run(self._serve, backend="asyncio")
        except BaseException as exc:  # the job's own failures are in JobEnded; this is ours
            logger.exception("The thread of job %s failed.", self.job_id)
            if not self.ended:
                self._report(JobEnded(job_id=self.job_id, error=describe_exception(exc)))
        finally:
            self._on_done(self.job_id)

    @abc.abstractmethod
    async def _serve(self) -> None:
        """Run the job on this thread's loop until it is over."""

    @abc.abstractmethod
    def request_shutdown(self, reason: str) -> None:
        """End the job gracefully (``Shutdown(job_id)``, the host's own shutdown)."""

    @abc.abstractmethod
    def abort(self, reason: str) -> None:
        """End the job now: the supervisor went away (bounded by ``EOF_CLEANUP_TIMEOUT``)."""

    @abc.abstractmethod
    def outcome_reported(self) -> None:
        """The job's outcome reached the server."""


class ThreadJobs:
    """What a job host adds to its child loop: jobs on threads, up to ``init.max_jobs``.

    Mixed in ahead of an ``IpcLoop`` subclass whose ``_on_message`` calls ``_start_job``,
    ``_outcome_reported``, ``_shutdown`` and ``_lost``; ``_new_job`` makes a job's thread.
    """

    _init: Initialize
    _outbox: Outbox
    _exit_code: ExitCode

    if TYPE_CHECKING:

        def _finish(self) -> None: ...  # the IpcLoop's

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # the IpcLoop subclass's own arguments
        self._init_threads()

    def _init_threads(self) -> None:
        self._jobs: dict[str, JobThread[Any]] = {}
        self._closing = False
        self._host_loop: asyncio.AbstractEventLoop | None = None

    def _new_job(self, msg: StartJob, job: agent.Job) -> JobThread[Any]:
        raise NotImplementedError

    def _bind_host_loop(self) -> None:
        self._host_loop = asyncio.get_running_loop()

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
        thread_job = self._jobs[job.id] = self._new_job(msg, job)
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
            job.outcome_reported()

    def _shutdown(self, reason: str, job_id: str = "") -> None:
        if job_id:
            job = self._jobs.get(job_id)
            if job is not None:
                job.request_shutdown(reason)
            return
        self._closing = True
        if not self._jobs:
            logger.info("Shutting down while idle: %s.", reason)
            self._finish()
            return
        for job in self._jobs.values():
            job.request_shutdown(reason)

    def _lost(self, reason: str) -> None:
        arm_exit_watchdog(EOF_CLEANUP_TIMEOUT + EXIT_TIMEOUT, self._exit_code)
        self._closing = True
        if not self._jobs:
            self._finish()
            return
        for job in self._jobs.values():
            logger.warning("Ending job %s: %s.", job.job_id, reason)
            job.abort(reason)


class _ThreadJob(JobThread[JobRun]):
    """One lksup-API job on a thread and event loop of its own."""

    def __init__(self, msg: StartJob, job: agent.Job, *, host: ThreadHost) -> None:
        super().__init__(job.id, host._outbox, host.job_done)
        self._msg = msg
        self._job = job
        self._host = host

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
            self._report(message)
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
            self._bind(run)
            await ended.wait()
            tg.cancel_scope.cancel()

    def request_shutdown(self, reason: str) -> None:
        self.call(lambda run: run.request_shutdown(reason))

    def abort(self, reason: str) -> None:
        self.call(lambda run: run.abort(reason, cleanup_timeout=EOF_CLEANUP_TIMEOUT))

    def outcome_reported(self) -> None:
        self.call(lambda run: run.outcome_reported())


class ThreadHost(ThreadJobs, ChildRuntime):
    """A job process that runs up to ``init.max_jobs`` jobs at once (see module docstring)."""

    async def serve(
        self, sock: socket.socket, decoder: FrameDecoder, received: list[bytes]
    ) -> ExitCode:
        """As ``ChildRuntime.serve``; jobs run on their own threads meanwhile."""
        self._bind_host_loop()
        return await super().serve(sock, decoder, received)

    def _new_job(self, msg: StartJob, job: agent.Job) -> JobThread[Any]:
        return _ThreadJob(msg, job, host=self)
