"""systemd's notification protocol (sd_notify), when ``NOTIFY_SOCKET`` is set.

``Notifier`` sends the datagrams; ``SystemdReporter`` decides what the daemon says and when:
READY=1 once every agent is registered (never by a daemon that is stopping), a STATUS= summary
every ``status_interval`` seconds, STOPPING=1 when a drain starts and EXTEND_TIMEOUT_USEC at
once and again at every status while it runs, so ``TimeoutStopSec`` does not kill a long
drain. Without ``NOTIFY_SOCKET`` every call does nothing. A datagram that cannot be sent is
dropped: systemd notifications are advisory and must never stop the supervisor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Mapping

import anyio

from lksup.daemon.supervisor import Supervisor

log = logging.getLogger("lksup.daemon")

#: How often systemd gets a STATUS= line (and, while draining, more time).
STATUS_INTERVAL = 5.0


class Notifier:
    """Sends ``KEY=VALUE`` lines to systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self.address = address or None

    @property
    def enabled(self) -> bool:
        """Whether a notification socket was given."""
        return self.address is not None

    def send(self, **fields: str | int) -> None:
        """Send one notification (``ready=1`` becomes ``READY=1``)."""
        if self.address is None:
            return
        payload = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
        ):
            sock.sendto(payload.encode(), self.address)

    def ready(self, status: str) -> None:
        """READY=1 with a status line."""
        self.send(ready=1, status=status)

    def status(self, status: str) -> None:
        """A status line."""
        self.send(status=status)

    def stopping(self, status: str) -> None:
        """STOPPING=1."""
        self.send(stopping=1, status=status)

    def extend_timeout(self, seconds: float) -> None:
        """Ask for ``seconds`` more before systemd's stop timeout."""
        self.send(extend_timeout_usec=int(seconds * 1_000_000))


class SystemdReporter:
    """What the daemon tells systemd over its life, through ``notifier``.

    ``draining`` tells whether a coordinated drain began (no READY=1 from then on, and more
    time asked for at every status). ``status_interval`` is how often STATUS= is sent.
    """

    def __init__(
        self,
        notifier: Notifier,
        *,
        draining: Callable[[], bool],
        status_interval: float = STATUS_INTERVAL,
    ) -> None:
        self.notifier = notifier
        self.draining = draining
        self.status_interval = status_interval

    async def announce_ready(self, supervisor: Supervisor) -> None:
        """READY=1 once every agent's *current* worker is registered.

        An agent restarted or replaced before its first registration counts with its new one;
        an agent drained by the operator is not waited for. A daemon that is stopping never
        announces: its drain drains agents that never registered.
        """
        while not self.draining():
            changed = supervisor.change_event()  # registrations are notified; so is a drain
            slots = list(supervisor.slots.values())
            registered = sum(1 for slot in slots if slot.runtime and slot.runtime.registered)
            drained = sum(1 for slot in slots if slot.override_drained)
            if all(
                slot.override_drained or (slot.runtime is not None and slot.runtime.registered)
                for slot in slots
            ):
                self.notifier.ready(f"{registered} agent(s) registered")
                log.info(
                    "every agent is registered (%d%s)",
                    registered,
                    f"; {drained} drained" if drained else "",
                )
                return
            await changed.wait()

    async def report_status(self, supervisor: Supervisor) -> None:
        """STATUS= summaries for systemd; EXTEND_TIMEOUT_USEC again and again while draining."""
        while True:
            await anyio.sleep(self.status_interval)
            states: dict[str, int] = {}
            for slot in supervisor.slots.values():
                state_name = supervisor.agent_state(slot)
                states[state_name] = states.get(state_name, 0) + 1
            summary = ", ".join(f"{count} {name}" for name, count in sorted(states.items()))
            jobs = supervisor.running_jobs()
            self.notifier.status(f"{len(supervisor.slots)} agents ({summary}); {jobs} job(s)")
            if self.draining():
                self.notifier.extend_timeout(self.status_interval * 3)

    def drain_started(self, jobs: int, timeout: float) -> None:
        """STOPPING=1, and ``timeout`` (the drain's, if any) plus a margin before systemd's."""
        self.notifier.stopping(f"draining {jobs} job(s)")
        if timeout:
            self.notifier.extend_timeout(timeout + 30)
