from __future__ import annotations

import errno
import logging
import math
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
import anyio.from_thread
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from lksup.monitors.events import BudgetChanged, MemoryLimitExceeded, MemoryWarning, MonitorEvent
from lksup.monitors.memory_policy import MIB, MemoryPolicy
from lksup.monitors.monitor import Monitor
from lksup.monitors.sampling import MemorySample
from tests.monitors.helpers import WAIT, allocating_child

E = TypeVar("E", bound=MonitorEvent)
QUIET = MemoryPolicy(warn_mb=0, limit_mb=0)


class ScriptedCpu:
    """CPU shares from a script.

    Each scripted read hands its index to the test over an unbuffered stream and waits until
    the test took it: while the test looks, read ``index`` is under way and reads before it
    have been applied. Read 0 (the baseline, taken before the monitor is ready) and reads past
    the script do not wait.
    """

    def __init__(self, values: list[float | None], calls: MemoryObjectSendStream[int]) -> None:
        self.values = values
        self.calls = calls
        self.count = 0

    def read(self, now: float) -> float | None:
        index, self.count = self.count, self.count + 1
        if index >= len(self.values):
            return None
        if index > 0:
            anyio.from_thread.run(self.calls.send, index)
        return self.values[index]


class IdleCpu:
    def read(self, now: float) -> float | None:
        return 0.0


class FixedShare:
    def __init__(self, value: float) -> None:
        self.value = value

    def read(self) -> float:
        return self.value


class FakeSampler:
    """Job-process memory set by the test; announces each sweep (its index) on a stream.

    With ``hold`` set, a sweep waits for the test to set it before returning, so the test can
    act while a sweep is in flight.
    """

    def __init__(self, sweeps: MemoryObjectSendStream[int]) -> None:
        self.memory_mb: dict[int, float] = {}
        self.sweeps = sweeps
        self.count = 0
        self.hold: anyio.Event | None = None
        self.error: OSError | None = None

    def __call__(self, pids: Collection[int]) -> Mapping[int, MemorySample]:
        index, self.count = self.count, self.count + 1
        error = self.error
        if error is not None:
            anyio.from_thread.run_sync(self.sweeps.send_nowait, index)
            raise error
        result = {
            pid: MemorySample(pid, int(self.memory_mb[pid] * MIB), "pss")
            for pid in pids
            if pid in self.memory_mb
        }
        anyio.from_thread.run_sync(self.sweeps.send_nowait, index)
        hold = self.hold
        if hold is not None:
            anyio.from_thread.run(hold.wait)
        return result


def is_over(monitor: Monitor) -> bool:
    """``monitor.over_budget``, read through a call so mypy does not narrow it across awaits."""
    return monitor.over_budget


async def next_event(events: MemoryObjectReceiveStream[MonitorEvent], kind: type[E]) -> E:
    """The next event of ``kind``, skipping others (a handshake, under ``fail_after``)."""
    with anyio.fail_after(WAIT):
        async for event in events:
            if isinstance(event, kind):
                return event
    raise AssertionError("the event stream closed")


async def sweeps_after(
    sampler: FakeSampler, sweeps: MemoryObjectReceiveStream[int], count: int = 1
) -> None:
    """Return once ``count`` sweeps that started after this call have been applied."""
    # Sweep ``sampler.count`` starts after this call; it is applied once the next one starts.
    target = sampler.count + count
    with anyio.fail_after(WAIT):
        async for index in sweeps:
            if index >= target:
                return


@asynccontextmanager
async def running(monitor: Monitor) -> AsyncIterator[MemoryObjectReceiveStream[MonitorEvent]]:
    """Run ``monitor`` with every event on a stream; cancelled (before the stream closes) on exit."""
    send, receive = anyio.create_memory_object_stream[MonitorEvent](math.inf)
    monitor.add_listener(send.send_nowait)
    with send, receive:
        async with anyio.create_task_group() as tg:
            with anyio.fail_after(WAIT):
                await tg.start(monitor.run)
            yield receive
            tg.cancel_scope.cancel()


