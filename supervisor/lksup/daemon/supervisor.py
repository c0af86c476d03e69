"""The supervisor: the running fleet, reconciled to the applied fleet, drained as one.

``Supervisor.apply(fleet)`` diffs the normalized fleet against the one applied before (the
pure ``reconcile.diff``) and carries out the plan per agent, each agent's lifecycle being its
``AgentSlot``'s (``daemon.slot``):

- ``create``: start a runtime (``daemon.agent.AgentRuntime``, or what the injected
  ``runtime_factory`` makes: tests give fakes);
- ``update-in-place``: hand the running agent its new settings (thresholds, load policy, pool
  size, limits, timeouts, request policy); no process is restarted, no job disturbed;
- ``replace``: start the new runtime next to the old one; the old one drains once the new one
  is registered and warm (no offer is missed, no running job is disturbed);
- ``drain-and-remove``: drain the agent; it disappears once its last job ended (or at its drain
  deadline, when its remaining jobs get the stop sequence).

Beyond the plan, every apply re-reads the secrets agents reference and replaces an agent
whose secrets changed. A failed agent is restarted by its slot after ``RESTART_BACKOFF`` (5 s
doubling up to 5 min), level-triggered: no apply is needed for it to come back, and the others
never notice. Drains never block ``apply`` or ``status``: they run in their own tasks. A
coordinated drain (``drain_all``) drains every agent at once against one deadline and reports
whether every job finished in time.

Runtimes report every change of their connection, pool or fullness (``on_change``), and so
does the supervisor of its own (``notify``): whoever waits for a state (a replacement's
hand-over, READY=1, the events) waits on ``change_event`` and never polls.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc

from lksup.daemon.agent import AgentRuntime
from lksup.daemon.resolve import AgentConfigError, Environment, for_fleet, resolved_fingerprint
from lksup.daemon.runtime import Runtime, RuntimeFactory
from lksup.daemon.slot import READY_TIMEOUT, AgentSlot
from lksup.daemon.status import AgentSnapshot, AgentState, state
from lksup.fleet.schema import Agent, Fleet
from lksup.monitors.monitor import Monitor
from lksup.pool.inference import InferenceService
from lksup.pool.pool import auto_idle_processes
from lksup.pool.zygote import Zygotes
from lksup.protocol.backoff import Backoff
from lksup.reconcile.diff import Action, Plan, diff

__all__ = ["READY_TIMEOUT", "RESTART_BACKOFF", "AgentSlot", "Supervisor"]

log = logging.getLogger("lksup.supervisor")

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

    def notify(self) -> None:
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
        self.notify()
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

    # --- what an agent's lifecycle needs (``slot.Host``) ---------------------------------------

    def make_runtime(self, name: str, agent: Agent) -> Runtime:
        """A new runtime of the agent, from the factory (raises ``AgentConfigError``)."""
        return self.runtime_factory(
            name,
            agent,
            self.env,
            monitor=self.monitor,
            init_limiter=self.limiter,
            inference=self.inference,
            zygotes=self.zygotes,
            on_change=self.notify,
        )

    def start_soon(self, task: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run ``task(*args)`` in the supervisor's task group."""
        if self._tg is None:
            raise RuntimeError("the supervisor is not running")
        self._tg.start_soon(task, *args)

    def restart_delay(self, failures: int) -> float:
        """Seconds before a restart after ``failures`` consecutive failures."""
        return self.restart_backoff.delay(failures, self._rand())

    def holds(self, slot: AgentSlot) -> bool:
        """``slot`` is still the record of its agent name."""
        return self.slots.get(slot.name) is slot

    def forget(self, slot: AgentSlot) -> None:
        """A removed agent is gone."""
        if self.holds(slot):
            del self.slots[slot.name]

    # --- the plan's actions -----------------------------------------------------------------

    def _create(self, name: str, agent: Agent) -> None:
        slot = self.slots.get(name) or AgentSlot(name, agent, self)
        slot.agent, slot.removed, slot.override_drained = agent, False, False
        self.slots[name] = slot
        slot.runtime = slot.start()

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
        slot.swap_in()

    def _remove(self, name: str) -> None:
        slot = self.slots.get(name)
        if slot is not None:
            slot.remove()

    # --- operations --------------------------------------------------------------------------

    def drain(self, name: str | None = None, *, override: bool = True) -> list[str]:
        """Drain one agent or all; the names drained.

        ``override``: an operator's drain, recorded as the agent's override (SYNC) until an
        undrain or an apply that changes it; the fleet-wide drain of a stop is none.
        """
        names = [name] if name is not None else list(self.slots)
        for agent_name in names:
            self.slots[agent_name].drain(override=override)
        self.notify()
        return names

    def undrain(self, name: str) -> None:
        """Take jobs again (clears the override); a stopped or failed agent starts again."""
        self.slots[name].undrain()
        self.notify()

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
        self.notify()
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
            slot.cancel_restart()
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
            slot.cancel_restart()
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
