"""Byte-exact tests of the worker connection machine, one behaviour each (no sockets, no clock)."""

from __future__ import annotations

import pytest
from livekit.protocol import agent as pb
from livekit.protocol import models as pb_models

from lksup.protocol.backoff import Backoff
from lksup.protocol.events import (
    Accept,
    CloseConnection,
    ConnectionClosed,
    Decline,
    Drained,
    GaveUp,
    JobAssigned,
    JobType,
    OfferAnswered,
    OfferReceived,
    OpenConnection,
    Permissions,
    PongReceived,
    ProtocolViolation,
    Registered,
    ReservationExpired,
    TerminationRequested,
)
from lksup.protocol.machine import InvalidState, Options, State, WorkerMachine
from tests.protocol import server


def make(**overrides: object) -> WorkerMachine:
    options = Options(agent_name="agent", version="9.9.9", **overrides)  # type: ignore[arg-type]
    return WorkerMachine(options, rand=lambda: 0.0)


def registered(**overrides: object) -> WorkerMachine:
    machine = make(**overrides)
    machine.start(0.0)
    machine.connection_opened(0.0)
    machine.receive(server.register(), 0.0)
    machine.data_to_send()
    machine.events()
    machine.commands()
    return machine


def state(machine: WorkerMachine) -> State:
    """The machine's state (a call, so mypy does not narrow it across method calls)."""
    return machine.state


def sent(machine: WorkerMachine) -> list[pb.WorkerMessage]:
    return [server.worker(frame) for frame in machine.data_to_send()]


def status_frame(
    status: int, load: float, job_count: int, draining: bool = False
) -> pb.WorkerMessage:
    return pb.WorkerMessage(
        update_worker=pb.UpdateWorkerStatus(
            status=status,  # type: ignore[arg-type]
            load=load,
            job_count=job_count,
            draining=draining,
        )
    )


def test_registers_with_explicit_fields_and_sends_status_at_once() -> None:
    machine = make(
        job_type=JobType.PUBLISHER,
        permissions=Permissions(
            can_publish=False, can_publish_sources=("microphone",), hidden=True
        ),
    )
    machine.start(0.0)
    assert machine.commands() == [OpenConnection()]
    machine.connection_opened(0.0)
    expected = pb.WorkerMessage(
        register=pb.RegisterWorkerRequest(
            type=pb.JT_PUBLISHER,
            agent_name="agent",
            version="9.9.9",
            allowed_permissions=pb_models.ParticipantPermission(
                can_subscribe=True,
                can_publish=False,
                can_publish_data=True,
                can_update_metadata=True,
                can_publish_sources=[pb_models.TrackSource.MICROPHONE],
                hidden=True,
                agent=True,
            ),
        )
    )
    assert machine.data_to_send() == [expected.SerializeToString()]
    assert state(machine) is State.REGISTERING
    machine.receive(server.register("AW_1"), 0.1)
    assert state(machine) is State.READY
    assert machine.worker_id == "AW_1"
    assert machine.events() == [Registered("AW_1", "1.13.5", 0)]
    assert sent(machine) == [status_frame(pb.WS_AVAILABLE, 0.0, 0)]


def test_status_is_sent_every_interval_and_on_change() -> None:
    machine = registered()
    assert machine.next_deadline() == 2.5
    machine.tick(2.4)
    assert sent(machine) == []
    machine.tick(2.5)
    assert sent(machine) == [status_frame(pb.WS_AVAILABLE, 0.0, 0)]
    machine.set_load(0.004, full=False, now=2.6)
    assert sent(machine) == []  # below the step: waits for the periodic update
    machine.set_load(0.42, full=False, now=2.7)
    assert sent(machine) == [status_frame(pb.WS_AVAILABLE, 0.42, 0)]
    machine.set_load(0.8, full=True, now=2.8)
    assert sent(machine) == [status_frame(pb.WS_FULL, 0.8, 0)]
    machine.set_load(7.0, full=True, now=2.9)
    assert sent(machine)[0].update_worker.load == 1.0  # clamped


