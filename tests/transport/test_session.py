"""The agent session against a scriptable server over real loopback sockets: every wait is a
handshake (a message read under ``fail_after``), never a sleep."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from livekit.protocol import agent as pb
from livekit.protocol import models as pb_models

from lksup.protocol.backoff import Backoff
from lksup.protocol.events import Accept, Answer, Decline, JobAssigned, OfferReceived
from lksup.protocol.machine import Options, State
from lksup.transport.session import AgentSession, Credentials, NotRegistered, Timeouts
from tests.transport.fake_server import SECRET, FakeServer, fake_server

pytestmark = pytest.mark.anyio

FAST = Backoff(initial_delay=0.01, factor=2, max_delay=0.05, jitter=0)


class Agent:
    """A test agent: accepts (or as told), and runs each job until told to end it."""

    def __init__(self) -> None:
        self.answer: Answer | None = None
        self.decide_forever = False
        self.started: dict[str, anyio.Event] = {}
        self.finish: dict[str, anyio.Event] = {}
        self.terminated: list[str] = []
        self.released: list[str] = []

    async def decide(self, offer: OfferReceived) -> Answer:
        if self.decide_forever:
            await anyio.sleep_forever()
        return self.answer or Accept(identity=f"test-{offer.job.id}", name="Tester")

    async def run_job(self, assignment: JobAssigned, session: AgentSession) -> None:
        job_id = assignment.job.id
        session.job_started(job_id)
        self.started.setdefault(job_id, anyio.Event()).set()
        await self.finish.setdefault(job_id, anyio.Event()).wait()
        session.job_ended(job_id, error=None)

    def terminate(self, job_id: str) -> None:
        self.terminated.append(job_id)
        self.finish.setdefault(job_id, anyio.Event()).set()

    def release(self, job_id: str) -> None:
        self.released.append(job_id)


@asynccontextmanager
async def running(
    server: FakeServer, agent: Agent, **options: object
) -> AsyncIterator[AgentSession]:
    session = AgentSession(
        Options(agent_name="tester", version="0.1.0", backoff=FAST, **options),  # type: ignore[arg-type]
        Credentials(server.url, "devkey", SECRET),
        agent,
        timeouts=Timeouts(open_timeout=2, answer_timeout=0.5),
        rand=lambda: 0.0,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(session.run)
        try:
            yield session
        finally:
            session.stop()
            for event in agent.finish.values():
                event.set()


def offer(job_id: str, room: str = "room-1") -> pb.ServerMessage:
    message = pb.ServerMessage()
    message.availability.job.CopyFrom(
        pb.Job(id=job_id, type=pb.JT_ROOM, room=pb_models.Room(name=room, sid="RM_1"))
    )
    return message


def assignment(job_id: str) -> pb.ServerMessage:
    message = pb.ServerMessage()
    message.assignment.job.CopyFrom(
        pb.Job(id=job_id, type=pb.JT_ROOM, room=pb_models.Room(name="room-1"))
    )
    message.assignment.token = "job-token"
    return message


async def test_registers_answers_offers_and_reports_job_status() -> None:
    agent = Agent()
    async with fake_server() as server, running(server, agent) as session:
        peer = await server.accept()
        assert peer.token_claims["iss"] == "devkey"
        assert peer.token_claims["video"]["agent"] is True  # type: ignore[index]
        assert "exp" in peer.token_claims
        register = await peer.register("AW_1")
        assert register.agent_name == "tester"
        assert register.version == "0.1.0"
        assert register.HasField("allowed_permissions")
        status = await peer.next("update_worker")
        assert status.update_worker.status == pb.WS_AVAILABLE
        assert await session.wait_registered() == "AW_1"

        await peer.send(offer("AJ_1"))
        answer = (await peer.next("availability")).availability
        assert answer.available
        assert answer.participant_identity == "test-AJ_1"
        assert answer.participant_attributes["lk.agent.name"] == "tester"

        await peer.send(assignment("AJ_1"))
        running_update = await peer.next("update_job")
        assert running_update.update_job.status == pb.JS_RUNNING
        agent.finish.setdefault("AJ_1", anyio.Event()).set()
        done = await peer.next("update_job")
        assert (done.update_job.job_id, done.update_job.status) == ("AJ_1", pb.JS_SUCCESS)


async def test_policy_that_hangs_is_declined_in_time() -> None:
    agent = Agent()
    agent.decide_forever = True
    async with fake_server() as server, running(server, agent):
        peer = await server.accept()
        await peer.register()
        await peer.send(offer("AJ_1"))
        answer = await peer.next("availability", timeout=2.0)
        assert not answer.availability.available
        assert not answer.availability.terminate


async def test_reject_terminates() -> None:
    agent = Agent()
    agent.answer = Decline(terminate=True, cause="request_fnc")
    async with fake_server() as server, running(server, agent) as session:
        peer = await server.accept()
        await peer.register()
        await peer.send(offer("AJ_1"))
        answer = (await peer.next("availability")).availability
        assert (answer.available, answer.terminate) == (False, True)
        assert session.offers["terminated"] == 1
        assert session.declines == {"request_fnc": 1}  # metrics: declines by cause


async def test_jobs_survive_a_dropped_connection_and_are_reported_after_reregistering() -> None:
    agent = Agent()
    async with fake_server() as server, running(server, agent) as session:
        peer = await server.accept()
        await peer.register("AW_1")
        await peer.send(offer("AJ_1"))
        await peer.next("availability")
        await peer.send(assignment("AJ_1"))
        await peer.next("update_job")
        peer.drop()  # no close frame: the client sees 1006
        again = await server.accept()
        await again.register("AW_2")
        migrate = await again.next("migrate_job")
        assert list(migrate.migrate_job.job_ids) == ["AJ_1"]
        status = await again.next("update_worker")
        assert status.update_worker.job_count == 1
        assert await session.wait_registered() == "AW_2"
        assert session.reconnects == 1
        assert set(session.machine.running_jobs) == {"AJ_1"}


async def test_server_that_never_registers_ends_in_failed_after_max_retry() -> None:
    agent = Agent()
    async with (
        fake_server() as server,
        running(server, agent, max_retry=3, register_timeout=0.2) as session,
    ):
        for _ in range(3):
            peer = await server.accept()
            await peer.next("register")  # and never answer
        with anyio.fail_after(5):
            assert await session.wait_finished() is State.FAILED
        assert session.machine.attempts == 3
        assert session.machine.last_error == "no register response in time"


async def test_refused_credentials_give_up_with_a_clear_reason() -> None:
    agent = Agent()
    async with (
        fake_server(reject_status=401) as server,
        running(server, agent, max_retry=2) as session,
    ):
        with anyio.fail_after(5):
            assert await session.wait_finished() is State.FAILED
        assert session.machine.last_error == "HTTP 401: the server refused the API key or secret"


@pytest.mark.parametrize(
    "hostile",
    [b"\xff\xff\xff\xff", "text frame", b"x" * (3 * 1024 * 1024)],
    ids=["garbage", "text", "oversize"],
)
async def test_hostile_frames_lead_to_a_reconnect_or_are_ignored(hostile: bytes | str) -> None:
    agent = Agent()
    async with fake_server() as server, running(server, agent) as session:
        peer = await server.accept()
        await peer.register("AW_1")
        await peer.connection.send(hostile)
        if isinstance(hostile, str):
            await peer.send(offer("AJ_1"))  # still usable
            assert (await peer.next("availability")).availability.available
            assert session.violations == 1
        else:
            again = await server.accept()
            await again.register("AW_2")
            assert await session.wait_registered() == "AW_2"


async def test_drain_reports_full_and_closes_with_1001_when_the_last_job_ends() -> None:
    agent = Agent()
    async with fake_server() as server, running(server, agent) as session:
        peer = await server.accept()
        await peer.register()
        await peer.send(offer("AJ_1"))
        await peer.next("availability")
        await peer.send(assignment("AJ_1"))
        await agent.started.setdefault("AJ_1", anyio.Event()).wait()
        session.drain()
        while True:
            status = (await peer.next("update_worker")).update_worker
            if status.draining:
                break
        assert status.status == pb.WS_FULL
        await peer.send(offer("AJ_2"))
        assert not (await peer.next("availability")).availability.available
        agent.finish["AJ_1"].set()
        ended = await peer.next("update_job")  # (JS_RUNNING was skipped above)
        assert ended.update_job.status == pb.JS_SUCCESS
        with anyio.fail_after(5):
            await peer.connection.wait_closed()
        assert peer.connection.close_code == 1001
        with anyio.fail_after(5):
            assert await session.wait_finished() is State.CLOSED


async def test_termination_reaches_the_agent_once() -> None:
    agent = Agent()
    async with fake_server() as server, running(server, agent):
        peer = await server.accept()
        await peer.register()
        await peer.send(offer("AJ_1"))
        await peer.next("availability")
        await peer.send(assignment("AJ_1"))
        await agent.started.setdefault("AJ_1", anyio.Event()).wait()
        termination = pb.ServerMessage()
        termination.termination.job_id = "AJ_1"
        await peer.send(termination)
        await peer.send(termination)
        await peer.next("update_job")  # running
        ended = await peer.next("update_job")
        assert ended.update_job.status == pb.JS_SUCCESS
        assert agent.terminated == ["AJ_1"]


async def test_a_server_that_stops_answering_pings_is_left_and_reconnected() -> None:
    agent = Agent()
    async with fake_server() as server:
        session = AgentSession(
            Options(agent_name="tester", version="0.1.0", backoff=FAST),
            Credentials(server.url, "devkey", SECRET),
            agent,
            timeouts=Timeouts(open_timeout=2, ping_interval=0.05, ping_timeout=0.2),
            rand=lambda: 0.0,
        )
        with anyio.fail_after(20):  # a hang fails here, saying where it hung
            async with anyio.create_task_group() as tg:
                await tg.start(session.run)
                peer = await server.accept()
                await peer.register("AW_1")
                await session.wait_registered()
                peer.connection.transport.pause_reading()  # frozen: reads and answers nothing
                again = await server.accept()
                await again.register("AW_2")
                assert await session.wait_registered() == "AW_2"
                assert session.reconnects == 1
                peer.drop()  # the frozen server side would otherwise hold the teardown
                session.stop()


async def test_protocol_violations_are_logged_once_with_the_agent_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent = Agent()
    async with fake_server() as server, running(server, agent) as session:
        peer = await server.accept()
        await peer.register("AW_1")
        with caplog.at_level("WARNING", logger="lksup.agent"):
            await peer.connection.send("not protobuf")
            await peer.send(offer("AJ_1"))
            await peer.next("availability")
        warnings = [r.getMessage() for r in caplog.records if r.name == "lksup.agent"]
        assert warnings == ["agent tester: text frame ignored (expected binary)"]
        assert caplog.records[0].agent == "tester"  # type: ignore[attr-defined]
        assert session.violations == 1


async def test_an_accept_the_machine_turns_into_a_decline_releases_the_reservation() -> None:
    agent = Agent()
    async with fake_server() as server, running(server, agent, max_jobs=1) as session:
        peer = await server.accept()
        await peer.register()
        await peer.send(offer("AJ_1"))
        assert (await peer.next("availability")).availability.available
        await peer.send(offer("AJ_2"))  # at capacity: declined by the machine itself
        assert not (await peer.next("availability")).availability.available
        assert agent.released == []
        peer.drop()  # the reservation for AJ_1 dies with the connection
        again = await server.accept()
        await again.register()
        await session.wait_registered()
        assert agent.released == ["AJ_1"]


async def test_a_session_drained_before_it_ran_ends_at_once() -> None:
    """Regression: drained before run() (a SIGTERM right after an apply), it raised out of
    run() without ever saying it had finished, so a coordinated drain waited to its deadline."""
    async with fake_server() as server:
        session = AgentSession(
            Options(agent_name="tester", version="0.1.0", backoff=FAST),
            Credentials(server.url, "devkey", SECRET),
            Agent(),
        )
        session.drain()
        with anyio.fail_after(5):
            await session.run()
            assert await session.wait_finished() is State.CLOSED


async def test_a_session_stopped_while_connecting_ends_cleanly() -> None:
    """Regression: stop() while the WebSocket handshake was in flight made run() raise."""
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        accepted = anyio.Event()
        held: list[anyio.abc.SocketStream] = []

        async def hold(stream: anyio.abc.SocketStream) -> None:  # accept, never answer
            held.append(stream)
            accepted.set()
            await anyio.sleep_forever()

        session = AgentSession(
            Options(agent_name="tester", version="0.1.0", backoff=FAST),
            Credentials(f"ws://127.0.0.1:{port}", "devkey", SECRET),
            Agent(),
            timeouts=Timeouts(open_timeout=1),
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, hold)
            await tg.start(session.run)
            with anyio.fail_after(5):
                await accepted.wait()
                session.stop()
                assert await session.wait_finished() is State.CLOSED
            tg.cancel_scope.cancel()
        for stream in held:
            await stream.aclose()


async def test_a_registration_waiter_from_before_a_failed_attempt_wakes_on_a_later_one() -> None:
    """Regression: the waiter's event was replaced when the first attempt failed, and never
    set."""
    agent = Agent()
    async with fake_server() as server, running(server, agent) as session:
        found: list[str] = []
        waited = anyio.Event()

        async def waiter() -> None:
            found.append(await session.wait_registered())
            waited.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            peer = await server.accept()
            await peer.next("register")
            peer.drop()  # the first attempt fails before it registers
            again = await server.accept()
            await again.register("AW_2")
            with anyio.fail_after(5):
                await waited.wait()
        assert found == ["AW_2"]


async def test_waiting_for_a_registration_after_stop_raises_instead_of_spinning() -> None:
    """Regression: after stop() the set event with no worker id made the wait spin."""
    agent = Agent()
    async with fake_server() as server, running(server, agent) as session:
        peer = await server.accept()
        await peer.register("AW_1")
        assert await session.wait_registered() == "AW_1"
        session.stop()
        with anyio.fail_after(5), pytest.raises(NotRegistered):
            await session.wait_registered()
