"""Group signals and the start of a spawned child: no window in which one reaches it.

A spawned child gets its own session (``start_new_session=True``), so a signal sent to the
supervisor's process group (Ctrl+C in a terminal, ``kill -TERM -PGID``, a container runtime
signalling the group) never reaches it. But CPython's ``_posixsubprocess`` restores the
parent's signal mask and default handlers in the forked child *before* it calls ``setsid()``;
a group signal landing in that window kills the new child (SIGTERM's default action) although
it was never meant for it.

The supervisor therefore spawns with ``GROUP_SIGNALS`` blocked (``blocked_while_spawning``,
around the call that forks). The child inherits the blocked mask through ``exec``, so such a
signal stays pending instead of acting. First thing in the child, ``accept_signals`` takes every
pending group signal: one its parent sent (the supervisor stopping a process still starting) is
raised again once unblocked; one from anyone else reached it only through the old group, and is
dropped. Then the mask is cleared.

The supervisor side uses ``blocked_while_spawning``, the child side ``accept_signals``; both
import nothing but the standard library.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

__all__ = ["GROUP_SIGNALS", "accept_signals", "blocked_while_spawning"]

#: Signals a process group is usually sent (terminal keys, ``kill -SIG -PGID``, stop and reload).
GROUP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT})


@contextlib.contextmanager
def blocked_while_spawning() -> Iterator[None]:
    """Block ``GROUP_SIGNALS`` in the calling thread for the block's duration.

    Wrap the call that forks (on asyncio, ``open_process`` forks in the event loop's thread).
    A signal sent to the supervisor meanwhile waits, or goes to another of its threads; none
    is lost, and the child starts with the signals blocked (see ``accept_signals``). Blocks may
    overlap (two spawns awaiting in one event loop): the mask is restored when the last ends.
    """
    state = _spawning
    depth: int = getattr(state, "depth", 0)
    if depth == 0:
        state.previous = signal.pthread_sigmask(signal.SIG_BLOCK, GROUP_SIGNALS)
    state.depth = depth + 1
    try:
        yield
    finally:
        state.depth -= 1
        if state.depth == 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, state.previous)


#: Per thread: how many ``blocked_while_spawning`` blocks are open, and the mask before the first.
_spawning = threading.local()


def accept_signals() -> list[signal.Signals]:
    """In a spawned child: settle pending group signals, then unblock them.

    Returns the signals dropped (sent by someone other than the parent, so through the group
    before the child had its own session). A signal the parent sent is raised again after the
    unblock, with whatever handling is in place by then.
    """
    parent = os.getppid()
    dropped: list[signal.Signals] = []
    again: list[signal.Signals] = []
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    for sig in sorted(GROUP_SIGNALS & blocked):
        info = signal.sigtimedwait([sig], 0)
        if info is None:
            continue
        (again if info.si_pid == parent else dropped).append(signal.Signals(sig))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, GROUP_SIGNALS)
    for sig in again:
        os.kill(os.getpid(), sig)
    return dropped
