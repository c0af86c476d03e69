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

Each agent runs in a guarded task: an agent that cannot start (no URL, an unresolvable secret)
or whose connection gives up is recorded as failed with its reason; the others never notice.
Drains never block ``apply`` or ``status``: they run in their own tasks. A coordinated drain
(``drain_all``) drains every agent at once against one deadline and reports whether every job
finished in time.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import anyio
import anyio.abc

from lksup.daemon.agent import AgentConfigError, AgentRuntime, Environment
from lksup.fleet.schema import Agent, Fleet
from lksup.monitors.monitor import Monitor
from lksup.pool.pool import auto_idle_processes
from lksup.protocol.machine import State
from lksup.reconcile.diff import Action, Plan, diff

log = logging.getLogger("lksup.supervisor")

READY_TIMEOUT = 60.0  # how long a replacement may take to register and warm up


@dataclass
class AgentSlot:
    """One agent name: its current runtime, and the ones draining away."""

    name: str
    agent: Agent
    runtime: AgentRuntime | None = None
    draining: list[AgentRuntime] = field(default_factory=list)
    state: str = "pending"
    message: str = ""
    restarts: int = 0
    started_at: float | None = None
    override_drained: bool = False
    removed: bool = False

    def runtimes(self) -> list[AgentRuntime]:
        """The current runtime and the ones draining away."""
        return [r for r in [self.runtime, *self.draining] if r is not None]