def test_offer_accept_reserves_capacity_until_assignment() -> None:
    machine = registered(max_jobs=1)
    machine.receive(server.offer("AJ_1"), 1.0)
    (event,) = machine.events()
    assert isinstance(event, OfferReceived)
    assert event.job.id == "AJ_1"
    assert event.job.room_name == "room-1"
    assert event.job.dispatch_id == "AD_AJ_1"
    answer = machine.answer("AJ_1", Accept("cs-AJ_1", "Support", "m", {"tier": "gold"}), 1.01)
    assert answer == Accept("cs-AJ_1", "Support", "m", {"tier": "gold"})
    availability, status = sent(machine)
    assert availability == pb.WorkerMessage(
        availability=pb.AvailabilityResponse(
            job_id="AJ_1",
            available=True,
            participant_identity="cs-AJ_1",
            participant_name="Support",
            participant_metadata="m",
            participant_attributes={"tier": "gold", "lk.agent.name": "agent"},
        )
    )
    assert status == status_frame(pb.WS_FULL, 0.0, 1)  # max_jobs reached by the reservation
    assert machine.reservations == {"AJ_1"}
    assert machine.events() == [OfferAnswered("AJ_1", answer)]
    # a second offer while at capacity is declined without asking the policy
    machine.receive(server.offer("AJ_2"), 1.1)
    assert machine.events() == [OfferAnswered("AJ_2", Decline(reason="full", cause="full"))]
    assert sent(machine) == [
        pb.WorkerMessage(availability=pb.AvailabilityResponse(job_id="AJ_2", available=False))
    ]
    machine.receive(server.assignment("AJ_1", token="tok"), 2.0)
    (assigned,) = machine.events()
    assert isinstance(assigned, JobAssigned)
    assert (assigned.job.id, assigned.token, assigned.url) == ("AJ_1", "tok", None)
    assert machine.reservations == frozenset()
    assert set(machine.running_jobs) == {"AJ_1"}


def test_empty_identity_becomes_agent_job_id() -> None:
    machine = registered()
    machine.receive(server.offer("AJ_9"), 0.0)
    assert machine.answer("AJ_9", Accept(""), 0.0) == Accept("agent-AJ_9")
    assert sent(machine)[0].availability.participant_identity == "agent-AJ_9"


def test_decline_and_terminate_are_distinct() -> None:
    machine = registered()
    machine.receive(server.offer("AJ_1"), 0.0)
    machine.receive(server.offer("AJ_2"), 0.0)
    machine.answer("AJ_1", Decline(), 0.0)
    machine.answer("AJ_2", Decline(terminate=True), 0.0)
    assert sent(machine) == [
        pb.WorkerMessage(availability=pb.AvailabilityResponse(job_id="AJ_1", available=False)),
        pb.WorkerMessage(
            availability=pb.AvailabilityResponse(job_id="AJ_2", available=False, terminate=True)
        ),
    ]
    assert machine.answer("AJ_1", Accept("x"), 0.0) is None  # answered already


def test_reservation_expires_after_assignment_timeout() -> None:
    machine = registered()
    machine.receive(server.offer("AJ_1"), 10.0)
    machine.answer("AJ_1", Accept("x"), 10.0)
    machine.data_to_send()
    machine.events()
    assert machine.next_deadline() == 12.5  # the periodic status comes first
    machine.tick(12.5)
    assert machine.next_deadline() == pytest.approx(15.0)
    machine.tick(17.49)
    assert machine.reservations == {"AJ_1"}
    machine.tick(17.5)
    assert machine.reservations == frozenset()
    assert ReservationExpired("AJ_1") in machine.events()


def test_job_status_running_then_success_or_failure() -> None:
    machine = registered()
    for job_id in ("AJ_1", "AJ_2"):
        machine.receive(server.offer(job_id), 0.0)
        machine.answer(job_id, Accept("x"), 0.0)
        machine.receive(server.assignment(job_id), 0.0)
    machine.data_to_send()
    machine.job_started("AJ_1", 0.1)
    machine.job_started("AJ_1", 0.1)  # once only
    machine.job_ended("AJ_1", error=None, now=0.2)
    machine.job_ended("AJ_2", error="RuntimeError: boom", now=0.3)
    machine.job_ended("AJ_2", error="again", now=0.3)  # unknown now: ignored
    assert sent(machine) == [
        pb.WorkerMessage(update_job=pb.UpdateJobStatus(job_id="AJ_1", status=pb.JS_RUNNING)),
        pb.WorkerMessage(update_job=pb.UpdateJobStatus(job_id="AJ_1", status=pb.JS_SUCCESS)),
        status_frame(pb.WS_AVAILABLE, 0.0, 1),
        pb.WorkerMessage(
            update_job=pb.UpdateJobStatus(
                job_id="AJ_2", status=pb.JS_FAILED, error="RuntimeError: boom"
            )
        ),
        status_frame(pb.WS_AVAILABLE, 0.0, 0),
    ]


