"""What the shared monitor reports: memory warnings, memory limits, budget crossings.

These are plain frozen values with no I/O, so the pool, the daemon, status and metrics can
import them without pulling in psutil or anyio. The monitor only *reports*: a
:class:`MemoryLimitExceeded` is a request that the pool end the job (``reason`` is the exact
failure text for ``JS_FAILED``); the monitor never signals a process itself, because the stop
sequence and the job's outcome belong to the pool.

Figures are whole MB (MiB), rounded up, so a figure is always above the threshold it crossed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MemoryWarning:
    """A job process uses more memory than its agent's ``job_memory_warn_mb`` (rate-limited)."""

    agent: str
    job_id: str | None
    pid: int
    mb: int
    warn_mb: int


@dataclass(frozen=True, slots=True)
class MemoryLimitExceeded:
    """A job process is above its agent's ``job_memory_limit_mb``; the pool should end its job.

    Reported once per watched process. ``reason`` reads
    ``"memory limit exceeded (N MB > L MB)"``.
    """

    agent: str
    job_id: str | None
    pid: int
    mb: int
    limit_mb: int
    reason: str


@dataclass(frozen=True, slots=True)
class BudgetChanged:
    """The job processes together crossed ``supervisor.memory_budget_mb`` (either way).

    ``over`` true: every agent should report full and decline offers until a later
    ``BudgetChanged(over=False)``. ``budget_mb`` is ``None`` when the budget was removed.
    """

    over: bool
    total_mb: int
    budget_mb: int | None


MonitorEvent = MemoryWarning | MemoryLimitExceeded | BudgetChanged
