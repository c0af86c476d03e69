"""Choosing a worker for a job: the affinity gate, the weighted pick and the time budget.

Pure: the caller passes loads, the random draw and the current time (reference §2.3-§2.4).

* **Gate** (psrpc affinity, stage A): the sum over AVAILABLE workers of the job's pool of
  ``max(0, target_load - load)`` must be strictly positive, or nobody is asked at all. Loads
  travel as float32 and Go computes in float32, so ``target_load`` is rounded to float32 first:
  a worker reporting exactly ``0.7`` then closes the gate as on the real server.
* **Pick** (stage B): among AVAILABLE workers not tried yet for this job, one at random with
  weight ``max(0, 1 - load)``; none when the weights sum to 0.
* **Budget**: all attempts for one job share one deadline (``dispatch_timeout`` after the
  request); each attempt waits ``min(assign_timeout, remaining)``.
* **Verdict**: ``terminate`` wins over ``available``; ``available=false`` means try the next
  worker.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from lksup.devserver.model import WorkerStatus

#: ``AssignJobTimeout``: the longest one worker is waited for.
ASSIGN_TIMEOUT = 10.0


def float32(value: float) -> float:
    """``value`` rounded to the nearest IEEE-754 single, as Go's ``float32`` holds it."""
    result: float = struct.unpack("f", struct.pack("f", value))[0]
    return result


@dataclass(frozen=True)
class Candidate:
    """One worker of the job's pool, as the selection sees it."""

    worker_id: str
    status: int
    load: float


def affinity(pool: Iterable[Candidate], target_load: float) -> float:
    """The node's claim strength for a job of this pool; 0 means "no servers available"."""
    target = float32(target_load)
    return sum(
        max(0.0, target - float32(c.load)) for c in pool if c.status == WorkerStatus.AVAILABLE
    )


def pick(pool: Sequence[Candidate], tried: Collection[str], draw: float) -> str | None:
    """The worker to offer the job to next, or None when no one with capacity is left.

    Args:
        pool: the job's pool, in a stable order.
        tried: IDs of workers already offered this job.
        draw: a uniform random number in ``[0, 1)``.
    """
    weighted = [
        (c.worker_id, max(0.0, 1.0 - float32(c.load)))
        for c in pool
        if c.status == WorkerStatus.AVAILABLE and c.worker_id not in tried
    ]
    weighted = [(worker_id, weight) for worker_id, weight in weighted if weight > 0]
    total = sum(weight for _, weight in weighted)
    if total <= 0:
        return None
    threshold = draw * total
    running = 0.0
    for worker_id, weight in weighted:
        running += weight
        if running > threshold:
            return worker_id
    return weighted[-1][0]  # rounding fall-through


@dataclass(frozen=True)
class Budget:
    """The shared deadline of all attempts for one job (``anyio.current_time()`` scale)."""

    deadline: float
    assign_timeout: float = ASSIGN_TIMEOUT

    @classmethod
    def starting(cls, now: float, dispatch_timeout: float) -> Budget:
        """The budget of a job requested at ``now``."""
        return cls(deadline=now + dispatch_timeout)

    def wait(self, now: float) -> float:
        """How long the next attempt may wait for an answer; ``<= 0`` means the budget is spent."""
        return min(self.assign_timeout, self.deadline - now)


class Verdict(enum.Enum):
    """What an AvailabilityResponse means for the job."""

    ACCEPTED = "accepted"
    TERMINATED = "terminated"
    RETRY = "retry"


def verdict(*, available: bool, terminate: bool) -> Verdict:
    """``terminate`` is checked first (SUCCESS, no retry); then ``available``."""
    if terminate:
        return Verdict.TERMINATED
    return Verdict.ACCEPTED if available else Verdict.RETRY


def token_attributes(attributes: Mapping[str, str], agent_name: str) -> dict[str, str]:
    """The job token's attributes: the worker's, with ``lk.agent_name`` overwritten."""
    return {**attributes, "lk.agent_name": agent_name}
