"""Memory policy of job processes: when to warn, when to ask for a kill, when the fleet is full.

The monitor samples the memory of every job process in one sweep (``lksup.monitors.sampling``)
and hands each sample to the policy of the agent that owns the process. This module decides;
it reads no clock and touches no process, so every rule is a table test:

- **Limit.** Above ``limit_mb`` the decision is :class:`Kill`, with the reason text that the
  job is reported failed with: ``"memory limit exceeded (N MB > L MB)"``. It is decided once
  per process: the monitor reports, the pool kills, and later samples of a process already
  reported are quiet.
- **Warning.** Above ``warn_mb`` (and not above the limit) the decision is :class:`Warn`,
  rate-limited as in livekit-agents (``_should_emit_memory_warning``): repeated only after
  ``warn_cooldown`` seconds, or sooner when the process grew by ``regrow_mb`` since the last
  warning, so a leak still surfaces promptly while a process that sits above the threshold
  does not log every sweep. The history is not reset when the process falls back under the
  threshold, so a process oscillating around it warns at most once per cooldown.
- **Budget.** :func:`over_budget` compares the sum over all job processes with the
  supervisor's ``memory_budget_mb`` with hysteresis: over when the total exceeds the budget,
  back under only once it is below ``resume_ratio`` (95 %) of it, so agents do not flap
  between full and available on every sweep.

Units: MB means MiB (2**20 bytes), as in the SDK. Comparisons use exact bytes; the MB figures
in decisions are rounded *up*, so a reported figure is always above the threshold it crossed
("151 MB > 150 MB", never "150 MB > 150 MB"). A threshold of 0 disables that rule.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

MIB: Final = 1024 * 1024

#: Default warning cooldown (seconds) and regrowth (MB) of livekit-agents' memory monitor.
WARN_COOLDOWN: Final = 120.0
REGROW_MB: Final = 50
#: Back under the budget only below this share of it.
RESUME_RATIO: Final = 0.95


def to_mb(nbytes: int) -> int:
    """Whole MB, rounded up (``to_mb(1) == 1``, ``to_mb(MIB) == 1``, ``to_mb(MIB + 1) == 2``)."""
    return -(-nbytes // MIB)


def limit_reason(mb: int, limit_mb: int) -> str:
    """The failure reason of a job killed for its memory (the text the server receives)."""
    return f"memory limit exceeded ({mb} MB > {limit_mb} MB)"


@dataclass(frozen=True, slots=True)
class Nothing:
    """No action for this sample."""


@dataclass(frozen=True, slots=True)
class Warn:
    """Log a warning: the process uses ``mb`` MB, above ``warn_mb``."""

    mb: int
    warn_mb: int


@dataclass(frozen=True, slots=True)
class Kill:
    """The process is above its limit: end its job with ``reason``."""

    mb: int
    limit_mb: int
    reason: str


Decision = Nothing | Warn | Kill
NOTHING: Final = Nothing()


@dataclass(frozen=True, slots=True)
class MemoryState:
    """What the policy remembers about one process between samples.

    Attributes:
        warned_at: when the last warning was decided (``None``: never).
        warned_bytes: the memory at that warning.
        limit_reported: a :class:`Kill` was decided; later samples are quiet.
    """

    warned_at: float | None = None
    warned_bytes: int = 0
    limit_reported: bool = False


@dataclass(frozen=True, slots=True)
class MemoryPolicy:
    """Warning and limit thresholds of one agent's job processes.

    Attributes:
        warn_mb: warn above this many MB (``job_memory_warn_mb``); 0 disables warnings.
        limit_mb: ask for a kill above this many MB (``job_memory_limit_mb``); 0 disables.
        warn_cooldown: seconds before the same process warns again without growing.
        regrow_mb: growth since the last warning that re-warns before the cooldown.
    """

    warn_mb: int
    limit_mb: int
    warn_cooldown: float = WARN_COOLDOWN
    regrow_mb: int = REGROW_MB

    def __post_init__(self) -> None:
        if self.warn_mb < 0 or self.limit_mb < 0 or self.regrow_mb < 0:
            raise ValueError("memory thresholds must be >= 0 (0 disables)")
        if self.warn_cooldown < 0:
            raise ValueError("warn_cooldown must be >= 0")

    @property
    def enabled(self) -> bool:
        """Whether any rule is on (a process with no rule still counts for the budget)."""
        return self.warn_mb > 0 or self.limit_mb > 0

    def evaluate(self, state: MemoryState, nbytes: int, now: float) -> tuple[Decision, MemoryState]:
        """Decide what one new sample of a process calls for.

        Args:
            state: the process's state after the previous sample (``MemoryState()`` at first).
            nbytes: its memory now, in bytes (PSS, else USS, else RSS).
            now: the time of the sample, in seconds on the monitor's clock.

        Returns:
            The decision and the state to pass with the next sample.
        """
        if state.limit_reported:
            return NOTHING, state
        if self.limit_mb and nbytes > self.limit_mb * MIB:
            kill = Kill(to_mb(nbytes), self.limit_mb, limit_reason(to_mb(nbytes), self.limit_mb))
            return kill, replace(state, limit_reported=True)
        if not self.warn_mb or nbytes <= self.warn_mb * MIB:
            return NOTHING, state
        if state.warned_at is not None:
            cooled_down = now - state.warned_at >= self.warn_cooldown
            grew = nbytes - state.warned_bytes >= self.regrow_mb * MIB
            if not (cooled_down or grew):
                return NOTHING, state
        return Warn(to_mb(nbytes), self.warn_mb), replace(state, warned_at=now, warned_bytes=nbytes)


def over_budget(
    total_bytes: int,
    budget_mb: int | None,
    *,
    was_over: bool = False,
    resume_ratio: float = RESUME_RATIO,
) -> bool:
    """Whether the job processes together are over the fleet's memory budget.

    Over when ``total_bytes`` exceeds the budget. Once over, it stays over until the total
    falls below ``resume_ratio`` of the budget (hysteresis), so agents do not flap between
    full and available while the total hovers around the budget.

    Args:
        total_bytes: memory of all job processes together.
        budget_mb: ``supervisor.memory_budget_mb``; ``None`` (or 0) means no budget.
        was_over: the previous answer.
        resume_ratio: share of the budget the total must fall under to be back under.

    Returns:
        The new answer.
    """
    if not budget_mb:
        return False
    budget = budget_mb * MIB
    if was_over:
        return total_bytes >= budget * resume_ratio
    return total_bytes > budget