def test_termination_is_idempotent() -> None:
    machine = registered()
    machine.receive(server.offer("AJ_1"), 0.0)
    machine.answer("AJ_1", Accept("x"), 0.0)
    machine.receive(server.assignment("AJ_1"), 0.0)
    machine.events()
    machine.receive(server.termination("AJ_1"), 1.0)
    machine.receive(server.termination("AJ_1"), 1.1)
    machine.receive(server.termination("AJ_unknown"), 1.2)
    assert machine.events() == [TerminationRequested("AJ_1")]
    machine.job_ended("AJ_1", error=None, now=2.0)
    machine.receive(server.termination("AJ_1"), 2.1)
    assert machine.events() == []


def test_drain_declines_everything_and_closes_when_the_last_job_ends() -> None:
    machine = registered()
    machine.receive(server.offer("AJ_1"), 0.0)
    machine.answer("AJ_1", Accept("x"), 0.0)
    machine.receive(server.assignment("AJ_1"), 0.0)
    machine.receive(server.offer("AJ_2"), 0.0)  # pending when the drain starts
    machine.data_to_send()
    machine.events()
    machine.drain(1.0)
    assert sent(machine) == [
        pb.WorkerMessage(availability=pb.AvailabilityResponse(job_id="AJ_2", available=False)),
        status_frame(pb.WS_FULL, 0.0, 1, draining=True),
    ]
    machine.receive(server.offer("AJ_3"), 1.5)
    assert machine.events()[-1] == OfferAnswered(
        "AJ_3", Decline(reason="draining", cause="draining")
    )
    machine.tick(3.5)
    assert sent(machine)[-1] == status_frame(pb.WS_FULL, 0.0, 1, draining=True)
    assert machine.commands() == []
    machine.job_ended("AJ_1", error=None, now=5.0)
    assert machine.commands() == [CloseConnection(1001, "drained")]
    assert Drained() in machine.events()
    assert state(machine) is State.CLOSED
    assert machine.next_deadline() is None


def test_accept_while_draining_is_turned_into_a_decline() -> None:
    machine = registered()
    machine.receive(server.offer("AJ_1"), 0.0)
    machine.set_load(0.1, full=False, now=0.0)
    machine.draining = True  # the drain raced with the policy's answer
    assert machine.answer("AJ_1", Accept("x"), 0.0) == Decline(reason="draining", cause="draining")


def test_lost_connection_reconnects_and_reports_running_jobs() -> None:
    machine = registered()
    machine.receive(server.offer("AJ_1"), 0.0)
    machine.answer("AJ_1", Accept("x"), 0.0)
    machine.receive(server.assignment("AJ_1"), 0.0)
    machine.receive(server.offer("AJ_2"), 0.0)
    machine.answer("AJ_2", Accept("y"), 0.0)  # reserved, never assigned
    machine.events()
    machine.data_to_send()
    machine.connection_lost(10.0, "1006 abnormal closure")
    assert state(machine) is State.BACKOFF
    assert machine.events() == [
        ReservationExpired("AJ_2"),  # its assignment can no longer arrive
        ConnectionClosed("1006 abnormal closure", 1.0),
    ]
    assert machine.reservations == frozenset()
    assert set(machine.running_jobs) == {"AJ_1"}
    assert machine.next_deadline() == 11.0
    machine.tick(11.0)
    assert machine.commands() == [OpenConnection()]
    machine.connection_opened(11.1)
    machine.data_to_send()
    machine.receive(server.register("AW_2"), 11.2)
    assert sent(machine) == [
        pb.WorkerMessage(migrate_job=pb.MigrateJobRequest(job_ids=["AJ_1"])),
        status_frame(pb.WS_AVAILABLE, 0.0, 1),
    ]


def test_max_retry_counts_consecutive_failures_including_no_register_response() -> None:
    machine = make(max_retry=3, backoff=Backoff(initial_delay=1, factor=2, max_delay=10, jitter=0))
    machine.start(0.0)
    machine.commands()
    machine.connection_failed(0.1, "connection refused")
    assert machine.events() == [ConnectionClosed("connection refused", 2.0)]
    machine.tick(2.1)
    machine.connection_opened(2.2)  # the socket opens, but nobody answers register
    machine.tick(12.1)
    assert state(machine) is State.REGISTERING
    machine.tick(12.2)
    assert CloseConnection(1000, "no register response") in machine.commands()
    assert machine.events() == [ConnectionClosed("no register response in time", 4.0)]
    assert machine.attempts == 2
    machine.tick(16.2)
    machine.connection_failed(16.3, "HTTP 401")
    assert state(machine) is State.FAILED
    assert machine.events() == [ConnectionClosed("HTTP 401", None), GaveUp(3, "HTTP 401")]
    assert machine.next_deadline() is None
    machine.commands()
    machine.start(100.0)  # an operator restart begins a fresh count
    assert machine.commands() == [OpenConnection()]


