"""The only code that touches the daemon's signals: each one received becomes an intent.

The receiver is opened once, for every signal in ``intents.SIGNALS``, and hands each signal's
intent (``intents.intent_for`` in the phase the daemon is in at that moment) to the daemon,
one at a time and in order: a handler that awaits (a forced stop) holds the next signal until
it returns, as the signal loop always did.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc

from lksup.daemon.intents import SIGNALS, Intent, Phase, intent_for

#: What the daemon does with an intent; the second argument names the signal ("SIGHUP").
IntentHandler = Callable[[Intent, str], Awaitable[None]]


async def receive(
    handle: IntentHandler,
    phase: Callable[[], Phase],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Turn every signal received into ``handle(intent, name)``, forever.

    ``phase`` is asked at each signal. Started (``task_status``) once the handlers are
    installed, so a signal sent after that is never the default action (death).
    """
    wanted = [signal.Signals[name] for name in SIGNALS]
    with anyio.open_signal_receiver(*wanted) as signals:
        task_status.started()
        async for number in signals:
            name = signal.Signals(number).name
            await handle(intent_for(name, phase()), name)
