"""The agent author's API, in-process: JobRequest answers, JobContext state, rtc errors."""

from __future__ import annotations

import sys

import anyio
import pytest
from livekit.protocol import agent

import lksup
from lksup import JobContext, JobProcess, JobRequest
from lksup.jobs.context import (
    RTC_INSTALL_HINT,
    JobAcceptArguments,
    RtcUnavailableError,
    import_rtc,
)

JOB = agent.Job(
    id="AJ_1", agent_name="support", metadata="m", room={"name": "vip-1", "sid": "RM_1"}
)


class Answers:
    def __init__(self) -> None:
        self.accepted: list[JobAcceptArguments] = []
        self.rejected: list[bool] = []

    async def accept(self, arguments: JobAcceptArguments) -> None:
        self.accepted.append(arguments)

    async def reject(self, terminate: bool) -> None:
        self.rejected.append(terminate)

    def request(
        self, job: agent.Job = JOB, defaults: JobAcceptArguments | None = None
    ) -> JobRequest:
        return JobRequest(job=job, on_accept=self.accept, on_reject=self.reject, defaults=defaults)


def test_public_api_is_exported() -> None:
    assert {"JobContext", "JobProcess", "JobRequest", "__version__"} <= set(lksup.__all__)
    assert lksup.JobContext is JobContext
    with pytest.raises(AttributeError):
        _ = lksup.Nope


def test_request_mirrors_the_job() -> None:
    request = Answers().request()
    assert (request.id, request.agent_name, request.room.name, request.room.sid) == (
        "AJ_1",
        "support",
        "vip-1",
        "RM_1",
    )
    assert request.job is JOB
    assert request.publisher is None
    publisher_job = agent.Job(id="AJ_2", participant={"identity": "alice"})
    publisher = Answers().request(publisher_job).publisher
    assert publisher is not None
    assert publisher.identity == "alice"


@pytest.mark.anyio
async def test_accept_fills_from_the_declarative_defaults() -> None:
    answers = Answers()
    defaults = JobAcceptArguments(
        name="Support", identity="agent-x", metadata="d", attributes={"team": "cs", "tier": "std"}
    )
    await answers.request(defaults=defaults).accept(identity="vip-AJ_1", attributes={"tier": "vip"})
    await answers.request(defaults=defaults).accept(name="Concierge", metadata="own")
    await answers.request().accept()
    assert answers.accepted == [
        JobAcceptArguments(
            name="Support",
            identity="vip-AJ_1",
            metadata="d",
            attributes={"team": "cs", "tier": "vip"},
        ),
        JobAcceptArguments(
            name="Concierge",
            identity="agent-x",
            metadata="own",
            attributes={"team": "cs", "tier": "std"},
        ),
        JobAcceptArguments(
            name="", identity="agent-AJ_1", metadata="", attributes={}
        ),  # the SDK's default identity
    ]


@pytest.mark.anyio
async def test_reject_terminates_by_default_and_only_the_first_answer_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answers = Answers()
    request = answers.request()
    before = request.answered
    await request.reject()
    await request.accept()
    await request.reject(terminate=False)
    assert (before, request.answered) == (False, True)
    assert (answers.rejected, answers.accepted) == ([True], [])
    assert (
        caplog.messages == ["Job request AJ_1 was already answered; ignoring the new answer."] * 2
    )
    other = answers.request()
    await other.reject(terminate=False)
    assert answers.rejected == [True, False]


def test_process_userdata_and_identity() -> None:
    proc = JobProcess(agent_name="support", pid=1234)
    proc.userdata["model"] = "m"
    assert (proc.pid, proc.agent_name, proc.userdata) == (1234, "support", {"model": "m"})
    assert JobProcess().agent_name == ""


def _context(job: agent.Job = JOB) -> JobContext:
    return JobContext(
        proc=JobProcess(agent_name="fleet-name"),
        job=job,
        url="ws://lk",
        token="tok",
        participant_identity="agent-AJ_1",
        participant_name="Support",
    )


@pytest.mark.anyio
async def test_context_exposes_the_job() -> None:
    ctx = _context()
    assert ctx.job is JOB
    assert (ctx.room_name, ctx.url, ctx.token, ctx.agent_name) == (
        "vip-1",
        "ws://lk",
        "tok",
        "support",
    )
    assert (ctx.participant_identity, ctx.local_participant_identity, ctx.participant_name) == (
        "agent-AJ_1",
        "agent-AJ_1",
        "Support",
    )
    assert _context(agent.Job(id="x")).agent_name == "fleet-name"


@pytest.mark.anyio
async def test_first_shutdown_reason_wins() -> None:
    ctx = _context()
    initially = ctx.shutdown_reason
    async with anyio.create_task_group() as tg:
        reasons: list[str] = []

        async def waiter() -> None:
            reasons.append(await ctx.wait_for_shutdown())

        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        ctx.shutdown("done")
        ctx.shutdown("again")
    assert reasons == ["done"]
    assert (initially, ctx.shutdown_reason) == (None, "done")
    assert await ctx.wait_for_shutdown() == "done"
    fresh = _context()
    fresh.shutdown()
    assert fresh.shutdown_reason == "user requested"


@pytest.mark.anyio
async def test_shutdown_callbacks_of_both_shapes_get_the_reason() -> None:
    ctx = _context()
    seen: list[str] = []

    async def with_reason(reason: str) -> None:
        seen.append(f"with:{reason}")

    async def without() -> None:
        seen.append("without")

    class Owner:
        async def method(self, reason: str) -> None:
            seen.append(f"method:{reason}")

    ctx.add_shutdown_callback(with_reason)
    ctx.add_shutdown_callback(without)
    ctx.add_shutdown_callback(Owner().method)
    for callback in ctx._shutdown_callbacks():
        await callback("bye")
    assert seen == ["with:bye", "without", "method:bye"]


@pytest.mark.anyio
async def test_connect_without_the_rtc_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "livekit.rtc", None)  # what an absent package looks like
    with pytest.raises(RtcUnavailableError) as caught:
        import_rtc()
    message = str(caught.value)
    assert "the `livekit` Python package" in message
    assert message.endswith(f"install it with: {RTC_INSTALL_HINT}")
    assert RTC_INSTALL_HINT == "pip install 'lksup[rtc]'"
    assert isinstance(caught.value, ImportError)
    ctx = _context()
    with pytest.raises(RtcUnavailableError):
        await ctx.connect()
    with pytest.raises(RtcUnavailableError):
        _ = ctx.room


@pytest.mark.anyio
async def test_room_is_created_lazily_and_its_disconnection_ends_the_job() -> None:
    rtc = pytest.importorskip("livekit.rtc")
    ctx = _context()
    room = ctx.room
    assert isinstance(room, rtc.Room)
    assert ctx.room is room
    assert not ctx._is_connected()
    await ctx._disconnect_room()  # not connected: nothing to do
    room.emit("disconnected", "test")
    assert await ctx.wait_for_shutdown() == "room disconnected"
