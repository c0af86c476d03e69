"""A job host for ``runtime: livekit-agents`` (``job_executor: thread``): SDK jobs on threads.

As the SDK's own thread executor: up to ``Initialize.max_jobs`` jobs of one agent in one
process, each run by the SDK's job runner (``_JobProc`` with ``JobExecutorType.THREAD``) on a
thread and event loop of its own, so ``get_job_context()``, the HTTP session context and the
log fields are each job's own. Prewarm ran once (in the host, or in its template); every job
shares its ``JobProcess`` (``proc.userdata``), as jobs share one process's memory and fate.

Per job, an ``SdkJob`` reports ``JobStarted``, ``JobOutcome`` and ``JobEnded`` with the job's id.
The host's loop (``lksup.jobs.threads.ThreadJobs``) reads the supervisor's messages and relays
them to the job they name: ``Shutdown(job_id)``, ``OutcomeReported(job_id)``, and an
``InferenceResponse`` to the job whose request carried its id. Offers run the request function
on the host's loop and are declined while ``max_jobs`` jobs run.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import TYPE_CHECKING, Any

from livekit.protocol import agent

from lksup.jobs.channel import Outbox
from lksup.jobs.framing import FrameDecoder
from lksup.jobs.ipc import ExitCode, InferenceResponse, Initialize, StartJob
from lksup.jobs.loader import describe_exception
from lksup.jobs.runtime import IpcLoop
from lksup.jobs.sdk import adapter
from lksup.jobs.sdk.runtime import SdkJob, SdkRuntime, start_rtc_runtime
from lksup.jobs.threads import JobThread, ThreadJobs

if TYPE_CHECKING:
    from lksup.jobs.sdk.runtime import Prepared

__all__ = ["SdkThreadHost"]

logger = logging.getLogger("lksup.jobs")


class _Runner:
    """What runs one SDK job on its thread's loop: its hooks, the SDK's loop and its channel."""

    def __init__(self, sdk: SdkJob, channel: Any, main: asyncio.Task[None]) -> None:
        self.sdk = sdk
        self.channel = channel
        self.main = main

    @property
    def host(self) -> adapter.JobHost:
        assert self.sdk.host is not None
        return self.sdk.host


class _SdkThreadJob(JobThread[_Runner]):
    """One SDK job on a thread and event loop of its own."""

    def __init__(self, msg: StartJob, job: agent.Job, *, host: SdkThreadHost) -> None:
        super().__init__(job.id, host._outbox, host.job_done)
        self._msg = msg
        self._job = job
        self._host = host
        self.sdk = SdkJob(host._outbox, on_inference=lambda request, *_: host.route(request, self))

    async def _serve(self) -> None:
        prepared = self._host.prepared
        self.sdk.host = self.sdk.make_host(prepared.functions, thread=True)
        self.sdk.host.adopt(prepared.job_proc)
        channel = adapter.new_channel()
        main = asyncio.get_running_loop().create_task(
            self.sdk.host.run(channel), name=f"livekit-agents job {self.job_id}"
        )
        self.sdk.start(channel, self._msg, self._job)
        self._bind(_Runner(self.sdk, channel, main))
        await asyncio.wait([main])
        if not main.cancelled() and main.exception() is not None:
            logger.error("The livekit-agents job loop failed.", exc_info=main.exception())
            if not self.sdk.error:
                self.sdk.error = describe_exception(main.exception() or RuntimeError())
        self._report(self.sdk.ended())

    def request_shutdown(self, reason: str) -> None:
        self.call(lambda runner: runner.host.shutdown(runner.channel, reason))

    def abort(self, reason: str) -> None:
        def cancel(runner: _Runner) -> None:
            runner.main.cancel()  # the SDK's loop cancels the job task and runs its cleanup

        self.call(cancel)

    def outcome_reported(self) -> None:
        self.call(lambda runner: runner.sdk.outcome_reported())

    def inference_answer(self, msg: InferenceResponse) -> None:
        data = msg.data if msg.has_data else None
        self.call(
            lambda runner: runner.host.inference_answer(
                runner.channel, msg.request_id, data, msg.error
            )
        )


class SdkThreadHost(ThreadJobs, SdkRuntime):
    """A livekit-agents job process that runs up to ``init.max_jobs`` jobs at once."""

    def __init__(self, *, init: Initialize, outbox: Outbox, prepared: Prepared) -> None:
        super().__init__(init=init, outbox=outbox, request_fnc=prepared.functions.request_fnc)
        self.prepared = prepared
        self._requests: dict[str, _SdkThreadJob] = {}
        self._requests_lock = threading.Lock()

    async def serve(
        self, sock: socket.socket, decoder: FrameDecoder, received: list[bytes]
    ) -> ExitCode:
        """Serve the supervisor's messages; jobs run on their own threads meanwhile."""
        start_rtc_runtime()
        self._bind_host_loop()
        return await IpcLoop.serve(self, sock, decoder, received)

    def route(self, request_id: str, job: _SdkThreadJob) -> None:
        """The answer to inference request ``request_id`` goes to ``job`` (any thread)."""
        with self._requests_lock:
            self._requests[request_id] = job

    def _new_job(self, msg: StartJob, job: agent.Job) -> JobThread[Any]:
        return _SdkThreadJob(msg, job, host=self)

    def _forget(self, job_id: str) -> None:
        with self._requests_lock:  # requests of an ended job are answered to no one
            self._requests = {r: j for r, j in self._requests.items() if j.job_id != job_id}
        super()._forget(job_id)

    def _inference_answer(self, msg: InferenceResponse) -> None:
        with self._requests_lock:
            job = self._requests.pop(msg.request_id, None)
        if job is None:
            logger.warning("Ignoring the answer to unknown inference request %s.", msg.request_id)
            return
        job.inference_answer(msg)