@asynccontextmanager
async def fake_monitor(
    **kwargs: object,
) -> AsyncIterator[
    tuple[
        Monitor,
        FakeSampler,
        MemoryObjectReceiveStream[int],
        MemoryObjectReceiveStream[MonitorEvent],
    ]
]:
    send, sweeps = anyio.create_memory_object_stream[int](math.inf)
    with send, sweeps:
        sampler = FakeSampler(send)
        monitor = Monitor(
            cpu_interval=60.0,
            memory_interval=0.01,
            cpu_reader=IdleCpu(),
            memory_share_reader=FixedShare(0.5),
            memory_sampler=sampler,
            **kwargs,  # type: ignore[arg-type]
        )
        async with running(monitor) as events:
            yield monitor, sampler, sweeps, events
            if sampler.hold is not None:
                sampler.hold.set()


# --- CPU -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_cpu_is_a_moving_average_of_the_samples() -> None:
    """CPU is the mean of the last ``cpu_window`` reads; the first read is only a baseline."""
    send, calls = anyio.create_memory_object_stream[int]()
    with send, calls:
        reader = ScriptedCpu([None, 0.2, 0.4, 0.6, 0.8, 1.0, 0.0, None], send)
        monitor = Monitor(
            cpu_interval=0.001, cpu_window=5, cpu_reader=reader, memory_share_reader=FixedShare(0.3)
        )
        seen: list[float] = []
        async with running(monitor):
            assert monitor.memory == 0.3  # ready means the memory share is there
            with anyio.fail_after(WAIT):
                async for index in calls:
                    # Read ``index`` is under way, so reads 0..index-1 have been applied.
                    seen.append(monitor.cpu)
                    if index == 7:
                        break
    assert seen == pytest.approx([0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.56])


@pytest.mark.anyio
async def test_real_readers_give_fractions() -> None:
    """With the readers detected on this host, cpu and memory are in [0, 1]."""
    monitor = Monitor(cpu_interval=0.01, memory_interval=0.01)
    async with running(monitor):
        assert 0.0 < monitor.memory <= 1.0
        assert 0.0 <= monitor.cpu <= 1.0
    assert 0.0 <= monitor.cpu <= 1.0


# --- memory of job processes -----------------------------------------------------------------


@pytest.mark.anyio
async def test_real_child_warns_then_exceeds_its_limit(caplog: pytest.LogCaptureFixture) -> None:
    """A child over 50 MB is warned about; over 150 MB it is reported, and left running."""
    caplog.set_level(logging.WARNING, logger="lksup.monitors")
    async with allocating_child() as child:
        await child.allocate(80)
        monitor = Monitor(cpu_interval=0.05, memory_interval=0.02)
        monitor.watch(child.pid, agent="support", job_id="AJ_1", policy=MemoryPolicy(50, 150))
        async with running(monitor) as events:
            warning = await next_event(events, MemoryWarning)
            assert warning == MemoryWarning("support", "AJ_1", child.pid, warning.mb, 50)
            assert 80 <= warning.mb < 150
            sample = monitor.sample(child.pid)
            assert sample is not None
            assert sample.kind == "pss"

            await child.allocate(100)
            exceeded = await next_event(events, MemoryLimitExceeded)
            assert exceeded.mb > 150
            assert exceeded == MemoryLimitExceeded(
                "support",
                "AJ_1",
                child.pid,
                exceeded.mb,
                150,
                f"memory limit exceeded ({exceeded.mb} MB > 150 MB)",
            )
        # The monitor reports; ending the job is the pool's business.
        assert child.process.returncode is None

    record = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert (
        record.getMessage()
        == f"Job process {child.pid} uses {warning.mb} MB (warning above 50 MB)."
    )
    fields = vars(record)
    assert (fields["agent"], fields["job_id"], fields["pid"]) == ("support", "AJ_1", child.pid)
    error = next(r for r in caplog.records if r.levelno == logging.ERROR)
    assert error.getMessage() == (
        f"Job process {child.pid} uses {exceeded.mb} MB, above its limit of 150 MB; its job will be ended."
    )


