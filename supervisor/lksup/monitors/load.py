"""One agent's load from the shared samples, and whether the agent is full.

DESIGN.md §3.5: one sampler, many policies. The monitor measures host (or cgroup) CPU and
memory once for the whole supervisor; each agent turns those shared signals, plus its own job
counts, into its load through its declared ``load`` expression (``lksup.fleet.loadexpr``) and
compares it with its own ``load_threshold``. Thresholds therefore express priorities between
agents on one host: at the same CPU, an agent with threshold 0.5 declines before one with 0.9.

Invariants:

- ``agent_load`` is in [0, 1] (the range the server expects), whatever the signals.
- ``jobs`` counts offers accepted but not yet assigned (``reserved_jobs``) as running, so a
  burst of offers cannot overshoot capacity between two samples.
- An agent is full when its load reaches its threshold (``>=``, as livekit-agents), when the
  fleet is over its memory budget, or when it runs ``max_jobs`` jobs, whatever the expression.

Pure: no clock, no I/O. The CPU moving average (:class:`MovingAverage`) lives here too so it
can be tested with plain numbers.
"""

from __future__ import annotations

from collections import deque
from functools import lru_cache

from lksup.fleet import loadexpr


@lru_cache(maxsize=256)
def _compiled(expr_text: str) -> loadexpr.Expr:
    return loadexpr.parse(expr_text)


def jobs_share(*, running_jobs: int, reserved_jobs: int, max_jobs: int | None) -> float:
    """The ``jobs`` signal: (running + reserved) / ``max_jobs``; 0 when there is no maximum.

    Not clamped: an agent over its maximum reads above 1, which an expression such as
    ``0.5 * jobs`` should still see; the final load is clamped.
    """
    if max_jobs is None:
        return 0.0
    if max_jobs <= 0:
        raise ValueError("max_jobs must be >= 1 or None")
    return (running_jobs + reserved_jobs) / max_jobs


def at_capacity(*, running_jobs: int, reserved_jobs: int, max_jobs: int | None) -> bool:
    """Whether the agent already runs (or has promised) ``max_jobs`` jobs."""
    return max_jobs is not None and running_jobs + reserved_jobs >= max_jobs


def agent_load(
    expr_text: str,
    *,
    cpu: float,
    memory: float,
    running_jobs: int,
    reserved_jobs: int,
    max_jobs: int | None,
) -> float:
    """Evaluate an agent's ``load`` expression over the shared signals.

    Args:
        expr_text: the agent's ``load`` (``"cpu"``, ``"max(cpu, jobs)"``...); already validated
            by the fleet schema, parsed once and cached.
        cpu: the monitor's averaged host/cgroup CPU share, in [0, 1].
        memory: the monitor's host/cgroup memory share, in [0, 1].
        running_jobs: jobs running on this agent.
        reserved_jobs: offers accepted but not yet assigned.
        max_jobs: the agent's ``max_jobs`` (``None``: no maximum, ``jobs`` reads 0).

    Returns:
        The load, clamped to [0, 1].

    Raises:
        lksup.fleet.loadexpr.LoadExprError: ``expr_text`` is not a load expression.
    """
    signals = {
        "cpu": cpu,
        "memory": memory,
        "jobs": jobs_share(
            running_jobs=running_jobs, reserved_jobs=reserved_jobs, max_jobs=max_jobs
        ),
    }
    return loadexpr.evaluate(_compiled(expr_text), signals)


def is_full(load: float, threshold: float, *, over_budget: bool, at_capacity: bool = False) -> bool:
    """Whether the agent reports ``WS_FULL`` and declines offers.

    Args:
        load: the agent's load (:func:`agent_load`).
        threshold: its ``load_threshold``; full when ``load >= threshold``.
        over_budget: the fleet's memory budget is exceeded (the monitor's ``over_budget``).
        at_capacity: the agent runs ``max_jobs`` jobs already (:func:`at_capacity`).
    """
    return over_budget or at_capacity or load >= threshold


class MovingAverage:
    """The mean of the last ``window`` values (the SDK averages 5 CPU samples of 0.5 s).

    Before the first value the average is 0.0; until ``window`` values arrived it is the mean
    of those there are.
    """

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self._values: deque[float] = deque(maxlen=window)

    @property
    def window(self) -> int:
        """How many values are averaged."""
        return self._values.maxlen or 1

    @property
    def value(self) -> float:
        """The current average."""
        if not self._values:
            return 0.0
        return sum(self._values) / len(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def add(self, value: float) -> float:
        """Add a value and return the new average."""
        self._values.append(value)
        return self.value