class Supervisor:
    """Runs a fleet (see the module docstring)."""

    def __init__(self, env: Environment, monitor: Monitor) -> None:
        self.env = env
        self.monitor = monitor
        self.fleet: Fleet | None = None
        self.slots: dict[str, AgentSlot] = {}
        self.limiter = anyio.CapacityLimiter(auto_idle_processes())
        self._tg: anyio.abc.TaskGroup | None = None
        self._changed = anyio.Event()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Hold the agents' tasks until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await anyio.sleep_forever()

    def _notify(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

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
        limit = fleet.supervisor.max_concurrent_initializations
        self.limiter.total_tokens = auto_idle_processes() if limit == "auto" else limit
        self.monitor.set_memory_budget(fleet.supervisor.memory_budget_mb)
        for item in plan.agents:
            if item.action is Action.CREATE:
                self._create(item.name, fleet.agents[item.name])
            elif item.action is Action.UPDATE_IN_PLACE:
                self._update(item.name, fleet.agents[item.name])
            elif item.action is Action.REPLACE:
                self._replace(item.name, fleet.agents[item.name])
            elif item.action is Action.DRAIN_AND_REMOVE:
                self._remove(item.name)
        self._notify()
        return plan

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

    def _start_runtime(self, slot: AgentSlot) -> AgentRuntime | None:
        try:
            runtime = AgentRuntime(
                slot.name, slot.agent, self.env, monitor=self.monitor, init_limiter=self.limiter
            )
        except AgentConfigError as exc:
            slot.state, slot.message = "failed", str(exc)
            log.error("Agent %s cannot start: %s", slot.name, exc, extra={"agent": slot.name})
            return None
        slot.state, slot.message = "starting", ""
        slot.started_at = anyio.current_time()
        self._require_tg().start_soon(self._guard, slot, runtime)
        return runtime

    async def _guard(self, slot: AgentSlot, runtime: AgentRuntime) -> None:
        """Run one runtime; whatever happens to it stays with this agent."""
        try:
            await runtime.run()
        except Exception as exc:
            log.exception("Agent %s stopped: %s", slot.name, exc, extra={"agent": slot.name})
            slot.state, slot.message = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            if runtime in slot.draining:
                slot.draining.remove(runtime)
            if slot.runtime is runtime:
                machine = runtime.session.machine
                if machine.state is State.FAILED:
                    slot.state, slot.message = "failed", machine.last_error
                elif slot.removed:
                    slot.runtime = None
                else:
                    slot.state = "drained" if machine.draining else "stopped"
            if slot.removed and slot.runtime is None and not slot.draining:
                self.slots.pop(slot.name, None)
            self._notify()

    def _update(self, name: str, agent: Agent) -> None:
        slot = self.slots[name]
        slot.agent = agent
        if slot.runtime is not None:
            slot.runtime.reconfigure(agent)

    def _replace(self, name: str, agent: Agent) -> None:
        slot = self.slots[name]
        old = slot.runtime
        slot.agent = agent
        slot.restarts += 1
        new = self._start_runtime(slot)
        if new is None:
            return
        slot.runtime = new
        if old is not None:
            self._require_tg().start_soon(self._retire_when_ready, slot, old, new)

    async def _retire_when_ready(
        self, slot: AgentSlot, old: AgentRuntime, new: AgentRuntime
    ) -> None:
        """Drain ``old`` once ``new`` is registered and warm (or failed to get there)."""
        with anyio.move_on_after(READY_TIMEOUT):
            await new.session.wait_registered()
            await new.pool.wait_until(lambda: len(new.pool.idle) >= min(1, new.pool.target_idle))
        slot.draining.append(old)
        old.session.drain()
        self._notify()

    def _remove(self, name: str) -> None:
        slot = self.slots.get(name)
        if slot is None:
            return
        slot.removed = True
        if slot.runtime is not None:
            slot.draining.append(slot.runtime)
            slot.runtime.session.drain()
            slot.runtime = None
            slot.state = "draining"
        if not slot.draining:
            self.slots.pop(name, None)

    # --- operations --------------------------------------------------------------------------

    def drain(self, name: str | None = None) -> list[str]:
        """Drain one agent (recorded as an override) or all; the names drained."""
        names = [name] if name is not None else list(self.slots)
        for agent_name in names:
            slot = self.slots[agent_name]
            slot.override_drained = True
            if slot.runtime is not None:
                slot.runtime.session.drain()
        self._notify()
        return names

    def undrain(self, name: str) -> None:
        """Take jobs again (clears the override)."""
        slot = self.slots[name]
        slot.override_drained = False
        if slot.runtime is not None:
            if slot.runtime.session.machine.state is State.CLOSED:
                slot.runtime = self._start_runtime(slot)
            else:
                slot.runtime.session.undrain()
        self._notify()

    def reload(self, name: str) -> None:
        """Rolling replace with the same configuration (new worker first, then drain)."""
        slot = self.slots[name]
        self._replace(name, slot.agent)
        self._notify()

    def running_jobs(self) -> int:
        """Jobs running on every agent, old runtimes included."""
        return sum(
            len(runtime.session.machine.running_jobs)
            for slot in self.slots.values()
            for runtime in slot.runtimes()
        )

    async def drain_all(self, timeout: float | None) -> bool:
        """Drain every agent against one deadline; True when every job ended in time."""
        self.drain()
        runtimes = [r for slot in self.slots.values() for r in slot.runtimes()]
        with anyio.move_on_after(timeout if timeout else None) as scope:
            async with anyio.create_task_group() as tg:
                for runtime in runtimes:
                    tg.start_soon(runtime.session.wait_finished)
        if scope.cancelled_caught:
            await self.stop_all()
            return False
        return True

    async def stop_all(self, *, force: bool = False) -> None:
        """The stop sequence for every job process (short when ``force``); close connections."""
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for slot in self.slots.values():
                    for runtime in slot.runtimes():
                        runtime.session.stop()
                        tg.start_soon(functools.partial(runtime.pool.aclose, force=force))

    def agent_state(self, slot: AgentSlot) -> str:
        """The agent's state for status.

        One of pending, starting, connecting, running, full, draining, drained, backoff,
        failed, stopped.
        """
        runtime = slot.runtime
        if runtime is None:
            return "draining" if slot.draining else slot.state
        machine = runtime.session.machine
        if machine.state is State.FAILED:
            return "failed"
        if machine.state is State.CLOSED:
            return "drained" if machine.draining else "stopped"
        if machine.draining:
            return "draining"
        if runtime.pool.in_backoff:
            return "backoff"
        if machine.state is State.READY:
            return "full" if runtime.full else "running"
        if machine.state in (State.CONNECTING, State.REGISTERING, State.BACKOFF):
            return "connecting"
        return "starting"
