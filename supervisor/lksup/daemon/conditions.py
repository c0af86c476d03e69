"""An agent's conditions, Kubernetes style: what is true of it now, why, and since when.

``lksup status -o json`` gives each agent a ``conditions`` list, the shape Kubernetes users
know (``type``, ``status`` "True"/"False", ``reason`` in CamelCase, ``message``,
``lastTransitionTime``), so a script can ask one precise question instead of parsing STATE:

- ``Registered``: the worker connection is registered with the server
  (reasons ``Registered``, ``Connecting``, ``ConnectionFailed``, ``Stopped``);
- ``Ready``: registered and running or full (``is_ready``), what ``/readyz`` and the READY
  column say (``Ready``, ``Draining``, ``NotRegistered``, or the state that keeps a registered
  agent from being ready, e.g. ``Backoff`` while its pool backs off after crashes);
- ``Accepting``: ready and not full, so an offer now would be accepted
  (``BelowThreshold``, ``LoadAboveThreshold``, ``AtMaxJobs``, ``OverMemoryBudget``, ``NotReady``);
- ``PoolWarm``: the idle pool holds its target of warm processes
  (``Warm``, ``Warming``, ``Backoff`` after crashes);
- ``Synced``: the applied configuration is in effect (``Synced``, ``Pending``, ``Override``).

``lastTransitionTime`` moves only when ``status`` changes (not on a new reason or message).
Pure: the caller gives the facts and the wall-clock time; ``ConditionTracker`` remembers the
transitions of one agent across its runtimes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

TYPES = ("Registered", "Ready", "Accepting", "PoolWarm", "Synced")
#: The states in which a registered agent is ready (takes jobs).
READY_STATES = ("running", "full")


def is_ready(state: str, registered: bool) -> bool:
    """The one definition of ready: the READY column, ``/readyz`` and the Ready condition."""
    return registered and state in READY_STATES


FullReason = Literal["", "LoadAboveThreshold", "AtMaxJobs", "OverMemoryBudget"]


@dataclass(frozen=True)
class Facts:
    """What is observed of one agent at one moment."""

    state: str  # the STATE column
    registered: bool
    draining: bool
    full_reason: FullReason  # "" when not full
    full_message: str
    idle: int
    idle_target: int
    pool_failure: str  # non-empty while the pool backs off after crashes
    sync: str  # synced | pending | override
    message: str  # the MESSAGE column

    @property
    def ready(self) -> bool:
        """``is_ready`` of these facts."""
        return is_ready(self.state, self.registered)


@dataclass(frozen=True)
class Condition:
    """One condition, with the wall-clock time (seconds since the epoch) it last changed."""

    type: str
    status: bool
    reason: str
    message: str
    last_transition: float


def evaluate(facts: Facts) -> list[tuple[str, bool, str, str]]:
    """``(type, status, reason, message)`` for every type in ``TYPES``, in that order."""
    if facts.registered:
        registered = (True, "Registered", "")
    elif facts.state in ("failed", "backoff"):
        registered = (False, "ConnectionFailed", facts.message)
    elif facts.state in ("drained", "stopped"):
        registered = (False, "Stopped", facts.message)
    else:
        registered = (False, "Connecting", facts.message)

    if facts.ready:
        ready = (True, "Ready", "")
    elif facts.draining:
        ready = (False, "Draining", "not taking new jobs; running jobs finish")
    elif facts.registered:  # registered, yet its state keeps it from taking jobs
        ready = (False, facts.state.capitalize(), facts.message)
    else:
        ready = (False, "NotRegistered", "")

    if not facts.ready:
        accepting = (False, "NotReady", "")
    elif facts.full_reason:
        accepting = (False, str(facts.full_reason), facts.full_message)
    else:
        accepting = (True, "BelowThreshold", facts.full_message)

    counts = f"{facts.idle}/{facts.idle_target} idle processes"
    if facts.pool_failure:
        warm = (False, "Backoff", facts.pool_failure)
    elif facts.idle >= facts.idle_target:
        warm = (True, "Warm", counts)
    else:
        warm = (False, "Warming", counts)

    if facts.sync == "override":
        synced = (False, "Override", "drained by an operator; `lksup undrain` clears it")
    elif facts.sync == "pending":
        synced = (False, "Pending", "the applied configuration is not registered yet")
    else:
        synced = (True, "Synced", "")

    values = (registered, ready, accepting, warm, synced)
    return [(kind, *value) for kind, value in zip(TYPES, values, strict=True)]


@dataclass
class ConditionTracker:
    """Remembers when each condition of one agent last changed status."""

    _since: dict[str, tuple[bool, float]] = field(default_factory=dict)

    def observe(self, facts: Facts, now: float) -> list[Condition]:
        """The conditions for ``facts`` seen at wall-clock time ``now``."""
        conditions = []
        for kind, status, reason, message in evaluate(facts):
            previous = self._since.get(kind)
            if previous is None or previous[0] != status:
                self._since[kind] = (status, now)
            since = self._since[kind][1]
            conditions.append(Condition(kind, status, reason, message, since))
        return conditions
