from __future__ import annotations

import socket
import tempfile
from pathlib import Path

from lksup.daemon.notify import Notifier


def test_notifications_reach_the_socket() -> None:
    path = Path(tempfile.mkdtemp(dir="/tmp")) / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        notifier.ready("3 agents registered")
        notifier.extend_timeout(30)
        assert server.recv(1024) == b"READY=1\nSTATUS=3 agents registered"
        assert server.recv(1024) == b"EXTEND_TIMEOUT_USEC=30000000"
    path.unlink()
    path.parent.rmdir()


def test_without_notify_socket_nothing_happens() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.ready("x")  # no error


def test_a_missing_socket_is_ignored() -> None:
    Notifier({"NOTIFY_SOCKET": "/nonexistent/lksup-notify"}).stopping("draining")
