"""The supervisor's decisions on fake runtimes and a virtual clock: replace, restart, drain,
deadlines and removal, with no process and no server, and time that passes only when every
task waits (trio's MockClock with autojump). Every wait is on a change the supervisor is told
of: none polls, so a test can assert that a reaction happens at the very moment of its cause.

``tests/daemon/test_supervisor.py`` runs the same supervisor on real runtimes and a dev server.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import anyio
import pytest
from trio.testing import MockClock

from lksup.daemon.agent import Counters
from lksup.daemon.app import OBSERVE_SETTLE, DaemonApp
from lksup.daemon.drain import PROGRESS_INTERVAL, log_progress
from lksup.daemon.resolve import AgentConfigError, Environment
from lksup.daemon.runtime import Runtime
from lksup.daemon.status import AgentState, RuntimeSnapshot, Sync, derive
from lksup.daemon.supervisor import READY_TIMEOUT, Supervisor
from lksup.fleet.loading import load_fleet
from lksup.fleet.schema import Agent, Fleet
from lksup.monitors.monitor import Monitor
from lksup.pool.inference import InferenceService
from lksup.pool.pool import Histogram
from lksup.pool.zygote import Zygotes
from lksup.protocol.backoff import Backoff
from lksup.protocol.machine import State
from tests.daemon.test_status import RUNNING

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    return "trio", {"clock": MockClock(autojump_threshold=0)}


@dataclass(eq=False)
class FakeRuntime:
    """A runtime whose connection, pool and jobs the test moves by hand."""

    name: str
    agent: Agent
    on_change: Callable[[], None] | None
    fingerprint: str = "same"
    done: bool = False
    drain_deadline: anyio.CancelScope | None = None
    worker_id: str | None = None
    registrations: int = 0
    idle: int = 0
    draining: bool = False
    connection: State = State.CONNECTING
    running_jobs: int = 0
    stopped_with: str | None = None
    closes: int = 0
    error: Exception | None = None
    _finished: anyio.Event = field(default_factory=anyio.Event)

    # --- the test's hand --------------------------------------------------------------------

    def register(self, worker_id: str = "AW_new") -> None:
        self.worker_id, self.connection = worker_id, State.READY
        self.registrations += 1
        self._changed()

    def warm_up(self) -> None:
        self.idle = 1
        self._changed()

    def give_up(self) -> None:
        self.worker_id, self.connection = None, State.FAILED
        self._finish()

    def crash(self, error: Exception) -> None:
        self.error = error
        self._finish()

    def end_job(self) -> None:
        self.running_jobs -= 1
        if self.draining and not self.running_jobs:
            self.connection = State.CLOSED
            self._finish()
        self._changed()

    def _finish(self) -> None:
        self._finished.set()
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # --- Runtime ------------------------------------------------------------------------------

    @property
    def registered(self) -> bool:
        return self.worker_id is not None

    @property
    def ended(self) -> bool:
        return self.connection in (State.CLOSED, State.FAILED)

    @property
    def jobs(self) -> int:
        return self.running_jobs

    def warm(self) -> bool:
        return self.registered and self.idle >= 1

    def snapshot(self) -> RuntimeSnapshot:
        return replace(
            RUNNING,
            connection=self.connection,
            worker_id=self.worker_id,
            draining=self.draining,
            connected=self.connection is State.READY,
            registrations=self.registrations,
            idle=self.idle,
            jobs=self.running_jobs,
            done=self.done,
        )

    def counters(self) -> Counters:
        return Counters({"accepted": 1}, {}, 1, 0, {}, 0, Histogram())

    async def run(self) -> None:
        await self._finished.wait()
        if self.error is not None:
            raise self.error

    def reconfigure(self, agent: Agent) -> None:
        self.agent = agent

    def drain(self, reason: str) -> None:
        self.draining, self.stopped_with = True, reason
        if not self.running_jobs:
            self.connection = State.CLOSED
            self._finish()
        self._changed()

    def undrain(self) -> None:
        self.draining = False
        if self.drain_deadline is not None:
            self.drain_deadline.cancel()
            self.drain_deadline = None
        self._changed()

    def stop(self, reason: str) -> None:
        self.stopped_with, self.connection = reason, State.CLOSED
        self._finish()

    def simulate(self, room: str, participant: str | None) -> None:
        raise AssertionError("not used")

    async def wait_finished(self) -> None:
        await self._finished.wait()

    async def aclose(self, *, force: bool = False, reason: str | None = None) -> None:
        self.closes += 1


@dataclass
class Factory:
    """Makes fake runtimes, and remembers them by agent name in the order made."""

    made: dict[str, list[FakeRuntime]] = field(default_factory=dict)
    refuse: set[str] = field(default_factory=set)

    def __call__(
        self,
        name: str,
        agent: Agent,
        env: Environment,
        *,
        monitor: Monitor,
        init_limiter: anyio.CapacityLimiter,
        inference: InferenceService | None,
        zygotes: Zygotes | None,
        on_change: Callable[[], None] | None,
    ) -> Runtime:
        if name in self.refuse:
            raise AgentConfigError("no livekit.url (and no dev server to fall back on)")
        runtime = FakeRuntime(name, agent, on_change)
        self.made.setdefault(name, []).append(runtime)
        return runtime

    def last(self, name: str) -> FakeRuntime:
        return self.made[name][-1]


def fleet(tmp_path: Path, agents: dict[str, str], drain_timeout: int = 20) -> Fleet:
    body = "".join(
        f"  {name}:\n    entrypoint: agent:entrypoint\n{extra}" for name, extra in agents.items()
    )
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "apiVersion: lksup/v1\nkind: Fleet\nmetadata: {name: t}\n"
        f"supervisor: {{drain_timeout: {drain_timeout}}}\n"
        f"defaults: {{drain_timeout: {drain_timeout}}}\n"
        "agents:\n" + body
    )
    return load_fleet(str(path), environ={}).fleet


@asynccontextmanager
async def supervised(tmp_path: Path, factory: Factory) -> AsyncIterator[Supervisor]:
    env = Environment(environ={}, base_dir=tmp_path)
    supervisor = Supervisor(
        env,
        Monitor(),
        restart_backoff=Backoff(initial_delay=5.0, factor=2.0, max_delay=300.0, jitter=0),
        runtime_factory=factory,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(supervisor.run)
        yield supervisor
        tg.cancel_scope.cancel()


async def serving(sup: Supervisor, factory: Factory, applied: Fleet, jobs: int) -> FakeRuntime:
    """Apply ``applied`` (one agent, sales): its runtime registered and running ``jobs``."""
    await sup.apply(applied)
    runtime = factory.last("sales")
    runtime.register()
    runtime.running_jobs = jobs
    return runtime


async def test_a_replaced_agent_hands_over_the_moment_the_new_worker_is_warm(
    tmp_path: Path,
) -> None:
    factory = Factory()
    async with supervised(tmp_path, factory) as sup:
        await sup.apply(fleet(tmp_path, {"sales": ""}))
        old = factory.last("sales")
        old.register("AW_old")
        old.warm_up()
        old.running_jobs = 1
        assert sup.reload("sales")
        new = factory.last("sales")
        assert new is not old
        slot = sup.slots["sales"]
        await anyio.sleep(30)  # a slow registration: the old worker keeps serving meanwhile
        assert slot.previous == [old]
        assert not old.draining
        assert derive(sup.snapshot(slot)).sync is Sync.PENDING
        new.register()
        await anyio.sleep(0)  # registered but not warm yet: still no hand-over
        assert not old.draining
        handed_over_at = anyio.current_time()
        new.warm_up()
        with anyio.fail_after(1):
            await sup.wait_until(lambda: old.draining)
        assert anyio.current_time() == handed_over_at  # notified, not polled
        assert old.stopped_with == "agent replaced"
        assert slot.draining == [old]
        old.end_job()  # its last job ends: it goes away
        with anyio.fail_after(1):
            await sup.wait_until(lambda: not slot.draining)
        derived = derive(sup.snapshot(slot))
        assert (derived.state, derived.sync) == (AgentState.RUNNING, Sync.SYNCED)
        assert slot.totals().jobs_succeeded == 2  # the old runtime's counters are kept


async def test_a_replacement_that_never_warms_up_is_warned_about_and_the_old_one_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    factory = Factory()
    async with supervised(tmp_path, factory) as sup:
        await sup.apply(fleet(tmp_path, {"sales": ""}))
        old = factory.last("sales")
        old.register("AW_old")
        old.warm_up()
        sup.reload("sales")
        started = anyio.current_time()
        await anyio.sleep(READY_TIMEOUT + 1)
        warnings = [r for r in caplog.records if "not ready after" in r.getMessage()]
        assert len(warnings) == 1
        assert not old.draining
        await anyio.sleep(10 * READY_TIMEOUT)
        assert len([r for r in caplog.records if "not ready after" in r.getMessage()]) == 1
        assert anyio.current_time() - started > 10 * READY_TIMEOUT
        message = derive(sup.snapshot(sup.slots["sales"])).message
        assert "the old one keeps taking jobs" in message


async def test_a_failed_agent_restarts_after_a_doubling_backoff_reset_by_a_registration(
    tmp_path: Path,
) -> None:
    factory = Factory()
    async with supervised(tmp_path, factory) as sup:
        await sup.apply(fleet(tmp_path, {"sales": ""}))
        slot = sup.slots["sales"]
        restarts_at = []
        for _ in range(3):
            failed_at = anyio.current_time()
            factory.last("sales").give_up()
            await sup.wait_until(lambda: slot.restart_at is not None)
            assert sup.agent_state(slot) is AgentState.BACKOFF
            assert "connection gave up" in derive(sup.snapshot(slot)).message
            count = len(factory.made["sales"])
            await sup.wait_until(lambda: len(factory.made["sales"]) > count)  # noqa: B023
            restarts_at.append(anyio.current_time() - failed_at)
        assert restarts_at == [5.0, 10.0, 20.0]
        assert slot.restarts == 3
        factory.last("sales").register()  # it worked for a while: the backoff starts over
        failed_at = anyio.current_time()
        factory.last("sales").crash(RuntimeError("the pool broke"))
        await sup.wait_until(lambda: slot.restart_at is not None)
        assert derive(sup.snapshot(slot)).message.startswith("RuntimeError: the pool broke")
        await sup.wait_until(lambda: len(factory.made["sales"]) == 5)
        assert anyio.current_time() - failed_at == 5.0


async def test_an_agent_that_cannot_start_is_retried_and_the_others_never_notice(
    tmp_path: Path,
) -> None:
    factory = Factory(refuse={"broken"})
    async with supervised(tmp_path, factory) as sup:
        await sup.apply(fleet(tmp_path, {"broken": "", "sales": ""}))
        broken = sup.slots["broken"]
        assert sup.agent_state(broken) is AgentState.BACKOFF
        assert "no livekit.url" in derive(sup.snapshot(broken)).message
        factory.refuse.clear()  # fixed meanwhile (e.g. a variable set): the retry starts it
        await sup.wait_until(lambda: "broken" in factory.made)
        assert anyio.current_time() == 5.0
        assert len(factory.made["sales"]) == 1


async def test_an_operators_drain_is_not_restarted_and_undrain_starts_it_again(
    tmp_path: Path,
) -> None:
    factory = Factory()
    async with supervised(tmp_path, factory) as sup:
        await sup.apply(fleet(tmp_path, {"sales": ""}))
        first = factory.last("sales")
        first.register()
        sup.drain("sales")
        slot = sup.slots["sales"]
        await sup.wait_until(lambda: first.done)
        await anyio.sleep(3600)
        assert len(factory.made["sales"]) == 1  # never restarted
        derived = derive(sup.snapshot(slot))
        assert (derived.state, derived.sync) == (AgentState.DRAINED, Sync.OVERRIDE)
        sup.undrain("sales")
        assert len(factory.made["sales"]) == 2
        assert derive(sup.snapshot(slot)).sync is Sync.PENDING


async def test_at_the_drain_deadline_the_remaining_jobs_are_stopped(tmp_path: Path) -> None:
    factory = Factory()
    async with supervised(tmp_path, factory) as sup:
        runtime = await serving(sup, factory, fleet(tmp_path, {"sales": ""}, 30), jobs=2)
        sup.drain("sales")
        await anyio.sleep(29.9)
        assert runtime.stopped_with == "agent drained"
        assert runtime.closes == 0
        await sup.wait_until(lambda: runtime.done)
        assert anyio.current_time() == pytest.approx(30.0)
        assert runtime.stopped_with == "drain deadline reached"
        assert runtime.closes == 1
        assert sup.deadline_stops == 2


async def test_undrain_calls_off_the_drain_deadline(tmp_path: Path) -> None:
    factory = Factory()
    async with supervised(tmp_path, factory) as sup:
        runtime = await serving(sup, factory, fleet(tmp_path, {"sales": ""}, 30), jobs=1)
        sup.drain("sales")
        await anyio.sleep(10)
        sup.undrain("sales")
        await anyio.sleep(600)
        assert runtime.closes == 0
        assert sup.agent_state(sup.slots["sales"]) is AgentState.RUNNING


async def test_a_coordinated_drain_reports_whether_every_job_ended_in_time(
    tmp_path: Path,
) -> None:
    factory = Factory()
    async with supervised(tmp_path, factory) as sup:
        await sup.apply(fleet(tmp_path, {"sales": "", "support": ""}, drain_timeout=300))
        sales, support = factory.last("sales"), factory.last("support")
        for runtime in (sales, support):
            runtime.register()
            runtime.running_jobs = 1
        async with anyio.create_task_group() as tg:

            async def end_jobs() -> None:
                await anyio.sleep(5)
                sales.end_job()
                await anyio.sleep(5)
                support.end_job()

            tg.start_soon(end_jobs)
            assert await sup.drain_all(timeout=60) is True
        assert anyio.current_time() == 10.0
        assert not factory.made["sales"][1:]  # a fleet being stopped is never restarted


async def test_a_coordinated_drain_past_its_timeout_stops_every_job(tmp_path: Path) -> None:
    factory = Factory()
    async with supervised(tmp_path, factory) as sup:
        runtime = await serving(sup, factory, fleet(tmp_path, {"sales": ""}, 300), jobs=1)
        assert await sup.drain_all(timeout=60) is False
        assert anyio.current_time() == 60.0
        assert runtime.stopped_with == "supervisor stopping"
        assert runtime.closes == 1


async def test_a_removed_agent_goes_away_with_its_last_job(tmp_path: Path) -> None:
    factory = Factory()
    async with supervised(tmp_path, factory) as sup:
        await sup.apply(fleet(tmp_path, {"sales": "", "support": ""}))
        support = factory.last("support")
        support.register()
        support.running_jobs = 1
        await sup.apply(fleet(tmp_path, {"sales": ""}))
        assert support.stopped_with == "agent removed"
        assert sup.agent_state(sup.slots["support"]) is AgentState.DRAINING
        await anyio.sleep(5)
        assert "support" in sup.slots
        support.end_job()
        await sup.wait_until(lambda: "support" not in sup.slots)
        assert len(factory.made["support"]) == 1


async def test_status_is_observed_at_every_change_of_a_runtime(tmp_path: Path) -> None:
    """The events stream sees a registration as it happens, once the moment's changes
    settled (``OBSERVE_SETTLE``; it was a 0.5 s observation loop)."""
    factory = Factory()
    async with supervised(tmp_path, factory) as sup:
        app = DaemonApp(sup, tmp_path / "state")
        async with anyio.create_task_group() as tg:
            tg.start_soon(app.observe_forever)
            await sup.apply(fleet(tmp_path, {"sales": ""}))
            await anyio.sleep(1)
            registered_at = anyio.current_time()
            factory.last("sales").register("AW_1")
            found = await app.recorder.journal.after(
                0, 1.0, keep=lambda event: event.reason == "Registered"
            )
            assert [event.message for _, event in found] == ["registered as AW_1"]
            assert anyio.current_time() == pytest.approx(registered_at + OBSERVE_SETTLE)
            tg.cancel_scope.cancel()


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)


async def test_a_drains_progress_is_logged_when_a_job_ends_and_every_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    factory = Factory()
    async with supervised(tmp_path, factory) as sup:
        runtime = await serving(sup, factory, fleet(tmp_path, {"sales": ""}, 300), jobs=2)
        lines: list[tuple[float, str]] = []

        class Capture(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                lines.append((anyio.current_time(), record.getMessage()))

        handler = Capture()
        logging.getLogger("lksup.daemon").addHandler(handler)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(log_progress, sup, anyio.current_time() + 300)
                await anyio.sleep(2.5)  # between two seconds: a poll would see it late
                runtime.end_job()
                await anyio.sleep(PROGRESS_INTERVAL + 1)
                tg.cancel_scope.cancel()
        finally:
            logging.getLogger("lksup.daemon").removeHandler(handler)
        assert lines == [
            (0.0, "draining: 2 jobs left on 1 agent, deadline in 5m"),
            (2.5, "draining: 1 job left on 1 agent, deadline in 4m58s"),
            (2.5 + PROGRESS_INTERVAL, "draining: 1 job left on 1 agent, deadline in 4m48s"),
        ]
