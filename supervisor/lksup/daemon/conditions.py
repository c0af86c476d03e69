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
What each condition says is decided by ``daemon.status.evaluate`` (pure); ``ConditionTracker``
remembers the transitions of one agent across its runtimes, given the wall-clock time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lksup.daemon.status import Facts, evaluate


@dataclass(frozen=True)
class Condition:
    """One condition, with the wall-clock time (seconds since the epoch) it last changed."""

    type: str
    status: bool
    reason: str
    message: str
    last_transition: float


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
