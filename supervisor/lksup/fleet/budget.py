"""The stop budget of a fleet: the worst case from SIGTERM to the supervisor's exit.

On the first SIGTERM every agent drains against ``supervisor.drain_timeout``; what is still
running then gets the stop sequence, on every process at once: ``Shutdown`` and the agent's
``shutdown_process_timeout``, then SIGTERM and ``TERM_GRACE``, then SIGKILL. ``STOP_MARGIN``
covers what no timeout bounds (templates, connections' closing handshakes, the interpreter's
exit). Whatever stops lksup (Kubernetes' ``terminationGracePeriodSeconds``, systemd's
``TimeoutStopSec``, ``docker stop --time``) must allow at least ``StopBudget.total``; a
``drain_timeout`` of 0 waits for the jobs however long they run, and nothing can cover it.

Pure: no clocks, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from lksup.fleet.schema import Fleet

__all__ = ["STOP_MARGIN", "TERM_GRACE", "StopBudget", "stop_budget"]

#: Seconds a job process gets after SIGTERM before SIGKILL (the stop sequence's last step).
TERM_GRACE: Final = 2.0
#: Seconds for what the stop sequence does not bound.
STOP_MARGIN: Final = 15.0


@dataclass(frozen=True)
class StopBudget:
    """The parts of a fleet's worst-case stop time, in seconds."""

    drain: float
    """``supervisor.drain_timeout``; 0: the drain waits for every job, however long."""
    shutdown: float
    """The largest ``shutdown_process_timeout`` of the agents (the slowest stop sequence)."""
    shutdown_agent: str | None
    """The agent with that timeout (None: no agents)."""
    term_grace: float = TERM_GRACE
    margin: float = STOP_MARGIN

    @property
    def bounded(self) -> bool:
        """False when the drain has no deadline: no stop timeout covers it."""
        return self.drain > 0

    @property
    def total(self) -> float | None:
        """Seconds from SIGTERM to exit at worst; None when unbounded."""
        if not self.bounded:
            return None
        return self.drain + self.shutdown + self.term_grace + self.margin

    def explain(self) -> str:
        """``637 s = drain_timeout 600 s + shutdown_process_timeout 20 s (agent 'x') + ...``."""
        who = f" (agent {self.shutdown_agent!r})" if self.shutdown_agent else ""
        parts = (
            f"drain_timeout {self.drain:g} s + shutdown_process_timeout {self.shutdown:g} s{who}"
            f" + SIGTERM grace {self.term_grace:g} s + margin {self.margin:g} s"
        )
        if self.total is None:
            return f"unbounded: supervisor.drain_timeout is 0 (waits for every job); {parts}"
        return f"{self.total:g} s = {parts}"


def stop_budget(fleet: Fleet) -> StopBudget:
    """The stop budget of a normalized ``fleet``."""
    slowest = max(
        fleet.agents.items(), key=lambda item: item[1].shutdown_process_timeout, default=None
    )
    return StopBudget(
        drain=fleet.supervisor.drain_timeout,
        shutdown=slowest[1].shutdown_process_timeout if slowest else 0.0,
        shutdown_agent=slowest[0] if slowest else None,
    )