@pytest.mark.anyio
async def test_real_child_crosses_the_budget_and_unwatch_brings_it_back() -> None:
    """Over the fleet budget: BudgetChanged(True); once the process is unwatched, (False)."""
    async with allocating_child() as child:
        await child.allocate(80)
        monitor = Monitor(cpu_interval=0.05, memory_interval=0.02, memory_budget_mb=50)
        async with running(monitor) as events:
            assert not is_over(monitor)
            monitor.watch(child.pid, agent="support", job_id=None, policy=QUIET)
            over = await next_event(events, BudgetChanged)
            assert over == BudgetChanged(True, over.total_mb, 50)
            assert over.total_mb >= 80
            assert is_over(monitor)
            assert monitor.total_job_memory_mb >= 80

            monitor.unwatch(child.pid)
            assert await next_event(events, BudgetChanged) == BudgetChanged(False, 0, 50)
            assert not is_over(monitor)
            assert monitor.total_job_memory_mb == 0
            assert monitor.sample(child.pid) is None


@pytest.mark.anyio
async def test_budget_hysteresis_in_the_monitor() -> None:
    """Once over, the fleet stays over until the total falls under 95 % of the budget."""
    async with fake_monitor(memory_budget_mb=100) as (monitor, sampler, sweeps, events):
        monitor.watch(1, agent="a", job_id="J1", policy=QUIET)
        monitor.watch(2, agent="b", job_id="J2", policy=QUIET)
        sampler.memory_mb.update({1: 60, 2: 40})
        await sweeps_after(sampler, sweeps, 2)
        assert not is_over(monitor)
        sampler.memory_mb[2] = 41
        assert await next_event(events, BudgetChanged) == BudgetChanged(True, 101, 100)
        sampler.memory_mb[2] = 36  # 96 MB: under the budget, not under 95 MB
        await sweeps_after(sampler, sweeps, 2)
        assert is_over(monitor)
        assert monitor.total_job_memory_mb == 96
        assert events.statistics().current_buffer_used == 0
        sampler.memory_mb[2] = 34
        assert await next_event(events, BudgetChanged) == BudgetChanged(False, 94, 100)


@pytest.mark.anyio
async def test_removing_the_budget_ends_over_budget() -> None:
    async with fake_monitor(memory_budget_mb=10) as (monitor, sampler, _, events):
        sampler.memory_mb[7] = 20
        monitor.watch(7, agent="a", job_id="J", policy=QUIET)
        assert await next_event(events, BudgetChanged) == BudgetChanged(True, 20, 10)
        monitor.set_memory_budget(None)
        assert await next_event(events, BudgetChanged) == BudgetChanged(False, 20, None)
        assert monitor.memory_budget_mb is None


@pytest.mark.anyio
async def test_a_process_that_vanishes_leaves_the_total() -> None:
    """A watched pid missing from a sweep (exited, unreadable) no longer counts."""
    async with fake_monitor(memory_budget_mb=100) as (monitor, sampler, _, events):
        sampler.memory_mb[7] = 120
        monitor.watch(7, agent="a", job_id="J", policy=QUIET)
        assert await next_event(events, BudgetChanged) == BudgetChanged(True, 120, 100)
        del sampler.memory_mb[7]
        assert await next_event(events, BudgetChanged) == BudgetChanged(False, 0, 100)
        assert monitor.samples == {}


@pytest.mark.anyio
async def test_unwatch_during_a_sweep_wins() -> None:
    """A sweep in flight when its pid is unwatched applies nothing to it."""
    async with fake_monitor() as (monitor, sampler, sweeps, events):
        sampler.memory_mb.update({7: 500, 8: 1})
        hold = sampler.hold = anyio.Event()
        monitor.watch(8, agent="a", job_id="K", policy=QUIET)  # keeps the sweeps going
        monitor.watch(7, agent="a", job_id="J", policy=MemoryPolicy(10, 100))
        with anyio.fail_after(WAIT):
            await sweeps.receive()  # the first sweep with pid 7 is under way, held
        monitor.unwatch(7)
        sampler.hold = None
        hold.set()
        await sweeps_after(sampler, sweeps, 2)
        assert monitor.samples.keys() == {8}
        assert events.statistics().current_buffer_used == 0


