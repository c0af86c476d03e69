"""A job that ended, as a pool remembers it for ``status --jobs`` and the events (pure)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ENDED_FOR", "ENDED_KEPT", "EndedJob"]

#: How many ended jobs a pool remembers for ``status --jobs``, and for how long (seconds).
ENDED_KEPT, ENDED_FOR = 20, 600.0


@dataclass(frozen=True)
class EndedJob:
    """A job that ended, as ``status --jobs`` lists it for a while."""

    job_id: str
    room: str
    pid: int | None
    error: str | None
    """None: it succeeded."""
    reason: str
    started_at: float
    """``anyio.current_time()`` seconds (as the ended_at)."""
    ended_at: float
    kind: str | None = None
    """Why it failed, as a class (``JobOutcome.kind``); None when it succeeded."""
    worker_id: str | None = None
    """The worker (registration) that was given the job."""
