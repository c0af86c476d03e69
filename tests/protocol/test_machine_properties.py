"""Property test: arbitrary server-message sequences and agent decisions never break the
machine's invariants: no accept while draining or full, never more reservations plus running
jobs than capacity, never an exception."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from livekit.protocol import agent as pb

from lksup.protocol.events import Accept, Decline
from lksup.protocol.machine import Options, State, WorkerMachine
from tests.protocol import server

JOB_IDS = st.sampled_from([f"AJ_{i}" for i in range(6)])


class MachineRun(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.capacity = 2
        self.machine = WorkerMachine(
            Options(agent_name="a", version="1", max_jobs=self.capacity, max_retry=0),
            rand=lambda: 0.5,
        )
        self.now = 0.0
        self.machine.start(self.now)
        self.machine.connection_opened(self.now)
        self.machine.receive(server.register(), self.now)

    def _check_sent(self, *, draining: bool, full: bool) -> None:
        for frame in self.machine.data_to_send():
            message = server.worker(frame)
            if message.WhichOneof("message") == "availability" and message.availability.available:
                assert not draining, "accepted an offer while draining"
                assert not full, "accepted an offer while full"
                assert message.availability.participant_identity, "empty identity"
        self.machine.events()
        self.machine.commands()

    def _step(self, action: object) -> None:
        draining, full = self.machine.draining, self.machine.full
        assert callable(action)
        action()
        self._check_sent(draining=draining or self.machine.draining, full=full)

    @rule(job_id=JOB_IDS)
    def offer(self, job_id: str) -> None:
        self._step(lambda: self.machine.receive(server.offer(job_id), self.now))

    @rule(job_id=JOB_IDS, identity=st.sampled_from(["", "who"]))
    def accept(self, job_id: str, identity: str) -> None:
        self._step(lambda: self.machine.answer(job_id, Accept(identity), self.now))

    @rule(job_id=JOB_IDS, terminate=st.booleans())
    def decline(self, job_id: str, terminate: bool) -> None:
        self._step(lambda: self.machine.answer(job_id, Decline(terminate), self.now))

    @rule(job_id=JOB_IDS)
    def assignment(self, job_id: str) -> None:
        self._step(lambda: self.machine.receive(server.assignment(job_id), self.now))

    @rule(job_id=JOB_IDS)
    def termination(self, job_id: str) -> None:
        self._step(lambda: self.machine.receive(server.termination(job_id), self.now))

    @rule(job_id=JOB_IDS)
    def started(self, job_id: str) -> None:
        self._step(lambda: self.machine.job_started(job_id, self.now))

    @rule(job_id=JOB_IDS, failed=st.booleans())
    def ended(self, job_id: str, failed: bool) -> None:
        self._step(
            lambda: self.machine.job_ended(job_id, error="x" if failed else None, now=self.now)
        )

    @rule(load=st.floats(-1, 2, allow_nan=False), full=st.booleans())
    def load(self, load: float, full: bool) -> None:
        self._step(lambda: self.machine.set_load(load, full=full, now=self.now))

    @rule()
    def drain(self) -> None:
        self._step(lambda: self.machine.drain(self.now))

    @rule()
    def undrain(self) -> None:
        self._step(lambda: self.machine.undrain(self.now))

    @rule(delta=st.floats(0, 10, allow_nan=False))
    def advance(self, delta: float) -> None:
        self.now += delta
        self._step(lambda: self.machine.tick(self.now))

    @rule(data=st.binary(max_size=40))
    def garbage(self, data: bytes) -> None:
        self._step(lambda: self.machine.receive(data, self.now))

    @rule()
    def register_again(self) -> None:
        self._step(lambda: self.machine.receive(server.register(), self.now))

    @rule()
    def lose_connection(self) -> None:
        self._step(lambda: self.machine.connection_lost(self.now, "1006"))

    @precondition(lambda self: self.machine.state is State.CONNECTING)
    @rule(registers=st.booleans())
    def reconnect(self, registers: bool) -> None:
        def act() -> None:
            self.machine.connection_opened(self.now)
            if registers:
                self.machine.receive(server.register(), self.now)

        self._step(act)

    @invariant()
    def within_capacity(self) -> None:
        assert len(self.machine.reservations) + len(self.machine.running_jobs) <= self.capacity

    @invariant()
    def load_in_range(self) -> None:
        assert 0.0 <= self.machine.load <= 1.0

    @invariant()
    def reservations_only_when_connected(self) -> None:
        if not self.machine.connected:
            assert not self.machine.reservations


MachineRun.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
test_machine_invariants = MachineRun.TestCase


def test_status_messages_always_carry_an_explicit_status() -> None:
    machine = WorkerMachine(Options(agent_name="a", version="1"), rand=lambda: 0.0)
    machine.start(0.0)
    machine.connection_opened(0.0)
    machine.data_to_send()
    machine.receive(server.register(), 0.0)
    (frame,) = machine.data_to_send()
    message = server.worker(frame)
    assert message.update_worker.HasField("status")
    assert message.update_worker.status == pb.WS_AVAILABLE
