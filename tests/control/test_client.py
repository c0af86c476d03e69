"""Why the control socket gave no answer is decided where the client catches the failure, so
the CLI tells "no daemon runs here" from "a daemon did not answer" without reading messages."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import httpx
import pytest

from lksup.control.client import ControlClient, _unreachable
from lksup.control.errors import DaemonUnreachable, Unreachable

pytestmark = pytest.mark.anyio


async def test_a_missing_socket_is_nothing_listening(socket_path: Path) -> None:
    async with ControlClient(socket_path) as client:
        with pytest.raises(DaemonUnreachable) as info:
            await client.status()
    assert info.value.reason is Unreachable.NOT_LISTENING


async def test_a_stale_socket_is_nothing_listening(socket_path: Path) -> None:
    socket_path.parent.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(socket_path))
    async with ControlClient(socket_path) as client:
        with pytest.raises(DaemonUnreachable) as info:
            await client.health()
    assert info.value.reason is Unreachable.NOT_LISTENING


async def test_a_socket_that_never_answers_is_a_timeout(mute_socket: Path) -> None:
    async with ControlClient(mute_socket, timeout=0.2) as client:
        with pytest.raises(DaemonUnreachable, match="did not answer in time") as info:
            await client.status()
    assert info.value.reason is Unreachable.TIMEOUT


def _connect_error(code: int) -> httpx.ConnectError:
    """A connect failure as httpx raises it: its cause chain ends in the OS error."""
    error = httpx.ConnectError(f"[Errno {code}] ...")
    error.__cause__ = OSError(code, "...")
    return error


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (_connect_error(errno.ENOENT), Unreachable.NOT_LISTENING),
        (_connect_error(errno.ECONNREFUSED), Unreachable.NOT_LISTENING),
        (_connect_error(errno.EACCES), Unreachable.PERMISSION_DENIED),
        (_connect_error(errno.EPERM), Unreachable.PERMISSION_DENIED),
        (_connect_error(errno.ENAMETOOLONG), Unreachable.CONNECT_FAILED),
        (httpx.ConnectError("no errno"), Unreachable.CONNECT_FAILED),
        (httpx.ReadTimeout("slow"), Unreachable.TIMEOUT),
        (httpx.ConnectTimeout("slow"), Unreachable.TIMEOUT),
        (httpx.RemoteProtocolError("gone"), Unreachable.DISCONNECTED),
        (httpx.ReadError("reset"), Unreachable.DISCONNECTED),
    ],
)
def test_the_reason_follows_the_failure(error: httpx.TransportError, reason: Unreachable) -> None:
    assert _unreachable(Path("/run/lksup.sock"), error).reason is reason


def test_permission_denied_says_who_may_use_the_socket() -> None:
    found = _unreachable(Path("/run/lksup.sock"), _connect_error(errno.EACCES))
    assert str(found) == (
        "permission denied on /run/lksup.sock: only the daemon's user and root may use it"
    )
