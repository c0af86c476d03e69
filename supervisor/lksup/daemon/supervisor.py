"""The supervisor: the running fleet, reconciled to the applied fleet, drained as one.

``Supervisor.apply(fleet)`` diffs the normalized fleet against the one applied before (the
pure ``reconcile.diff``) and carries out the plan per agent:

- ``create``: start an ``AgentRuntime`` (pool, connection, load loop);
- ``update-in-place``: hand the running agent its new settings (thresholds, load policy, pool
  size, limits, timeouts, request policy); no process is restarted, no job disturbed;
- ``replace``: start the new runtime next to the old one, wait until it is registered and its
  pool is warm, then drain the old one (no offer is missed, no running job is disturbed);
- ``drain-and-remove``: drain the agent; it disappears once its last job ended (or at its drain
  deadline, when its remaining jobs get the stop sequence).

Each agent runs in a guarded task: an agent that cannot start (no URL, an unresolvable secret),
whose connection gives up (``max_retry`` failed attempts) or whose runtime fails is recorded
with its reason and started again after a delay that doubles with each consecutive failure
(``RESTART_BACKOFF``: 5 s up to 5 min; reset once a restarted agent registers). The loop is
level-triggered: no apply is needed for a failed agent to come back, and the others never
notice. An agent drained by an operator, removed, or part of a fleet being stopped is not
restarted.
Drains never block ``apply`` or ``status``: they run in their own tasks. A coordinated drain
(``drain_all``) drains every agent at once against one deadline and reports whether every job
finished in time.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable

import anyio
import anyio.abc

from lksup.daemon.agent import (
    AgentConfigError,
    AgentRuntime,
    Environment,
    for_fleet,
    resolved_fingerprint,
)
from lksup.daemon.slot import AgentSlot, Runtime, RuntimeFactory
from lksup.daemon.status import AgentSnapshot, AgentState, state
from lksup.fleet.schema import Agent, Fleet
from lksup.monitors.monitor import Monitor
from lksup.pool.inference import InferenceService
from lksup.pool.pool import auto_idle_processes
from lksup.pool.zygote import Zygotes
from lksup.protocol.backoff import Backoff
from lksup.protocol.machine import State
from lksup.reconcile.diff import Action, Plan, diff

__all__ = ["READY_TIMEOUT", "RESTART_BACKOFF", "AgentSlot", "Supervisor"]

log = logging.getLogger("lksup.supervisor")

READY_TIMEOUT = 60.0  # how long a replacement may take to register and warm up

#: Delay before a failed agent is started again: 5 s, doubling per consecutive failure, 5 min cap.
RESTART_BACKOFF = Backoff(initial_delay=5.0, factor=2.0, max_delay=300.0, jitter=0.2)


class Supervisor:
    """Runs a fleet (see the module docstring)."""

    def __init__(
        self,
        env: Environment,
        monitor: Monitor,
        *,
        restart_backoff: Backoff = RESTART_BACKOFF,
        rand: Callable[[], float] = random.random,
        zygotes: Zygotes | None = None,
        runtime_factory: RuntimeFactory = AgentRuntime,
    ) -> None:
        self.env = env
        self.runtime_factory = runtime_factory
        self.monitor = monitor
        self.restart_backoff = restart_backoff
        self._rand = rand
        self.stopping = False  # a coordinated drain or stop began: nothing is restarted
        self.rotated: list[str] = []  # agents the last apply replaced for a changed secret
        self.deadline_stops = 0  # jobs stopped because an agent's drain deadline passed
        self.fleet: Fleet | None = None
        self.slots: dict[str, AgentSlot] = {}
        self.limiter = anyio.CapacityLimiter(auto_idle_processes())
        self.inference = InferenceService(monitor=monitor)
        self.zygotes = zygotes  # None: every agent spawns its processes
        self._tg: anyio.abc.TaskGroup | None = None
        self._changed = anyio.Event()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Hold the agents' tasks until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            await tg.start(self.inference.run)
            if self.zygotes is not None:
                await tg.start(self.zygotes.run)
            task_status.started()
            await anyio.sleep_forever()

    def _notify(self) -> None:
        """Something changed: the supervisor's record, or a runtime (its ``on_change``)."""
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def change_event(self) -> anyio.Event:
        """The event the next change sets.

        Take it *before* reading state, then wait on it: no change slips in between.
        """
        return self._changed

    async def wait_until(self, predicate: object) -> None:
        """Wait until ``predicate()`` holds, re-checked on every change."""
        assert callable(predicate)
        while not predicate():
            await self._changed.wait()

    # --- apply ------------------------------------------------------------------------------

    async def apply(self, fleet: Fleet) -> Plan:
        """Reconcile the running fleet to ``fleet`` (already validated and normalized)."""
        plan = diff(self.fleet, fleet)
        self.fleet = fleet
        self.env = for_fleet(self.env, fleet)  # what job processes may not inherit, or must mask
        limit = fleet.supervisor.max_concurrent_initializations
        self.limiter.total_tokens = auto_idle_processes() if limit == "auto" else limit
        self.monitor.set_memory_budget(fleet.supervisor.memory_budget_mb)
        if self.zygotes is not None:
            preload = [m for agent in fleet.agents.values() for m in agent.preload]
            self.zygotes.configure(
                preload=[*fleet.supervisor.preload, *preload],
                defaults=fleet.supervisor.preload_defaults,
                sdk=any(a.runtime == "livekit-agents" for a in fleet.agents.values()),
            )
        for name in self.overrides_cleared_by(plan):
            log.info("Agent %s: the apply changes it, so its drain override is cleared", name)
            self.slots[name].override_drained = False
        for item in plan.agents:
            if item.action is Action.CREATE:
                self._create(item.name, fleet.agents[item.name])
            elif item.action is Action.UPDATE_IN_PLACE:
                self._update(item.name, fleet.agents[item.name])
            elif item.action is Action.REPLACE:
                self._replace(item.name, fleet.agents[item.name])
            elif item.action is Action.DRAIN_AND_REMOVE:
                self._remove(item.name)
        self.rotated = self._replace_rotated(plan)
        self._notify()
        return plan

    def _replace_rotated(self, plan: Plan) -> list[str]:
        """Replace the agents whose secret references resolve to something new.

        The plan compares references, not values, so a rotated ``{file: ...}`` or a changed
        environment variable shows as unchanged; every apply (and so SIGHUP) reads them again
        and gives such an agent a rolling replace. A reference that cannot be read now leaves
        the agent as it is (its next start reports it).
        """
        rotated = []
        for item in plan.agents:
            if item.action not in (Action.UNCHANGED, Action.UPDATE_IN_PLACE):
                continue
            slot = self.slots.get(item.name)
            runtime = slot.runtime if slot is not None else None
            if slot is None or runtime is None or runtime.done or slot.override_drained:
                continue
            try:
                fingerprint = resolved_fingerprint(slot.name, slot.agent, self.env)
            except AgentConfigError as exc:
                log.warning("Agent %s: %s", slot.name, exc, extra={"agent": slot.name})
                continue
            if fingerprint != runtime.fingerprint:
                log.info(
                    "Agent %s: a secret it references changed; replacing it",
                    slot.name,
                    extra={"agent": slot.name},
                )
                rotated.append(slot.name)
                self._replace(slot.name, slot.agent)
        return rotated

    def overrides_cleared_by(self, plan: Plan) -> list[str]:
        """Agents drained by an operator that this plan changes.

        The apply says otherwise, so their drain override ends; an unchanged agent keeps it.
        """
        changes = (Action.UPDATE_IN_PLACE, Action.REPLACE)
        return [
            item.name
            for item in plan.agents
            if item.action in changes
            and item.name in self.slots
            and self.slots[item.name].override_drained
        ]

    def _require_tg(self) -> anyio.abc.TaskGroup:
        if self._tg is None:
            raise RuntimeError("the supervisor is not running")
        return self._tg

    def _create(self, name: str, agent: Agent) -> None:
        slot = self.slots.get(name) or AgentSlot(name, agent)
        slot.agent, slot.removed, slot.override_drained = agent, False, False
        self.slots[name] = slot
        runtime = self._start_runtime(slot)
        slot.runtime = runtime

    def _start_runtime(self, slot: AgentSlot) -> Runtime | None:
        self._cancel_restart(slot)
        try:
            runtime = self.runtime_factory(
                slot.name,
                slot.agent,
                self.env,
                monitor=self.monitor,
                init_limiter=self.limiter,
                inference=self.inference,
                zygotes=self.zygotes,
                on_change=self._notify,
            )
        except AgentConfigError as exc:
            log.error("Agent %s cannot start: %s", slot.name, exc, extra={"agent": slot.name})
            self._schedule_restart(slot, str(exc))
            return None
        slot.state, slot.message = AgentState.STARTING, ""
        slot.started_at = anyio.current_time()
        self._require_tg().start_soon(self._guard, slot, runtime)
        return runtime

    async def _guard(self, slot: AgentSlot, runtime: Runtime) -> None:
        """Run one runtime; whatever happens to it stays with this agent."""
        error: str | None = None
        try:
            await runtime.run()
        except Exception as exc:
            log.exception("Agent %s stopped: %s", slot.name, exc, extra={"agent": slot.name})
            error = f"{type(exc).__name__}: {exc}"
        finally:
            runtime.done = True
            slot.retire(runtime)
            for old in (slot.draining, slot.previous):
                if runtime in old:
                    old.remove(runtime)
            if slot.runtime is runtime:
                ended = runtime.snapshot()
                if ended.connection is State.FAILED and error is None:
                    error = f"connection gave up after {ended.attempts} attempt(s): "
                    error += ended.last_error
                if ended.registrations:
                    slot.failures = 0  # it worked for a while: start the backoff over
                if slot.removed:
                    slot.runtime = None
                elif error is not None:
                    self._schedule_restart(slot, error)
                elif not (slot.override_drained or self.stopping):
                    # nobody asked it to stop: level-triggered, it comes back
                    self._schedule_restart(slot, "the worker stopped")
                else:
                    slot.state = AgentState.DRAINED if ended.draining else AgentState.STOPPED
            if slot.removed and not slot.runtimes() and self.slots.get(slot.name) is slot:
                del self.slots[slot.name]  # only this slot: a newer one may have the name now
            self._notify()

    # --- restarts ------------------------------------------------------------------------------

    def _schedule_restart(self, slot: AgentSlot, reason: str) -> None:
        """Record the failure; start the agent again after the backoff (level-triggered)."""
        slot.state, slot.message = AgentState.FAILED, reason
        self._cancel_restart(slot)  # one pending restart per agent at most
        if self.stopping or slot.removed or slot.override_drained or self._tg is None:
            return
        delay = self.restart_backoff.delay(slot.failures, self._rand())
        slot.failures += 1
        slot.restart_at = anyio.current_time() + delay
        slot.restart_scope = anyio.CancelScope()
        log.warning(
            "Agent %s failed (%s); restarting in %.1fs",
            slot.name,
            reason,
            delay,
            extra={"agent": slot.name},
        )
        self._tg.start_soon(self._restart_later, slot, slot.restart_scope, delay)

    def _cancel_restart(self, slot: AgentSlot) -> None:
        if slot.restart_scope is not None:
            slot.restart_scope.cancel()
        slot.restart_scope, slot.restart_at = None, None

    async def _restart_later(self, slot: AgentSlot, scope: anyio.CancelScope, delay: float) -> None:
        with scope:
            await anyio.sleep(delay)
            slot.restart_scope, slot.restart_at = None, None
            if self.stopping or slot.removed or self.slots.get(slot.name) is not slot:
                return
            slot.restarts += 1
            self._swap_in(slot)
            self._notify()

    def _update(self, name: str, agent: Agent) -> None:
        slot = self.slots[name]
        slot.agent = agent
        runtime = slot.runtime
        if runtime is not None:
            runtime.reconfigure(agent)
        if (
            not slot.override_drained
            and not self.stopping
            and (runtime is None or runtime.draining)
        ):
            self.undrain(name)  # its drain override was just cleared

    def _replace(self, name: str, agent: Agent) -> None:
        slot = self.slots[name]
        slot.agent = agent
        slot.restarts += 1
        self._swap_in(slot)

    def _swap_in(self, slot: AgentSlot) -> None:
        """Start a new runtime; the current one keeps serving until the new one is ready."""
        old = slot.runtime
        new = self._start_runtime(slot)
        if new is None:
            return  # the old one (if any) keeps serving; a restart is scheduled
        slot.runtime = new
        if old is None or old.done:
            return
        if not old.registered or slot.previous:
            # not registered, or itself a replacement still not ready while an older worker
            # serves: nothing to hand over, so it goes now (a storm of reloads never piles up
            # workers)
            self._retire(slot, old, "agent replaced")
            return
        slot.previous.append(old)
        self._require_tg().start_soon(self._retire_when_ready, slot, old)

    async def _retire_when_ready(self, slot: AgentSlot, old: Runtime) -> None:
        """Drain ``old`` once the agent's current runtime is registered and warm.

        Never on a timer: while the new worker cannot register (wrong URL, server down, a
        restart backoff), the old one keeps taking jobs, so no offer is missed; a warning says
        so after ``READY_TIMEOUT``. Registration and warm-up are notified (``on_change``).
        """
        warn_at: float | None = anyio.current_time() + READY_TIMEOUT
        while old in slot.previous and not (slot.removed or self.stopping):
            changed = self._changed  # before the check: no change slips in between
            current = slot.runtime
            if current is not None and current.warm():
                break
            if warn_at is not None and anyio.current_time() >= warn_at:
                warn_at = None
                log.warning(
                    "Agent %s: the new worker is not ready after %.0fs; the old one keeps "
                    "taking jobs",
                    slot.name,
                    READY_TIMEOUT,
                    extra={"agent": slot.name},
                )
            with anyio.move_on_after(
                float("inf") if warn_at is None else warn_at - anyio.current_time()
            ):
                await changed.wait()
        if old in slot.previous:
            slot.previous.remove(old)
            self._retire(slot, old, "agent replaced")
        self._notify()

    def _retire(self, slot: AgentSlot, runtime: Runtime, reason: str) -> None:
        """Drain a runtime away: it ends with its last job, or at the agent's drain deadline."""
        if runtime.done or runtime in slot.draining:
            return
        slot.draining.append(runtime)
        runtime.drain(reason)
        self._start_drain_deadline(slot, runtime)

    def _start_drain_deadline(self, slot: AgentSlot, runtime: Runtime) -> None:
        if runtime.drain_deadline is None and runtime.agent.drain_timeout:
            runtime.drain_deadline = anyio.CancelScope()
            self._require_tg().start_soon(
                self._drain_deadline, slot, runtime, runtime.drain_deadline
            )

    async def _drain_deadline(
        self, slot: AgentSlot, runtime: Runtime, scope: anyio.CancelScope
    ) -> None:
        """At the agent's ``drain_timeout`` the jobs still running get the stop sequence.

        Unless the drain was called off: ``undrain`` cancels ``runtime.drain_deadline``.
        """
        with scope:
            with anyio.move_on_after(runtime.agent.drain_timeout):
                await runtime.wait_finished()
                return
        if scope.cancel_called:
            return
        jobs = runtime.jobs
        if jobs:
            self.deadline_stops += jobs
        log.warning(
            "Agent %s: drain deadline (%.0fs) reached; stopping %d job(s)",
            slot.name,
            runtime.agent.drain_timeout,
            jobs,
            extra={"agent": slot.name},
        )
        runtime.stop("drain deadline reached")
        await runtime.aclose()

    def _remove(self, name: str) -> None:
        slot = self.slots.get(name)
        if slot is None:
            return
        slot.removed = True
        self._cancel_restart(slot)
        for runtime in [*slot.previous, slot.runtime]:
            if runtime is not None:
                self._retire(slot, runtime, "agent removed")
        slot.previous.clear()
        slot.runtime = None
        slot.state = AgentState.DRAINING
        if not slot.runtimes():
            self.slots.pop(name, None)

    # --- operations --------------------------------------------------------------------------

    def drain(self, name: str | None = None, *, override: bool = True) -> list[str]:
        """Drain one agent or all; the names drained.

        ``override``: an operator's drain, recorded as the agent's override (SYNC) until an
        undrain or an apply that changes it; the fleet-wide drain of a stop is none.
        """
        names = [name] if name is not None else list(self.slots)
        for agent_name in names:
            slot = self.slots[agent_name]
            slot.override_drained = slot.override_drained or override
            self._cancel_restart(slot)
            for runtime in [*slot.previous, slot.runtime]:
                if runtime is not None and not runtime.draining:
                    runtime.drain("agent drained")
                    self._start_drain_deadline(slot, runtime)
        self._notify()
        return names

    def undrain(self, name: str) -> None:
        """Take jobs again (clears the override); a stopped or failed agent starts again."""
        slot = self.slots[name]
        slot.override_drained = False
        runtime = slot.runtime
        if runtime is None or runtime.ended:
            if runtime is not None and not runtime.done and runtime not in slot.draining:
                slot.draining.append(runtime)  # still stopping its processes: keep it tracked
            slot.runtime = self._start_runtime(slot)
        else:
            runtime.undrain()  # the drain is called off, its deadline too
        self._notify()

    def reload(self, name: str) -> bool:
        """Rolling replace with the same configuration (new worker first, then drain).

        An agent drained by an operator is left as it is (False): a reload must not make it
        take jobs again; ``undrain`` does that.
        """
        slot = self.slots[name]
        if slot.override_drained:
            return False
        if self.zygotes is not None:  # the new worker's processes import the code anew
            self.zygotes.refresh(name)
        self._replace(name, slot.agent)
        self._notify()
        return True

    def jobs_by_agent(self) -> dict[str, int]:
        """Jobs running per agent, old runtimes included."""
        return {name: slot.running_jobs() for name, slot in self.slots.items()}

    def running_jobs(self) -> int:
        """Jobs running on every agent, old runtimes included."""
        return sum(slot.running_jobs() for slot in self.slots.values())

    async def drain_all(self, timeout: float | None) -> bool:
        """Drain every agent against one deadline; True when every job ended in time."""
        self.stopping = True
        stopped_before = self.deadline_stops
        for slot in self.slots.values():
            self._cancel_restart(slot)
        self.drain(override=False)
        runtimes = [r for slot in self.slots.values() for r in slot.runtimes()]
        with anyio.move_on_after(timeout if timeout else None) as scope:
            async with anyio.create_task_group() as tg:
                for runtime in runtimes:
                    tg.start_soon(runtime.wait_finished)
        if scope.cancelled_caught:
            await self.stop_all()
            return False
        with anyio.CancelScope(shield=True):
            await self.inference.aclose()  # no job is left to need it
            if self.zygotes is not None:
                await self.zygotes.aclose()
        return self.deadline_stops == stopped_before  # an agent's deadline stopped jobs: late

    async def stop_all(self, *, force: bool = False) -> None:
        """The stop sequence for every job process (short when ``force``); close connections."""
        self.stopping = True
        for slot in self.slots.values():
            self._cancel_restart(slot)
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for slot in self.slots.values():
                    for runtime in slot.runtimes():
                        runtime.stop("supervisor stopping")
                        tg.start_soon(functools.partial(runtime.aclose, force=force))
            await self.inference.aclose()
            if self.zygotes is not None:
                await self.zygotes.aclose()

    def snapshot(self, slot: AgentSlot) -> AgentSnapshot:
        """One agent now, as status derives from it (``daemon.status``)."""
        return slot.snapshot(anyio.current_time())

    def agent_state(self, slot: AgentSlot) -> AgentState:
        """The agent's STATE (``daemon.status.state`` of its snapshot)."""
        return state(self.snapshot(slot))
