"""systemd's notification protocol (sd_notify), when ``NOTIFY_SOCKET`` is set.

READY=1 once every agent is registered, STATUS= summaries, STOPPING=1 when a drain starts and
EXTEND_TIMEOUT_USEC while it runs, so ``TimeoutStopSec`` does not kill a long drain. Without
``NOTIFY_SOCKET`` every call does nothing. A datagram that cannot be sent is dropped: systemd
notifications are advisory and must never stop the supervisor.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping


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
