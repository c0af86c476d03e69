"""What the supervisor uses of an agent's runtime, how it makes one, and what runtimes count.

``Runtime`` is the part of ``daemon.agent.AgentRuntime`` the supervisor drives: its snapshot
(``daemon.status``), its counters, drain, undrain, stop and close. ``RuntimeFactory`` makes
one; the supervisor is given the factory, so its tests run it on fakes. ``Totals`` sums the
counters of every runtime an agent had (a replace or a restart never resets them).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from lksup.daemon.agent import Counters
from lksup.daemon.resolve import Environment
from lksup.daemon.status import RuntimeSnapshot
from lksup.fleet.schema import Agent
from lksup.monitors.monitor import Monitor
from lksup.pool.inference import InferenceService
from lksup.pool.pool import Histogram
from lksup.pool.zygote import Zygotes

__all__ = ["Runtime", "RuntimeFactory", "Totals"]


class Runtime(Protocol):
    """One run of an agent, as the supervisor drives it (``daemon.agent.AgentRuntime``)."""

    agent: Agent
    fingerprint: str  # of the secrets it resolved when it started
    done: bool  # its run ended (set by the supervisor)
    drain_deadline: anyio.CancelScope | None  # a drain's deadline is running

    @property
    def registered(self) -> bool:
        """Registered with the server now."""
        ...

    @property
    def draining(self) -> bool:
        """Drained or draining: it takes no new job."""
        ...

    @property
    def ended(self) -> bool:
        """Its connection is over for good (closed, or gave up)."""
        ...

    @property
    def jobs(self) -> int:
        """Jobs running on it."""
        ...

    def warm(self) -> bool:
        """Registered and warm: ready to take over from the runtime it replaces."""
        ...

    def snapshot(self) -> RuntimeSnapshot:
        """What it is now."""
        ...

    def counters(self) -> Counters:
        """What it counted so far."""
        ...

    async def run(self) -> None:
        """Run until its connection ends (drained, stopped, gave up) and its jobs closed."""
        ...

    def reconfigure(self, agent: Agent) -> None:
        """Take settings that need no new process or registration."""
        ...

    def drain(self, reason: str) -> None:
        """Take no new job; end with the last one (``reason``: told to idle processes)."""
        ...

    def undrain(self) -> None:
        """Take jobs again; a running drain deadline is called off."""
        ...

    def stop(self, reason: str) -> None:
        """Close the connection now."""
        ...

    def simulate(self, room: str, participant: str | None) -> None:
        """Ask the server for a job on this connection."""
        ...

    async def wait_finished(self) -> None:
        """Wait until the connection ended."""
        ...

    async def aclose(self, *, force: bool = False, reason: str | None = None) -> None:
        """The stop sequence for every job process (short when ``force``)."""
        ...


class RuntimeFactory(Protocol):
    """Makes the runtime of an agent (``AgentRuntime`` itself is one).

    Raises ``daemon.agent.AgentConfigError`` when the agent cannot be started as configured.
    """

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
        """A runtime of ``name``; it calls ``on_change`` whenever it changes."""
        ...


@dataclass
class Totals:
    """An agent's counters summed over runtimes (replaces and restarts never reset them)."""

    offers: dict[str, int] = field(default_factory=dict)
    declines: dict[str, int] = field(default_factory=dict)
    """Offers not accepted, by ``Decline.cause``."""
    jobs_succeeded: int = 0
    jobs_failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    """Failed jobs by ``JobOutcome.kind``."""
    reconnects: int = 0
    start_latency: Histogram = field(default_factory=Histogram)

    def add(self, counters: Counters) -> None:
        """Add one runtime's counters."""
        for answer, count in counters.offers.items():
            self.offers[answer] = self.offers.get(answer, 0) + count
        for cause, count in counters.declines.items():
            self.declines[cause] = self.declines.get(cause, 0) + count
        self.jobs_succeeded += counters.jobs_succeeded
        self.jobs_failed += counters.jobs_failed
        for kind, count in counters.failures.items():
            self.failures[kind] = self.failures.get(kind, 0) + count
        self.reconnects += counters.reconnects
        self.start_latency.add(counters.start_latency)

    def copy(self) -> Totals:
        """An independent copy."""
        return copy.deepcopy(self)