@pytest.mark.anyio
async def test_watching_again_updates_labels_and_keeps_history() -> None:
    """A warm process that gets its job: new job id in events, no second warning for it."""
    async with fake_monitor() as (monitor, sampler, sweeps, events):
        sampler.memory_mb[7] = 60
        monitor.watch(7, agent="a", job_id=None, policy=MemoryPolicy(50, 100))
        assert await next_event(events, MemoryWarning) == MemoryWarning("a", None, 7, 60, 50)
        monitor.watch(7, agent="a", job_id="J", policy=MemoryPolicy(50, 100))
        await sweeps_after(sampler, sweeps, 2)
        assert events.statistics().current_buffer_used == 0
        sampler.memory_mb[7] = 101
        exceeded = await next_event(events, MemoryLimitExceeded)
        assert (exceeded.job_id, exceeded.reason) == (
            "J",
            "memory limit exceeded (101 MB > 100 MB)",
        )


@pytest.mark.anyio
async def test_a_failing_listener_is_contained(caplog: pytest.LogCaptureFixture) -> None:
    """A listener that raises is logged; the others still get the event, sampling goes on."""

    def broken(event: MonitorEvent) -> None:
        raise RuntimeError("bug")

    async with fake_monitor() as (monitor, sampler, sweeps, events):
        monitor.remove_listener(broken)  # unknown: ignored
        monitor.add_listener(broken)
        sampler.memory_mb[7] = 60
        monitor.watch(7, agent="a", job_id="J", policy=MemoryPolicy(50, 0))
        assert await next_event(events, MemoryWarning) == MemoryWarning("a", "J", 7, 60, 50)
        monitor.remove_listener(broken)
        await sweeps_after(sampler, sweeps, 1)
    assert any(
        r.getMessage() == "A monitor listener failed on MemoryWarning." for r in caplog.records
    )


@pytest.mark.anyio
async def test_a_failing_sweep_is_skipped_said_once_and_sampling_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: out of descriptors, reading /proc raised EMFILE in the sweep, and the
    error ended the monitor and with it the daemon."""
    caplog.set_level(logging.INFO, logger="lksup.monitors")
    async with fake_monitor() as (monitor, sampler, sweeps, events):
        sampler.memory_mb[7] = 60
        monitor.watch(7, agent="a", job_id="J", policy=MemoryPolicy(50, 0))
        assert await next_event(events, MemoryWarning) == MemoryWarning("a", "J", 7, 60, 50)
        sampler.error = OSError(errno.EMFILE, "Too many open files")
        await sweeps_after(sampler, sweeps, 3)
        assert monitor.samples[7].mb == 60  # the last sample is kept
        sampler.error = None
        sampler.memory_mb[7] = 70
        await sweeps_after(sampler, sweeps, 2)
        assert monitor.samples[7].mb == 70
    messages = [r.getMessage() for r in caplog.records if r.name == "lksup.monitors"]
    failed = "Memory sweep failed: [Errno 24] Too many open files; memory limits are not "
    assert messages.count(failed + "checked until it works.") == 1
    assert messages.count("Memory sweep works again.") == 1


@pytest.mark.anyio
async def test_run_twice_is_misuse() -> None:
    monitor = Monitor(cpu_reader=IdleCpu(), memory_share_reader=FixedShare(0.1))
    async with running(monitor):
        with pytest.raises(RuntimeError, match="already running"):
            await monitor.run()


def test_intervals_must_be_positive() -> None:
    with pytest.raises(ValueError, match="intervals"):
        Monitor(cpu_interval=0)