def test_registration_resets_the_failure_count() -> None:
    machine = make(max_retry=2)
    machine.start(0.0)
    machine.connection_failed(0.0, "refused")
    machine.tick(10.0)
    machine.connection_opened(10.0)
    machine.receive(server.register(), 10.1)
    assert machine.events()[-1] == Registered("AW_test", "1.13.5", 1)
    assert machine.attempts == 0
    machine.connection_lost(20.0, "reset")
    assert state(machine) is State.BACKOFF


def test_zero_max_retry_means_forever() -> None:
    machine = make(max_retry=0)
    machine.start(0.0)
    now = 0.0
    for _ in range(50):
        machine.connection_failed(now, "refused")
        now = machine.next_deadline() or now
        machine.tick(now)
        assert machine.commands()[-1] == OpenConnection()
    assert state(machine) is State.CONNECTING
    assert machine.attempts == 50


@pytest.mark.parametrize(
    ("frame", "fatal"),
    [
        (b"\xff\xff\xff\xff", True),  # undecodable
        (bytes([0x3A, 0x00]), False),  # unknown oneof (field 7)
        (b"", False),  # no oneof set
        (server.register(), True),  # a second register response
    ],
)
def test_hostile_frames_never_raise(frame: bytes, fatal: bool) -> None:
    machine = registered()
    machine.receive(frame, 1.0)
    events = machine.events()
    violation = next(e for e in events if isinstance(e, ProtocolViolation))
    assert violation.fatal is fatal
    if fatal:
        assert machine.commands()[0].code == 1002  # type: ignore[union-attr]
        assert state(machine) is State.BACKOFF
    else:
        assert state(machine) is State.READY


def test_first_message_must_be_the_register_response() -> None:
    machine = make()
    machine.start(0.0)
    machine.connection_opened(0.0)
    machine.receive(server.offer("AJ_1"), 0.1)
    assert machine.events()[0] == ProtocolViolation(
        "OfferReceived before the register response", fatal=True
    )
    assert state(machine) is State.BACKOFF
    assert machine.attempts == 1


def test_text_frames_are_ignored() -> None:
    machine = registered()
    machine.receive_text('{"register": {}}', 0.0)
    assert machine.events() == [
        ProtocolViolation("text frame ignored (expected binary)", fatal=False)
    ]
    assert state(machine) is State.READY


def test_pong_and_simulate() -> None:
    machine = registered()
    machine.receive(server.pong(5, 9), 0.0)
    assert machine.events() == [PongReceived(5, 9)]
    machine.simulate("demo", "alice", 0.0)
    (frame,) = sent(machine)
    assert frame.simulate_job.type == pb.JT_PUBLISHER
    assert frame.simulate_job.room.name == "demo"
    assert frame.simulate_job.participant.identity == "alice"
    with pytest.raises(InvalidState):
        make().simulate("demo", None, 0.0)


def test_unexpected_assignment_beyond_capacity_fails_the_job() -> None:
    machine = registered(max_jobs=1)
    machine.receive(server.offer("AJ_1"), 0.0)
    machine.answer("AJ_1", Accept("x"), 0.0)
    machine.receive(server.assignment("AJ_1"), 0.0)
    machine.data_to_send()
    machine.receive(server.assignment("AJ_2"), 0.0)
    assert sent(machine) == [
        pb.WorkerMessage(
            update_job=pb.UpdateJobStatus(
                job_id="AJ_2", status=pb.JS_FAILED, error="no capacity for this job"
            )
        )
    ]
    assert set(machine.running_jobs) == {"AJ_1"}


def test_stop_closes_for_good() -> None:
    machine = registered()
    machine.stop(1.0)
    assert machine.commands() == [CloseConnection(1000, "supervisor stopping")]
    assert state(machine) is State.CLOSED
    machine.connection_lost(1.1, "closed")
    assert state(machine) is State.CLOSED
    assert machine.next_deadline() is None
