"""Reconnect delays: exponential with jitter and a cap. Pure; the caller supplies randomness."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """``delay(n) = min(cap, initial * factor**n) * (1 - jitter * r)`` for r in [0, 1).

    Attempt 0 is the first reconnect after a connection that had registered: about a second,
    so a fleet of workers whose server restarted does not reconnect all in the same instant.
    """

    initial_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 15.0
    jitter: float = 0.5

    def delay(self, attempt: int, rand: float) -> float:
        """The delay before reconnect attempt ``attempt`` (0-based), with ``rand`` in [0, 1)."""
        base = min(self.max_delay, self.initial_delay * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * min(max(rand, 0.0), 1.0))
