"""One agent of a fleet at run time: its warm pool, its worker connection and its load.

``AgentRuntime`` runs the pieces an agent's settings resolve into (``daemon.resolve``: a
``ProcessSpec`` and request policy for the pool, ``Options`` for the protocol machine, the
connection's credentials with secrets resolved now, at connection time) in one task group.
Its load loop reports the agent's load to the server: the agent's ``load`` policy over the
shared monitor's signals and its job count, compared with its own threshold; full as well
when the fleet's memory budget is exceeded or the agent is at ``max_jobs``. The loop runs
every ``load_interval`` and at once when the pool changes, so a burst cannot overshoot between
two samples (reservations count as jobs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import anyio
import anyio.abc

from lksup.daemon.resolve import (
    Environment,
    build_credentials,
    build_options,
    build_spec,
    fingerprint,
    idle_target,
    memory_policy,
    request_policy,
)
from lksup.daemon.status import FullReason, JobView, RuntimeSnapshot
from lksup.fleet.schema import Agent
from lksup.monitors.load import agent_load, at_capacity, is_full
from lksup.monitors.monitor import Monitor
from lksup.pool.inference import InferenceService
from lksup.pool.pool import AgentPool, Histogram
from lksup.pool.zygote import Zygotes, forking_supported
from lksup.protocol.machine import State
from lksup.transport.session import AgentSession

log = logging.getLogger("lksup.agent")

LOAD_INTERVAL = 0.5


@dataclass(frozen=True)
class Counters:
    """What one runtime counted (``Totals`` sums them over an agent's runtimes)."""

    offers: Mapping[str, int]
    declines: Mapping[str, int]  # offers not accepted, by ``Decline.cause``
    jobs_succeeded: int
    jobs_failed: int
    failures: Mapping[str, int]  # failed jobs by ``JobOutcome.kind``
    reconnects: int
    start_latency: Histogram


class AgentRuntime:
    """One running agent (see the module docstring).

    What the supervisor uses of it is ``Runtime`` (``daemon.supervisor``): its snapshot, its
    counters, drain, undrain, stop and close, and ``on_change``, called whenever its
    connection, its pool or its fullness changes, so nobody has to poll it.
    """

    def __init__(
        self,
        name: str,
        agent: Agent,
        env: Environment,
        *,
        monitor: Monitor,
        init_limiter: anyio.CapacityLimiter,
        load_interval: float = LOAD_INTERVAL,
        inference: InferenceService | None = None,
        zygotes: Zygotes | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.agent = agent
        self.monitor = monitor
        self.load_interval = load_interval
        self._on_change = on_change
        credentials = build_credentials(agent, env)  # may raise: before a template is taken
        spec = build_spec(name, agent, env)
        launcher = None
        if zygotes is not None and agent.process_start != "spawn" and forking_supported():
            launcher = zygotes.launcher(
                spec,
                isolated=agent.process_start == "isolated",
                prepare=agent.prewarm_in == "template",
            )
        self.pool = AgentPool(
            spec,
            num_idle=idle_target(agent),
            policy=request_policy(agent),
            init_limiter=init_limiter,
            monitor=monitor,
            memory=memory_policy(agent),
            inference=inference,
            launcher=launcher,
            on_change=on_change,
        )
        self.session = AgentSession(
            build_options(name, agent), credentials, self.pool, on_change=on_change
        )
        self.fingerprint = fingerprint(self.session.credentials, self.pool.spec.env)
        self.load = 0.0
        self.full = False
        self.done = False  # run() returned (set by its supervisor)
        self.drain_deadline: anyio.CancelScope | None = None  # a drain's deadline is running
        self.stop_reason = "the agent's connection ended"
        """Why its idle job processes are stopped when it ends (the supervisor says why)."""

    # --- what it is --------------------------------------------------------------------------

    def snapshot(self) -> RuntimeSnapshot:
        """This runtime now, as status derives from it (``daemon.status``)."""
        machine, pool = self.session.machine, self.pool
        running = []
        for job_id, process in pool.running.items():
            job = process.jobs.get(job_id)
            assigned = machine.running_jobs.get(job_id)
            running.append(
                JobView(
                    job_id=job_id,
                    room=job.room if job else (assigned.room_name if assigned else ""),
                    pid=process.pid,
                    process_state=process.state.value,
                    started_at=process.job_started_at,
                    entered=job.started.is_set() if job else False,
                )
            )
        processes = pool.processes
        reason, detail = self.full_reason()
        return RuntimeSnapshot(
            connection=machine.state,
            worker_id=machine.worker_id,
            draining=machine.draining,
            connected=machine.connected,
            last_error=machine.last_error,
            attempts=machine.attempts,
            registrations=self.session.registrations,
            processes=len(processes),
            pids=tuple(p.pid for p in processes if p.pid is not None),
            sdk_versions=frozenset(p.sdk_version for p in processes if p.sdk_version),
            idle=len(pool.idle),
            idle_target=pool.target_idle,
            jobs=len(machine.running_jobs),
            running=tuple(running),
            ended=tuple(pool.ended),
            last_init_failure=pool.last_init_failure,
            pool_backoff=pool.in_backoff,
            pool_failure=pool.last_failure,
            pool_retry_in=pool.backoff_remaining,
            load=self.load,
            full=self.full,
            full_reason=reason,
            full_message=detail,
            done=self.done,
        )

    def counters(self) -> Counters:
        """What this runtime counted so far."""
        session, stats = self.session, self.pool.stats
        return Counters(
            offers=dict(session.offers),
            declines=dict(session.declines),
            jobs_succeeded=stats.jobs_succeeded,
            jobs_failed=stats.jobs_failed,
            failures=dict(stats.failures),
            reconnects=session.reconnects,
            start_latency=stats.start_latency,
        )

    @property
    def registered(self) -> bool:
        """Registered with the server now."""
        return self.session.machine.worker_id is not None

    @property
    def draining(self) -> bool:
        """Drained (or draining): it takes no new job."""
        return self.session.machine.draining

    @property
    def ended(self) -> bool:
        """Its connection is over for good: closed, or gave up."""
        return self.session.machine.state in (State.CLOSED, State.FAILED)

    @property
    def jobs(self) -> int:
        """Jobs the connection counts as running."""
        return len(self.session.machine.running_jobs)

    def warm(self) -> bool:
        """Registered with at least one warm process (when it wants any): ready to serve."""
        pool = self.pool
        return self.registered and len(pool.idle) >= min(1, pool.target_idle)

    # --- what is asked of it -----------------------------------------------------------------

    def reconfigure(self, agent: Agent) -> None:
        """Take settings that need no new process or registration (an update in place)."""
        self.agent = agent
        self.pool.reconfigure(
            target_idle=idle_target(agent),
            memory=memory_policy(agent),
            policy=request_policy(agent),
            shutdown_timeout=agent.shutdown_process_timeout,
            initialize_timeout=agent.initialize_process_timeout,
        )
        self.session.reconfigure(max_jobs=agent.max_jobs, max_retry=agent.max_retry)
        self.report_load()

    def drain(self, reason: str) -> None:
        """Take no new job; the runtime ends with its last one. ``reason``: for the idle ones."""
        self.stop_reason = reason
        self.session.drain()

    def undrain(self) -> None:
        """Take jobs again; a running drain deadline is called off."""
        self.session.undrain()
        if self.drain_deadline is not None:
            self.drain_deadline.cancel()
            self.drain_deadline = None

    def stop(self, reason: str) -> None:
        """Close the connection now (the jobs are ``aclose``'s)."""
        self.stop_reason = reason
        self.session.stop()

    def simulate(self, room: str, participant: str | None) -> None:
        """Ask the server for a job on this connection."""
        self.session.simulate(room, participant)

    async def wait_finished(self) -> None:
        """Wait until the connection ended (drained, stopped or gave up)."""
        await self.session.wait_finished()

    async def aclose(self, *, force: bool = False, reason: str | None = None) -> None:
        """The stop sequence for every job process (short when ``force``)."""
        await self.pool.aclose(force=force, reason=reason or self.stop_reason)

    # --- load --------------------------------------------------------------------------------

    def compute_load(self) -> tuple[float, bool]:
        """The agent's load and whether it is full, from the shared monitor and its jobs."""
        machine = self.session.machine
        running, reserved = len(machine.running_jobs), len(machine.reservations)
        load = agent_load(
            self.agent.load,
            cpu=self.monitor.cpu,
            memory=self.monitor.memory,
            running_jobs=running,
            reserved_jobs=reserved,
            max_jobs=self.agent.max_jobs,
        )
        full = is_full(
            load,
            self.agent.load_threshold,
            over_budget=self.monitor.over_budget,
            at_capacity=at_capacity(
                running_jobs=running, reserved_jobs=reserved, max_jobs=self.agent.max_jobs
            ),
        )
        return load, full

    def full_reason(self) -> tuple[FullReason, str]:
        """Why the agent is full (``""`` when it is not) and the numbers behind it."""
        machine = self.session.machine
        running, reserved = len(machine.running_jobs), len(machine.reservations)
        max_jobs, threshold = self.agent.max_jobs, self.agent.load_threshold
        if at_capacity(running_jobs=running, reserved_jobs=reserved, max_jobs=max_jobs):
            return "AtMaxJobs", f"{running + reserved}/{max_jobs} jobs"
        if self.monitor.over_budget:
            return "OverMemoryBudget", "the fleet's memory budget is exceeded"
        if self.load >= threshold:
            return "LoadAboveThreshold", f"load {self.load:.2f} >= threshold {threshold:.2f}"
        return "", f"load {self.load:.2f} < threshold {threshold:.2f}"

    def report_load(self) -> None:
        """Recompute and report the load now (``on_change`` when it becomes full or not)."""
        was_full = self.full
        self.load, self.full = self.compute_load()
        self.session.set_load(self.load, full=self.full)
        if self.full != was_full and self._on_change is not None:
            self._on_change()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the pool, the connection and the load loop until the connection ends."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.pool.run)
            self.report_load()
            await tg.start(self.session.run)
            tg.start_soon(self._load_loop)
            task_status.started()
            await self.session.wait_finished()
            await self.pool.aclose(reason=self.stop_reason)
            tg.cancel_scope.cancel()

    async def _load_loop(self) -> None:
        while True:
            with anyio.move_on_after(self.load_interval):
                await self.pool.wait_changed()
            self.report_load()
