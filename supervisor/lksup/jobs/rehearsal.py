"""A rehearsal of the job-start path, run once in a template before it forks.

A job process handles one job, so everything on the way from ``StartJob`` to the entrypoint
runs for the first time in that process: the first decode of each message type, the first job
parsed, the first ``JobContext`` and ``JobRun`` built, the first task group, cancel scope and
event of the event loop's backend. Each first use fills a cache or imports lazily, and together
they cost about a millisecond inside the job's start on a 2-CPU host (measured: decode 1.1 ms
-> 0.4 ms, context 0.7 ms -> 0.2 ms in a freshly forked process). A template pays them here,
before ``gc.freeze()``, and every process forked from it starts with them paid, in shared
memory.

The rehearsal uses no sockets of the process and leaves nothing behind: its event loop is
closed, no thread is started, and its log records are not emitted.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import anyio
from livekit.protocol import agent, models

from lksup.jobs.context import JobContext, JobProcess
from lksup.jobs.framing import FrameDecoder
from lksup.jobs.ipc import (
    JobEnded,
    Message,
    OfferRequest,
    OutcomeReported,
    Ping,
    Shutdown,
    StartJob,
    decode,
    encode,
)
from lksup.jobs.runner import JobRun
from lksup.jobs.sockio import receive

__all__ = ["rehearse", "walk"]

_done = False
_JOB_ID = "AJ_rehearsal"


def rehearse() -> None:
    """Run the job-start path once with a job that does nothing (idempotent, never raises)."""
    global _done
    if _done:
        return
    _done = True
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    error: Exception | None = None
    try:
        anyio.run(_rehearsal, backend="asyncio")
    except Exception as exc:  # a job meets (and reports) whatever this met: the template goes on
        error = exc
    finally:
        logging.disable(previous)
    if error is not None:
        logging.getLogger("lksup.zygote").debug("The job-start rehearsal failed.", exc_info=error)


async def walk() -> None:
    """Walk the job-start path once more in an idle job process, with a job that does nothing.

    A forked process shares its template's pages until it writes them: reference counts make
    the first job's way through this code copy page after page. Walked while the process is
    idle, those copies are made before the job arrives. The walk's own job logs nothing (its
    records are filtered out by its job id) and sends nothing; it never raises.
    """
    hide = _HideRehearsal()
    job_logger = logging.getLogger("lksup.jobs")
    job_logger.addFilter(hide)
    try:
        decoder = FrameDecoder()
        await _run([decode(payload) for payload in decoder.feed(_frames())])
    except Exception:  # the real job will meet (and report) whatever this met
        job_logger.debug("The idle walk of the job-start path failed.", exc_info=True)
    finally:
        job_logger.removeFilter(hide)


class _HideRehearsal(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _JOB_ID not in record.getMessage()


def _frames() -> bytes:
    """One frame of each message a job process gets on its way to and through a job."""
    room = models.Room(name="rehearsal", sid="RM_rehearsal")
    job = agent.Job(id=_JOB_ID, type=agent.JobType.JT_ROOM, room=room).SerializeToString()
    messages: list[Message] = [
        OfferRequest(job=job, default_identity=f"agent-{_JOB_ID}"),
        StartJob(job=job, url="ws://localhost:7880", token="token", worker_id="AW_rehearsal"),
        Ping(sent_at_ns=1),
        OutcomeReported(job_id=_JOB_ID),
        Shutdown(reason="rehearsal"),
    ]
    return b"".join(encode(message) for message in messages)


def _job_run(messages: list[Message], *, on_ended: Callable[[JobEnded], None]) -> JobRun:
    """The ``JobRun`` of the ``StartJob`` among ``messages``, as the runtime builds it."""
    (start,) = (message for message in messages if isinstance(message, StartJob))
    ctx = JobContext(
        proc=JobProcess(agent_name="rehearsal"),
        job=agent.Job.FromString(start.job),
        url=start.url,
        token=start.token,
    )
    return JobRun(ctx=ctx, entrypoint=_nothing, grace=1.0, send=_drop, on_ended=on_ended)


async def _nothing(_ctx: JobContext) -> None:
    pass


def _drop(_message: object) -> None:
    pass


async def _rehearsal() -> None:
    """Through a socket pair, as a job process receives them: the frames, then the job."""
    frames = _frames()
    left, right = socket.socketpair()
    messages: list[Message] = []
    with left, right:
        left.sendall(frames)  # a few hundred bytes: the socket buffer takes them at once
        right.setblocking(False)
        decoder, size = FrameDecoder(), 0
        while size < len(frames):
            data = await receive(right)
            size += len(data)
            messages += [decode(payload) for payload in decoder.feed(data)]
    await _run(messages)


async def _run(messages: list[Message]) -> None:
    """Run the job of the ``StartJob`` among ``messages`` to its end."""
    ended = anyio.Event()
    run = _job_run(messages, on_ended=lambda _ended: ended.set())
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            run.start(tg)
            await ended.wait()
