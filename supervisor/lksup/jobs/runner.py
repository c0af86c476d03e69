"""One job's lifecycle inside its process: entrypoint, shutdown, grace, room, callbacks.

The order is the SDK's (``livekit/agents/ipc/job_proc_lazy_main.py``):

1. ``JobStarted`` is sent as the entrypoint is called, then the entrypoint runs as a task.
2. The job is asked to end, with a reason, by the first of: ``ctx.shutdown(reason)``, the
   supervisor's ``Shutdown(reason)``, SIGTERM (``"SIGTERM"``), the room disconnecting
   (``"room disconnected"``), the entrypoint raising (``"entrypoint failed"``), or the
   entrypoint returning while not connected to a room (``"entrypoint returned"``). An
   entrypoint that returns after ``ctx.connect()`` leaves the job running until one of the
   others, as in the SDK (the room, its event handlers and tasks carry the session).
3. ``ctx.wait_for_shutdown()`` returns the reason; the entrypoint gets ``grace`` seconds to
   return, then it is cancelled. With a room to leave, ``JobOutcome`` goes to the supervisor
   first, and the room is left once it answers that the server has the outcome (bounded by
   ``OUTCOME_ACK_TIMEOUT``): the server fails a job whose agent left the room before its
   status arrived.
4. The room is left (bounded), then the shutdown callbacks run concurrently with the reason,
   together bounded by ``grace`` (at least ``MIN_CALLBACK_TIMEOUT``, so that a zero grace
   still lets them run); a failing or slow callback is logged, never fatal.
5. ``JobEnded(job_id, error, reason)``: ``error`` is ``"<ExcType>: <message>"`` when the
   entrypoint raised, else empty. A requested shutdown is a success even when the entrypoint
   had to be cancelled (the SDK's process then exits normally and reports ``JS_SUCCESS``).

Worst case from a shutdown request to ``JobEnded``: ``grace + CANCEL_TIMEOUT +
ROOM_LEAVE_TIMEOUT + max(grace, MIN_CALLBACK_TIMEOUT)``. ``abort()`` (the supervisor is gone)
cancels the entrypoint at once and bounds everything that is left to ``cleanup_timeout``.

The entrypoint runs in the runtime's task group, not in one owned here, so an entrypoint that
ignores cancellation cannot hold back ``JobEnded``; the runtime's exit watchdog ends it.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc

from lksup.jobs.context import JobContext
from lksup.jobs.ipc import JobEnded, JobOutcome, JobStarted
from lksup.jobs.loader import describe_exception

__all__ = [
    "CANCEL_TIMEOUT",
    "MIN_CALLBACK_TIMEOUT",
    "OUTCOME_ACK_TIMEOUT",
    "ROOM_LEAVE_TIMEOUT",
    "JobRun",
]

logger = logging.getLogger("lksup.jobs")

#: How long a cancelled entrypoint gets to unwind before the shutdown goes on without it.
CANCEL_TIMEOUT = 2.0
#: How long leaving the room may take during shutdown.
ROOM_LEAVE_TIMEOUT = 2.0
#: The least time the shutdown callbacks get, whatever the grace.
MIN_CALLBACK_TIMEOUT = 1.0
#: How long a job that reported its outcome waits for the supervisor to have sent it to the
#: server before it leaves its room anyway.
OUTCOME_ACK_TIMEOUT = 2.0


class JobRun:
    """Runs one job from ``StartJob`` to ``JobEnded``.

    Args:
        ctx: the job's context.
        entrypoint: ``async def entrypoint(ctx)``.
        grace: seconds the entrypoint gets to return after a shutdown request; also the
            bound on the shutdown callbacks (at least ``MIN_CALLBACK_TIMEOUT``).
        send: queues a message to the supervisor (``JobStarted``).
        on_ended: called once with ``JobEnded`` when the job is over.
    """

    def __init__(
        self,
        *,
        ctx: JobContext,
        entrypoint: Callable[[JobContext], Awaitable[None]],
        grace: float,
        send: Callable[[JobStarted | JobOutcome], None],
        on_ended: Callable[[JobEnded], None],
    ) -> None:
        self._ctx = ctx
        self._entrypoint = entrypoint
        self._grace = max(grace, 0.0)
        self._send = send
        self._on_ended = on_ended
        self._job_id = ctx.job.id
        self._error = ""
        self._entry_done = anyio.Event()
        self._entry_scope = anyio.CancelScope()
        self._grace_scope: anyio.CancelScope | None = None
        self._outer = anyio.CancelScope()
        self._aborted = False
        self._outcome_reported = anyio.Event()

    @property
    def job_id(self) -> str:
        """The job's id."""
        return self._job_id

    def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Call the entrypoint and watch for the end of the job, in ``task_group``."""
        task_group.start_soon(self._run_entrypoint, name=f"entrypoint {self._job_id}")
        task_group.start_soon(self._lifecycle, name=f"job {self._job_id}")

    def outcome_reported(self) -> None:
        """The supervisor sent the job's outcome to the server (``OutcomeReported``)."""
        self._outcome_reported.set()

    def request_shutdown(self, reason: str) -> None:
        """End the job gracefully (the supervisor's ``Shutdown``, SIGTERM)."""
        self._ctx._request_shutdown(reason)

    def abort(self, reason: str, *, cleanup_timeout: float) -> None:
        """End the job now: cancel the entrypoint, finish everything within ``cleanup_timeout``."""
        self._aborted = True
        self._ctx._request_shutdown(reason)
        self._outer.deadline = min(self._outer.deadline, anyio.current_time() + cleanup_timeout)
        if self._grace_scope is not None:
            self._grace_scope.cancel()

    async def _run_entrypoint(self) -> None:
        ctx = self._ctx
        try:
            with self._entry_scope:
                try:
                    try:
                        result = self._entrypoint(ctx)
                    finally:
                        self._send(JobStarted(job_id=self._job_id))
                    if not inspect.isawaitable(result):
                        raise TypeError(
                            "the entrypoint must be an async function; it returned "
                            f"{type(result).__name__}"
                        )
                    await result
                except anyio.get_cancelled_exc_class():
                    raise
                except BaseException as exc:  # user code: SystemExit and friends fail the job
                    self._error = describe_exception(exc)
                    logger.exception("Entrypoint of job %s failed.", self._job_id)
                    ctx._request_shutdown("entrypoint failed")
                    return
            if self._entry_scope.cancelled_caught:
                return
            if ctx._is_connected():
                logger.info(
                    "Entrypoint of job %s returned; the room stays connected.", self._job_id
                )
            else:
                ctx._request_shutdown("entrypoint returned")
        finally:
            self._entry_done.set()

    async def _lifecycle(self) -> None:
        with self._outer:
            reason = await self._ctx.wait_for_shutdown()
            logger.info("Job %s is ending: %s.", self._job_id, reason)
            await self._stop_entrypoint()
            await self._report_outcome(reason)
            await self._leave_room()
            await self._run_callbacks(reason)
        self._on_ended(
            JobEnded(job_id=self._job_id, error=self._error, reason=self._ctx.shutdown_reason or "")
        )

    async def _stop_entrypoint(self) -> None:
        if self._entry_done.is_set():
            return
        if not self._aborted:
            with anyio.move_on_after(self._grace) as self._grace_scope:
                await self._entry_done.wait()
            if self._entry_done.is_set():
                return
            logger.warning(
                "Entrypoint of job %s did not return within %g s of the shutdown; cancelling.",
                self._job_id,
                self._grace,
            )
        self._entry_scope.cancel()
        with anyio.move_on_after(CANCEL_TIMEOUT):
            await self._entry_done.wait()
        if not self._entry_done.is_set():
            logger.error("Entrypoint of job %s ignores cancellation.", self._job_id)

    async def _report_outcome(self, reason: str) -> None:
        """Before leaving the room: the server fails a job whose agent left before its status."""
        if self._aborted or not self._ctx._is_connected():
            return
        self._send(JobOutcome(job_id=self._job_id, error=self._error, reason=reason))
        with anyio.move_on_after(OUTCOME_ACK_TIMEOUT):
            await self._outcome_reported.wait()

    async def _leave_room(self) -> None:
        with anyio.move_on_after(ROOM_LEAVE_TIMEOUT) as scope:
            try:
                await self._ctx._disconnect_room()
            except Exception:
                logger.exception("Leaving the room of job %s failed.", self._job_id)
        if scope.cancelled_caught:
            logger.warning("Leaving the room of job %s timed out.", self._job_id)

    async def _run_callbacks(self, reason: str) -> None:
        callbacks = self._ctx._shutdown_callbacks()
        if not callbacks:
            return
        pending: dict[int, str] = {}
        # abort: the outer deadline rules
        timeout = math.inf if self._aborted else max(self._grace, MIN_CALLBACK_TIMEOUT)

        async def run(index: int, callback: Callable[[str], Awaitable[None]]) -> None:
            try:
                await callback(reason)
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException:  # user code: one failing callback must not stop the others
                logger.exception(
                    "Shutdown callback %s of job %s failed.", pending[index], self._job_id
                )
            del pending[index]

        with anyio.move_on_after(timeout) as scope:
            async with anyio.create_task_group() as tg:
                for index, callback in enumerate(callbacks):
                    pending[index] = getattr(callback, "__qualname__", None) or f"#{index}"
                    tg.start_soon(run, index, callback)
        if scope.cancelled_caught and pending:
            logger.warning(
                "Shutdown callbacks of job %s did not finish within %g s: %s.",
                self._job_id,
                timeout,
                ", ".join(pending.values()),
            )
