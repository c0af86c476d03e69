"""The shared monitor: one CPU sampler and one memory sweep for the whole supervisor.

DESIGN.md §3.5, "one sampler, many policies". livekit-agents runs a CPU sampler per worker
process and a memory task per job process; with N agents on a host that is N samplers all
measuring the same machine. Here one :class:`Monitor` runs in the daemon's root task group:

- every ``cpu_interval`` (0.5 s) it reads the host/cgroup CPU share into a moving average of
  ``cpu_window`` samples (5, a 2.5 s window, as the SDK) and the host/cgroup memory share;
  agents read :attr:`Monitor.cpu` and :attr:`Monitor.memory` and turn them into their own load
  (``lksup.monitors.load``);
- every ``memory_interval`` (5 s) it samples the memory of every watched job process in ONE
  sweep (a worker thread), applies each process's :class:`MemoryPolicy`, and checks the sum
  against the fleet's memory budget.

Outputs. The pool registers each job process with :meth:`Monitor.watch` and removes it with
:meth:`Monitor.unwatch` once the process has exited. Events (``lksup.monitors.events``) go to
every listener added with :meth:`Monitor.add_listener`, a plain synchronous callable that must
not block (it may start a task, set a flag, or call ``AgentPool.fail_job``). A listener that
raises is logged and the others still run. The monitor logs warnings itself, with ``agent``,
``job_id`` and ``pid`` as ``extra``.

Invariants:

- The monitor never signals a process. :class:`MemoryLimitExceeded` asks the pool to end the
  job (``reason`` is the exact ``JS_FAILED`` text); the stop sequence belongs to the pool.
- Events are emitted only from the monitor's own tasks, never from inside ``watch``,
  ``unwatch`` or ``set_memory_budget``, so a listener never runs re-entrantly inside its caller.
- A sweep's results apply only to processes still watched under the same registration when
  the sweep returns: an ``unwatch`` during a sweep wins, and a pid reused by a new
  registration does not inherit an old sample.
- ``unwatch`` and budget changes re-check the budget at once (without a new sweep), so agents
  become available again as soon as a large job process is gone.

Time comes from ``anyio.current_time()``; intervals are parameters, so tests use tiny ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import anyio
import anyio.abc
import anyio.to_thread

from lksup.monitors.events import BudgetChanged, MemoryLimitExceeded, MemoryWarning, MonitorEvent
from lksup.monitors.load import MovingAverage
from lksup.monitors.memory_policy import (
    MIB,
    Kill,
    MemoryPolicy,
    MemoryState,
    Warn,
    over_budget,
    to_mb,
)
from lksup.monitors.sampling import (
    CpuReader,
    MemorySample,
    MemoryShareReader,
    detect_cpu_reader,
    detect_memory_share_reader,
    sample_memory,
)

logger = logging.getLogger("lksup.monitors")

Listener = Callable[[MonitorEvent], None]
MemorySampler = Callable[[Collection[int]], Mapping[int, MemorySample]]


@dataclass(eq=False)
class _Watch:
    agent: str
    job_id: str | None
    policy: MemoryPolicy
    state: MemoryState = field(default_factory=MemoryState)


class Monitor:
    """Samples CPU, host memory and job-process memory; reports memory events.

    Args:
        cpu_interval: seconds between CPU (and memory share) samples.
        cpu_window: CPU samples averaged into :attr:`cpu`.
        memory_interval: seconds between sweeps of job-process memory.
        memory_budget_mb: ``supervisor.memory_budget_mb``; ``None``: no budget.
        cpu_reader: where CPU shares come from (default: detected at start, cgroup-aware).
        memory_share_reader: where the ``memory`` signal comes from (default: detected).
        memory_sampler: samples job processes in one blocking sweep (default:
            :func:`lksup.monitors.sampling.sample_memory`).
    """

    def __init__(
        self,
        *,
        cpu_interval: float = 0.5,
        cpu_window: int = 5,
        memory_interval: float = 5.0,
        memory_budget_mb: int | None = None,
        cpu_reader: CpuReader | None = None,
        memory_share_reader: MemoryShareReader | None = None,
        memory_sampler: MemorySampler = sample_memory,
    ) -> None:
        if cpu_interval <= 0 or memory_interval <= 0:
            raise ValueError("intervals must be > 0")
        self.cpu_interval = cpu_interval
        self.memory_interval = memory_interval
        self._cpu = MovingAverage(cpu_window)
        self._cpu_reader = cpu_reader
        self._memory_share_reader = memory_share_reader
        self._memory_sampler = memory_sampler
        self._budget_mb = memory_budget_mb
        self._memory_share = 0.0
        self._over_budget = False
        self._watches: dict[int, _Watch] = {}
        self._samples: dict[int, MemorySample] = {}
        self._listeners: list[Listener] = []
        self._recheck: anyio.Event | None = None
        self._running = False
        self._host_failing = False
        self._sweep_failing = False

    # --- read-only views -------------------------------------------------------------------

    @property
    def cpu(self) -> float:
        """Host/cgroup CPU share averaged over the last ``cpu_window`` samples, in [0, 1]."""
        return self._cpu.value

    @property
    def memory(self) -> float:
        """Host/cgroup memory share from the last sample, in [0, 1]."""
        return self._memory_share

    @property
    def total_job_memory_mb(self) -> float:
        """Memory of all watched job processes at their last samples, in MB."""
        return sum(s.bytes for s in self._samples.values()) / MIB

    @property
    def memory_budget_mb(self) -> int | None:
        """The fleet's memory budget (``None``: none)."""
        return self._budget_mb

    @property
    def over_budget(self) -> bool:
        """Whether the job processes together are over the budget (with hysteresis)."""
        return self._over_budget

    @property
    def samples(self) -> Mapping[int, MemorySample]:
        """The last memory sample of each watched process that has one (a read-only view)."""
        return MappingProxyType(self._samples)

    def sample(self, pid: int) -> MemorySample | None:
        """The last memory sample of ``pid``, if it is watched and was sampled."""
        return self._samples.get(pid)

    # --- registration ----------------------------------------------------------------------

    def watch(self, pid: int, *, agent: str, job_id: str | None, policy: MemoryPolicy) -> None:
        """Sample ``pid`` in every sweep and apply ``policy`` to it.

        Watching a pid that is already watched updates its agent, job id and policy and keeps
        its warning history (a warm process that gets a job, an agent updated in place).
        Call :meth:`unwatch` when the process has exited, before its pid can be reused.
        """
        current = self._watches.get(pid)
        if current is None:
            self._watches[pid] = _Watch(agent, job_id, policy)
        else:
            current.agent, current.job_id, current.policy = agent, job_id, policy

    @property
    def watched(self) -> frozenset[int]:
        """The pids swept now."""
        return frozenset(self._watches)

    def unwatch(self, pid: int) -> None:
        """Stop watching ``pid`` (unknown pids are ignored); the budget is re-checked at once."""
        self._watches.pop(pid, None)
        if self._samples.pop(pid, None) is not None:
            self._request_recheck()

    def set_memory_budget(self, budget_mb: int | None) -> None:
        """Change the fleet's memory budget (an in-place fleet update); re-checked at once."""
        self._budget_mb = budget_mb
        self._request_recheck()

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` with every event from now on (synchronously; it must not block)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener`` (unknown listeners are ignored)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _request_recheck(self) -> None:
        if self._recheck is not None:
            self._recheck.set()

    # --- service ---------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Sample until cancelled.

        Ready (``task_status.started()``) once the CPU baseline and the first memory share are
        taken, so :attr:`memory` is meaningful from then on; :attr:`cpu` follows one
        ``cpu_interval`` later.

        Raises:
            RuntimeError: the monitor is already running.
        """
        if self._running:
            raise RuntimeError("the monitor is already running")
        self._running = True
        try:
            if self._cpu_reader is None:
                self._cpu_reader = await anyio.to_thread.run_sync(detect_cpu_reader)
            if self._memory_share_reader is None:
                self._memory_share_reader = await anyio.to_thread.run_sync(
                    detect_memory_share_reader
                )
            self._recheck = anyio.Event()
            await self._sample_host()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._cpu_loop, name="monitor cpu")
                tg.start_soon(self._memory_loop, name="monitor memory")
                task_status.started()
        finally:
            self._recheck = None
            self._running = False

    async def _cpu_loop(self) -> None:
        deadline = anyio.current_time()
        while True:
            deadline = _next(deadline, self.cpu_interval)
            await anyio.sleep_until(deadline)
            await self._sample_host()

    async def _sample_host(self) -> None:
        cpu_reader, memory_reader = self._cpu_reader, self._memory_share_reader
        assert cpu_reader is not None
        assert memory_reader is not None
        now = anyio.current_time()

        def read() -> tuple[float | None, float]:
            return cpu_reader.read(now), memory_reader.read()

        try:
            cpu, memory = await anyio.to_thread.run_sync(read)
        except (OSError, ValueError) as exc:
            # A cgroup file that vanished or reads garbage: keep the last values, say it once.
            if not self._host_failing:
                logger.warning("CPU and memory sampling failed: %s", exc)
            self._host_failing = True
            return
        if self._host_failing:
            logger.info("CPU and memory sampling works again.")
        self._host_failing = False
        if cpu is not None:
            self._cpu.add(cpu)
        self._memory_share = memory

    async def _memory_loop(self) -> None:
        deadline = anyio.current_time()
        while True:
            await self._sweep()
            deadline = _next(deadline, self.memory_interval)
            # Wait for the next sweep; an unwatch or a budget change re-checks the budget now.
            while anyio.current_time() < deadline:
                assert self._recheck is not None
                with anyio.CancelScope(deadline=deadline):
                    await self._recheck.wait()
                if self._recheck.is_set():
                    self._recheck = anyio.Event()
                    self._check_budget()

    async def _sweep(self) -> None:
        watches = dict(self._watches)
        samples: Mapping[int, MemorySample] = {}
        if watches:
            try:
                samples = await anyio.to_thread.run_sync(self._memory_sampler, list(watches))
            except OSError as exc:
                # e.g. EMFILE (reading /proc needs a descriptor): skip this sweep, keep the
                # last samples, say it once; the daemon goes on
                if not self._sweep_failing:
                    logger.warning(
                        "Memory sweep failed: %s; memory limits are not checked until it works.",
                        exc,
                    )
                self._sweep_failing = True
                return
            if self._sweep_failing:
                logger.info("Memory sweep works again.")
            self._sweep_failing = False
        now = anyio.current_time()
        for pid, watch in watches.items():
            if self._watches.get(pid) is not watch:
                continue  # unwatched (or unwatched and watched again) during the sweep
            sample = samples.get(pid)
            if sample is None:
                self._samples.pop(pid, None)  # exited or unreadable; the pool will unwatch it
                continue
            self._samples[pid] = sample
            decision, watch.state = watch.policy.evaluate(watch.state, sample.bytes, now)
            if isinstance(decision, Warn):
                self._warn(pid, watch, decision)
            elif isinstance(decision, Kill):
                self._limit(pid, watch, decision)
        self._check_budget()

    def _warn(self, pid: int, watch: _Watch, decision: Warn) -> None:
        logger.warning(
            "Job process %s uses %s MB (warning above %s MB).",
            pid,
            decision.mb,
            decision.warn_mb,
            extra={"agent": watch.agent, "job_id": watch.job_id, "pid": pid},
        )
        self._emit(MemoryWarning(watch.agent, watch.job_id, pid, decision.mb, decision.warn_mb))

    def _limit(self, pid: int, watch: _Watch, decision: Kill) -> None:
        logger.error(
            "Job process %s uses %s MB, above its limit of %s MB; its job will be ended.",
            pid,
            decision.mb,
            decision.limit_mb,
            extra={"agent": watch.agent, "job_id": watch.job_id, "pid": pid},
        )
        self._emit(
            MemoryLimitExceeded(
                watch.agent, watch.job_id, pid, decision.mb, decision.limit_mb, decision.reason
            )
        )

    def _check_budget(self) -> None:
        total = sum(s.bytes for s in self._samples.values())
        over = over_budget(total, self._budget_mb, was_over=self._over_budget)
        if over == self._over_budget:
            return
        self._over_budget = over
        total_mb = to_mb(total)
        if over:
            logger.warning(
                "Job processes use %s MB, over the memory budget of %s MB; agents report full.",
                total_mb,
                self._budget_mb,
            )
        else:
            logger.info(
                "Job processes use %s MB, back under the memory budget of %s MB.",
                total_mb,
                self._budget_mb,
            )
        self._emit(BudgetChanged(over, total_mb, self._budget_mb))

    def _emit(self, event: MonitorEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                # A listener's bug must not stop the sampling every agent depends on.
                logger.exception("A monitor listener failed on %s.", type(event).__name__)


def _next(deadline: float, interval: float) -> float:
    """The next periodic deadline; ticks missed while the loop was late are skipped."""
    now = anyio.current_time()
    deadline += interval
    if deadline < now:
        deadline = now + interval
    return deadline
