"""What a signal asks of the daemon, given the phase it is in: one table, no I/O.

``intent_for(signal, phase)`` is the whole policy; ``daemon.signals`` receives the signals and
``daemon.main`` carries the intents out. Signals are named (``"SIGTERM"``), so this module
needs no ``signal`` import and is tested without one.

| signal           | running        | draining      |
|------------------|----------------|---------------|
| SIGTERM, SIGINT  | DRAIN          | STOP_NOW      |
| SIGQUIT          | STOP_NOW       | STOP_NOW      |
| SIGHUP           | REAPPLY        | REAPPLY       |
| SIGUSR1          | DUMP_STACKS    | DUMP_STACKS   |

Invariants (property-tested): the table is total over ``SIGNALS`` x ``Phase``; a stop signal
never leads back to running work (a second one while draining forces the stop); SIGHUP and
SIGUSR1 never stop anything. A SIGHUP while draining is still a REAPPLY: the re-apply itself
says that it is ignored while shutting down (``daemon.reapply``). Every stopping intent first
cancels a re-apply in progress, so a SIGHUP's checks never hold up a stop.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class Phase(enum.Enum):
    """Where the daemon is in its life, as far as signals are concerned."""

    RUNNING = "running"
    DRAINING = "draining"  # a coordinated drain began (first SIGTERM or SIGINT)


class Intent(enum.Enum):
    """What the daemon does about a signal."""

    DRAIN = "drain"
    """Drain every agent at once against ``supervisor.drain_timeout``, then stop."""
    STOP_NOW = "stop-now"
    """The stop sequence on every job at once; exit 1."""
    REAPPLY = "reapply"
    """Re-apply the last applied fleet file (``daemon.reapply``)."""
    DUMP_STACKS = "dump-stacks"
    """Every task's await chain and every thread's stack to the log (``daemon.stacks``)."""

    @property
    def stops(self) -> bool:
        """Whether it ends the daemon (and so cancels a re-apply in progress)."""
        return self in (Intent.DRAIN, Intent.STOP_NOW)


#: The signals the daemon handles, in the order they are documented.
SIGNALS = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1")

TABLE: Mapping[tuple[str, Phase], Intent] = {
    ("SIGTERM", Phase.RUNNING): Intent.DRAIN,
    ("SIGTERM", Phase.DRAINING): Intent.STOP_NOW,
    ("SIGINT", Phase.RUNNING): Intent.DRAIN,
    ("SIGINT", Phase.DRAINING): Intent.STOP_NOW,
    ("SIGQUIT", Phase.RUNNING): Intent.STOP_NOW,
    ("SIGQUIT", Phase.DRAINING): Intent.STOP_NOW,
    ("SIGHUP", Phase.RUNNING): Intent.REAPPLY,
    ("SIGHUP", Phase.DRAINING): Intent.REAPPLY,
    ("SIGUSR1", Phase.RUNNING): Intent.DUMP_STACKS,
    ("SIGUSR1", Phase.DRAINING): Intent.DUMP_STACKS,
}


def intent_for(signal: str, phase: Phase) -> Intent:
    """The intent of ``signal`` (a name such as ``"SIGTERM"``) in ``phase``.

    Raises:
        KeyError: a signal the daemon does not handle (not in ``SIGNALS``).
    """
    return TABLE[signal, phase]


def phase_after(intent: Intent, phase: Phase) -> Phase:
    """The phase once ``intent`` was acted on: a drain begins; nothing else changes it."""
    return Phase.DRAINING if intent is Intent.DRAIN else phase
