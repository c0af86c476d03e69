"""One job's lifecycle, in-process: how it ends, grace, cancellation, callbacks, abort."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import pytest
from livekit.protocol import agent

from lksup import JobContext, JobProcess
from lksup.jobs import runner
from lksup.jobs.ipc import JobEnded, JobOutcome, JobStarted
from lksup.jobs.runner import JobRun

Entrypoint = Callable[[JobContext], Awaitable[None]]
pytestmark = pytest.mark.anyio


@dataclass
class Outcome:
    sent: list[JobStarted | JobOutcome] = field(default_factory=list)
    ended: list[JobEnded] = field(default_factory=list)

    @property
    def end(self) -> JobEnded:
        (only,) = self.ended
        return only


async def run_job(
    entrypoint: Entrypoint,
    *,
    grace: float = 5.0,
    drive: Callable[[JobRun, JobContext], Awaitable[None]] | None = None,
) -> Outcome:
    outcome = Outcome()
    ended = anyio.Event()
    ctx = JobContext(proc=JobProcess(), job=agent.Job(id="AJ_1"), url="ws://lk", token="t")

    def on_ended(msg: JobEnded) -> None:
        outcome.ended.append(msg)
        ended.set()

    job = JobRun(
        ctx=ctx, entrypoint=entrypoint, grace=grace, send=outcome.sent.append, on_ended=on_ended
    )
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            job.start(tg)
            if drive is not None:
                await drive(job, ctx)
            await ended.wait()
            tg.cancel_scope.cancel()
    return outcome


async def test_returning_ends_the_job_successfully() -> None:
    async def entrypoint(ctx: JobContext) -> None:
        pass

    outcome = await run_job(entrypoint)
    assert outcome.sent == [JobStarted(job_id="AJ_1")]
    assert outcome.end == JobEnded(job_id="AJ_1", error="", reason="entrypoint returned")


async def test_raising_fails_the_job_with_a_summary(caplog: pytest.LogCaptureFixture) -> None:
    async def entrypoint(ctx: JobContext) -> None:
        raise RuntimeError("boom")

    outcome = await run_job(entrypoint)
    assert outcome.end == JobEnded(
        job_id="AJ_1", error="RuntimeError: boom", reason="entrypoint failed"
    )
    (record,) = [r for r in caplog.records if r.message == "Entrypoint of job AJ_1 failed."]
    assert record.exc_info is not None


@pytest.mark.parametrize(
    ("entrypoint", "error"),
    [
        (
            lambda ctx: None,
            "TypeError: the entrypoint must be an async function; it returned NoneType",
        ),
        (lambda ctx: 1 / 0, "ZeroDivisionError: division by zero"),
    ],
)
async def test_a_broken_entrypoint_still_reports_started_then_ended(
    entrypoint: Entrypoint, error: str
) -> None:
    outcome = await run_job(entrypoint)
    assert outcome.sent == [JobStarted(job_id="AJ_1")]
    assert outcome.end.error == error


async def test_system_exit_in_the_entrypoint_is_a_failure() -> None:
    async def entrypoint(ctx: JobContext) -> None:
        raise SystemExit(3)

    assert (await run_job(entrypoint)).end.error == "SystemExit: 3"


async def test_callbacks_run_after_the_entrypoint_with_the_reason() -> None:
    events: list[str] = []

    async def cleanup(reason: str) -> None:
        events.append(f"callback:{reason}")

    async def entrypoint(ctx: JobContext) -> None:
        ctx.add_shutdown_callback(cleanup)
        reason = await ctx.wait_for_shutdown()
        await anyio.sleep(0)
        events.append(f"entrypoint saw:{reason}")

    async def drive(job: JobRun, ctx: JobContext) -> None:
        await anyio.wait_all_tasks_blocked()
        job.request_shutdown("terminated by server")

    outcome = await run_job(entrypoint, drive=drive)
    assert events == ["entrypoint saw:terminated by server", "callback:terminated by server"]
    assert outcome.end == JobEnded(job_id="AJ_1", error="", reason="terminated by server")


async def test_callbacks_run_even_with_a_zero_grace() -> None:
    ran: list[str] = []

    async def cleanup(reason: str) -> None:
        await anyio.sleep(0)
        ran.append(reason)

    async def entrypoint(ctx: JobContext) -> None:
        ctx.add_shutdown_callback(cleanup)

    assert (await run_job(entrypoint, grace=0)).end.error == ""
    assert ran == ["entrypoint returned"]


async def test_ctx_shutdown_ends_the_job_with_its_reason() -> None:
    async def entrypoint(ctx: JobContext) -> None:
        ctx.shutdown("done")
        await anyio.sleep_forever()  # never returns: cancelled after the grace

    outcome = await run_job(entrypoint, grace=0.05)
    assert outcome.end == JobEnded(job_id="AJ_1", error="", reason="done")


async def test_entrypoint_is_cancelled_after_the_grace_and_that_is_a_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cancelled = anyio.Event()

    async def entrypoint(ctx: JobContext) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    async def drive(job: JobRun, ctx: JobContext) -> None:
        job.request_shutdown("drain deadline")

    outcome = await run_job(entrypoint, grace=0.05, drive=drive)
    assert cancelled.is_set()
    assert outcome.end == JobEnded(job_id="AJ_1", error="", reason="drain deadline")
    assert (
        "Entrypoint of job AJ_1 did not return within 0.05 s of the shutdown; cancelling."
        in caplog.messages
    )


async def test_an_error_during_the_grace_fails_the_job() -> None:
    async def entrypoint(ctx: JobContext) -> None:
        await ctx.wait_for_shutdown()
        raise ValueError("cleanup failed")

    async def drive(job: JobRun, ctx: JobContext) -> None:
        job.request_shutdown("SIGTERM")

    outcome = await run_job(entrypoint, drive=drive)
    assert outcome.end == JobEnded(
        job_id="AJ_1", error="ValueError: cleanup failed", reason="SIGTERM"
    )


async def test_failing_and_slow_callbacks_are_logged_not_fatal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runner, "MIN_CALLBACK_TIMEOUT", 0.05)
    ran: list[str] = []

    async def fails(reason: str) -> None:
        raise RuntimeError("nope")

    async def hangs() -> None:
        await anyio.sleep_forever()

    async def works(reason: str) -> None:
        ran.append(reason)

    async def entrypoint(ctx: JobContext) -> None:
        for callback in (fails, hangs, works):
            ctx.add_shutdown_callback(callback)

    outcome = await run_job(entrypoint, grace=0.05)
    assert outcome.end.error == ""
    assert ran == ["entrypoint returned"]
    assert any(
        m.startswith("Shutdown callback ") and m.endswith("fails of job AJ_1 failed.")
        for m in caplog.messages
    )
    assert (
        "Shutdown callbacks of job AJ_1 did not finish within 0.05 s: "
        "test_failing_and_slow_callbacks_are_logged_not_fatal.<locals>.hangs." in caplog.messages
    )


async def test_abort_cancels_at_once_and_bounds_the_cleanup() -> None:
    events: list[str] = []

    async def hangs(reason: str) -> None:
        events.append(f"callback:{reason}")
        await anyio.sleep_forever()

    async def entrypoint(ctx: JobContext) -> None:
        ctx.add_shutdown_callback(hangs)
        try:
            await anyio.sleep_forever()
        finally:
            events.append("entrypoint cancelled")

    async def drive(job: JobRun, ctx: JobContext) -> None:
        await anyio.wait_all_tasks_blocked()
        job.abort("supervisor went away", cleanup_timeout=0.05)

    outcome = await run_job(entrypoint, grace=3600, drive=drive)
    assert events == ["entrypoint cancelled", "callback:supervisor went away"]
    assert outcome.end == JobEnded(job_id="AJ_1", error="", reason="supervisor went away")


async def test_an_entrypoint_that_ignores_cancellation_does_not_hold_back_the_end(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runner, "CANCEL_TIMEOUT", 0.05)
    release = anyio.Event()

    async def entrypoint(ctx: JobContext) -> None:
        with anyio.CancelScope(shield=True):
            await release.wait()

    async def drive(job: JobRun, ctx: JobContext) -> None:
        job.request_shutdown("stop")

    outcome = Outcome()
    ended = anyio.Event()
    ctx = JobContext(proc=JobProcess(), job=agent.Job(id="AJ_1"), url="", token="")

    def on_ended(msg: JobEnded) -> None:
        outcome.ended.append(msg)
        ended.set()

    job = JobRun(
        ctx=ctx, entrypoint=entrypoint, grace=0.01, send=outcome.sent.append, on_ended=on_ended
    )
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            job.start(tg)
            await drive(job, ctx)
            await ended.wait()
            release.set()  # let the test's task group end
    assert outcome.end == JobEnded(job_id="AJ_1", error="", reason="stop")
    assert "Entrypoint of job AJ_1 ignores cancellation." in caplog.messages


class FakeRoom:
    """Stands in for a connected ``livekit.rtc.Room`` (no server needed)."""

    def __init__(self) -> None:
        self.connected = True

    def isconnected(self) -> bool:
        return self.connected

    async def disconnect(self) -> None:
        self.connected = False


async def test_a_connected_job_outlives_its_entrypoint_until_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="lksup.jobs")
    room = FakeRoom()
    returned = anyio.Event()

    async def entrypoint(ctx: JobContext) -> None:
        ctx._room = room  # type: ignore[assignment]  # what ctx.connect() leaves behind
        ctx._connected = True
        returned.set()

    async def drive(job: JobRun, ctx: JobContext) -> None:
        await returned.wait()
        await anyio.wait_all_tasks_blocked()
        assert ctx.shutdown_reason is None  # the job goes on, as in the SDK
        assert room.connected
        ctx._on_room_disconnected("server closed the room")

    outcome = await run_job(entrypoint, drive=drive)
    assert outcome.end == JobEnded(job_id="AJ_1", error="", reason="room disconnected")
    assert "Entrypoint of job AJ_1 returned; the room stays connected." in caplog.messages


async def test_shutdown_leaves_a_connected_room() -> None:
    room = FakeRoom()

    async def entrypoint(ctx: JobContext) -> None:
        ctx._room = room  # type: ignore[assignment]
        ctx._connected = True
        await ctx.wait_for_shutdown()

    async def drive(job: JobRun, ctx: JobContext) -> None:
        await anyio.wait_all_tasks_blocked()
        job.request_shutdown("terminated by server")

    outcome = await run_job(entrypoint, drive=drive)
    assert outcome.end.reason == "terminated by server"
    assert not room.connected
