"""One agent name in the supervisor: its runtimes over time, and what happens to them.

An ``AgentSlot`` is the supervisor's record of one agent (its current runtime, an old one
still serving while a replacement warms up, old ones draining away, restarts, an operator's
drain) and the agent's lifecycle:

- ``start``: a runtime from the ``Host``'s factory, run in a guarded task: whatever happens
  to it stays with this agent. An agent that cannot start, whose connection gives up or whose
  runtime fails is recorded with its reason and started again after the host's restart
  backoff (reset once a restarted agent registers). Nobody needs to apply anything for it
  to come back; an agent drained by an operator, removed, or part of a fleet being stopped
  is not restarted.
- ``replace``: the new runtime first; the current one keeps serving until the new one is
  registered and warm (notified, never polled), then drains away;
- ``retire``: a runtime drains away; it ends with its last job, or at the agent's drain
  deadline, when its remaining jobs get the stop sequence.

``snapshot`` is the immutable view status is derived from (``daemon.status``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from lksup.daemon.conditions import ConditionTracker
from lksup.daemon.resolve import AgentConfigError
from lksup.daemon.runtime import Runtime, Totals
from lksup.daemon.status import AgentSnapshot, AgentState
from lksup.fleet.schema import Agent
from lksup.pool.ended import ENDED_KEPT, EndedJob
from lksup.protocol.machine import State

__all__ = ["READY_TIMEOUT", "AgentSlot", "Host"]

log = logging.getLogger("lksup.supervisor")

READY_TIMEOUT = 60.0  # how long a replacement may take to register and warm up


class Host(Protocol):
    """What an agent's lifecycle needs of its supervisor."""

    stopping: bool
    """A coordinated drain or stop began: nothing is restarted."""
    deadline_stops: int
    """Jobs stopped because an agent's drain deadline passed."""

    def make_runtime(self, name: str, agent: Agent) -> Runtime:
        """A new runtime for the agent (raises ``AgentConfigError``)."""
        ...

    def start_soon(self, task: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run ``task(*args)`` in the supervisor's task group."""
        ...

    def restart_delay(self, failures: int) -> float:
        """Seconds before a restart after ``failures`` consecutive failures."""
        ...

    def notify(self) -> None:
        """Something changed."""
        ...

    def change_event(self) -> anyio.Event:
        """The event the next change sets."""
        ...

    def holds(self, slot: AgentSlot) -> bool:
        """``slot`` is still the supervisor's record of its name."""
        ...

    def forget(self, slot: AgentSlot) -> None:
        """The agent is gone (removed, and its last runtime ended)."""
        ...


@dataclass
class AgentSlot:
    """One agent name: its runtimes and its lifecycle (see the module docstring)."""

    name: str
    agent: Agent
    host: Host = field(repr=False)
    runtime: Runtime | None = None
    previous: list[Runtime] = field(default_factory=list)  # serving until the new one is ready
    draining: list[Runtime] = field(default_factory=list)
    state: AgentState = AgentState.PENDING  # what it was started as, or how it ended
    message: str = ""  # why it failed
    restarts: int = 0
    started_at: float | None = None
    override_drained: bool = False
    removed: bool = False
    failures: int = 0  # consecutive failures without a registration in between
    restart_at: float | None = None  # a restart is scheduled (state "backoff")
    restart_scope: anyio.CancelScope | None = None
    conditions: ConditionTracker = field(default_factory=ConditionTracker)
    retired: Totals = field(default_factory=Totals)  # the counters of runtimes that ended
    retired_ended: deque[EndedJob] = field(default_factory=lambda: deque(maxlen=ENDED_KEPT))
    """The latest jobs that ended in runtimes that ended (a restart or a replace keeps
    them for ``status --jobs`` and the latest failure)."""
    retired_init_failure: tuple[str, float] | None = None
    """The latest job process that failed to start in a runtime that ended."""

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> Runtime | None:
        """Start a runtime (not yet the slot's current one); None if it cannot start."""
        self.cancel_restart()
        try:
            runtime = self.host.make_runtime(self.name, self.agent)
        except AgentConfigError as exc:
            log.error("Agent %s cannot start: %s", self.name, exc, extra={"agent": self.name})
            self.schedule_restart(str(exc))
            return None
        self.state, self.message = AgentState.STARTING, ""
        self.started_at = anyio.current_time()
        self.host.start_soon(self._guard, runtime)
        return runtime

    async def _guard(self, runtime: Runtime) -> None:
        """Run one runtime; whatever happens to it stays with this agent."""
        error: str | None = None
        try:
            await runtime.run()
        except Exception as exc:
            log.exception("Agent %s stopped: %s", self.name, exc, extra={"agent": self.name})
            error = f"{type(exc).__name__}: {exc}"
        finally:
            runtime.done = True
            self.retire_counters(runtime)
            for old in (self.draining, self.previous):
                if runtime in old:
                    old.remove(runtime)
            if self.runtime is runtime:
                self._ended(runtime, error)
            if self.removed and not self.runtimes() and self.host.holds(self):
                self.host.forget(self)  # only this slot: a newer one may have the name now
            self.host.notify()

    def _ended(self, runtime: Runtime, error: str | None) -> None:
        """The current runtime ended: restart it, unless someone asked it to stop."""
        ended = runtime.snapshot()
        if ended.connection is State.FAILED and error is None:
            error = f"connection gave up after {ended.attempts} attempt(s): {ended.last_error}"
        if ended.registrations:
            self.failures = 0  # it worked for a while: start the backoff over
        if self.removed:
            self.runtime = None
        elif error is not None:
            self.schedule_restart(error)
        elif not (self.override_drained or self.host.stopping):
            self.schedule_restart("the worker stopped")  # nobody asked: it comes back
        else:
            self.state = AgentState.DRAINED if ended.draining else AgentState.STOPPED

    def schedule_restart(self, reason: str) -> None:
        """Record the failure; start the agent again after the backoff (level-triggered)."""
        self.state, self.message = AgentState.FAILED, reason
        self.cancel_restart()  # one pending restart per agent at most
        if self.host.stopping or self.removed or self.override_drained:
            return
        delay = self.host.restart_delay(self.failures)
        self.failures += 1
        self.restart_at = anyio.current_time() + delay
        self.restart_scope = anyio.CancelScope()
        log.warning(
            "Agent %s failed (%s); restarting in %.1fs",
            self.name,
            reason,
            delay,
            extra={"agent": self.name},
        )
        self.host.start_soon(self._restart_later, self.restart_scope, delay)

    def cancel_restart(self) -> None:
        """Call off a scheduled restart."""
        if self.restart_scope is not None:
            self.restart_scope.cancel()
        self.restart_scope, self.restart_at = None, None

    async def _restart_later(self, scope: anyio.CancelScope, delay: float) -> None:
        with scope:
            await anyio.sleep(delay)
            self.restart_scope, self.restart_at = None, None
            if self.host.stopping or self.removed or not self.host.holds(self):
                return
            self.restarts += 1
            self.swap_in()
            self.host.notify()

    def swap_in(self) -> None:
        """Start a new runtime; the current one keeps serving until the new one is ready."""
        old = self.runtime
        new = self.start()
        if new is None:
            return  # the old one (if any) keeps serving; a restart is scheduled
        self.runtime = new
        if old is None or old.done:
            return
        if not old.registered or self.previous:
            # not registered, or itself a replacement still not ready while an older worker
            # serves: nothing to hand over, so it goes now (a storm of reloads never piles up
            # workers)
            self.retire(old, "agent replaced")
            return
        self.previous.append(old)
        self.host.start_soon(self._retire_when_ready, old)

    async def _retire_when_ready(self, old: Runtime) -> None:
        """Drain ``old`` once the agent's current runtime is registered and warm.

        Never on a timer: while the new worker cannot register (wrong URL, server down, a
        restart backoff), the old one keeps taking jobs, so no offer is missed; a warning says
        so after ``READY_TIMEOUT``. Registration and warm-up are notified (``on_change``).
        """
        warn_at: float | None = anyio.current_time() + READY_TIMEOUT
        while old in self.previous and not (self.removed or self.host.stopping):
            changed = self.host.change_event()  # before the check: no change slips in between
            current = self.runtime
            if current is not None and current.warm():
                break
            if warn_at is not None and anyio.current_time() >= warn_at:
                warn_at = None
                log.warning(
                    "Agent %s: the new worker is not ready after %.0fs; the old one keeps "
                    "taking jobs",
                    self.name,
                    READY_TIMEOUT,
                    extra={"agent": self.name},
                )
            with anyio.move_on_after(
                float("inf") if warn_at is None else warn_at - anyio.current_time()
            ):
                await changed.wait()
        if old in self.previous:
            self.previous.remove(old)
            self.retire(old, "agent replaced")
        self.host.notify()

    def retire(self, runtime: Runtime, reason: str) -> None:
        """Drain a runtime away: it ends with its last job, or at the agent's drain deadline."""
        if runtime.done or runtime in self.draining:
            return
        self.draining.append(runtime)
        runtime.drain(reason)
        self.start_drain_deadline(runtime)

    def drain(self, *, override: bool) -> None:
        """Take no new job on any runtime (``override``: an operator's drain)."""
        self.override_drained = self.override_drained or override
        self.cancel_restart()
        for runtime in [*self.previous, self.runtime]:
            if runtime is not None and not runtime.draining:
                runtime.drain("agent drained")
                self.start_drain_deadline(runtime)

    def undrain(self) -> None:
        """Take jobs again (clears the override); a stopped or failed agent starts again."""
        self.override_drained = False
        runtime = self.runtime
        if runtime is None or runtime.ended:
            if runtime is not None and not runtime.done and runtime not in self.draining:
                self.draining.append(runtime)  # still stopping its processes: keep it tracked
            self.runtime = self.start()
        else:
            runtime.undrain()  # the drain is called off, its deadline too

    def remove(self) -> None:
        """Drain every runtime away; the slot goes once the last one ended."""
        self.removed = True
        self.cancel_restart()
        for runtime in [*self.previous, self.runtime]:
            if runtime is not None:
                self.retire(runtime, "agent removed")
        self.previous.clear()
        self.runtime = None
        self.state = AgentState.DRAINING
        if not self.runtimes():
            self.host.forget(self)

    def start_drain_deadline(self, runtime: Runtime) -> None:
        """Stop the jobs still running on ``runtime`` at the agent's ``drain_timeout``."""
        if runtime.drain_deadline is None and runtime.agent.drain_timeout:
            runtime.drain_deadline = anyio.CancelScope()
            self.host.start_soon(self._drain_deadline, runtime, runtime.drain_deadline)

    async def _drain_deadline(self, runtime: Runtime, scope: anyio.CancelScope) -> None:
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
        self.host.deadline_stops += jobs
        log.warning(
            "Agent %s: drain deadline (%.0fs) reached; stopping %d job(s)",
            self.name,
            runtime.agent.drain_timeout,
            jobs,
            extra={"agent": self.name},
        )
        runtime.stop("drain deadline reached")
        await runtime.aclose()

    # --- what it is -------------------------------------------------------------------------

    def snapshot(self, now: float) -> AgentSnapshot:
        """This agent at ``now`` (``anyio.current_time()``), as status derives from it."""
        runtime = self.runtime
        return AgentSnapshot(
            name=self.name,
            recorded=self.state,
            reason=self.message,
            restart_in=None if self.restart_at is None else max(0.0, self.restart_at - now),
            overridden=self.override_drained,
            replacing=bool(self.previous),
            draining_runtimes=len(self.draining),
            runtime=runtime.snapshot() if runtime is not None else None,
        )

    def retire_counters(self, runtime: Runtime) -> None:
        """Keep what an ended runtime counted and the jobs it ended."""
        snapshot = runtime.snapshot()
        self.retired.add(runtime.counters())
        self.retired_ended.extend(snapshot.ended)
        if snapshot.last_init_failure is not None:
            self.retired_init_failure = snapshot.last_init_failure

    def totals(self) -> Totals:
        """Counters over every runtime this agent had: ended ones and live ones."""
        totals = self.retired.copy()
        for runtime in self.runtimes():
            if not runtime.done:  # an ended one is in ``retired`` already
                totals.add(runtime.counters())
        return totals

    def running_jobs(self) -> int:
        """Jobs running on this agent, old runtimes included."""
        return sum(r.jobs for r in self.runtimes())

    def runtimes(self) -> list[Runtime]:
        """The current runtime, the old ones still serving, and the ones draining away."""
        return [r for r in [self.runtime, *self.previous, *self.draining] if r is not None]
