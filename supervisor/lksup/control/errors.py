"""The control plane's exceptions, all under ``lksup.errors.LksupError``.

::

    LksupError
    +-- ControlError         a request failed; carries the wire error ``{code, message}`` and the
    |   |                    HTTP status. Raised by ``ControlApp`` methods (the server answers
    |   |                    with it) and by ``ControlClient`` (the daemon answered with it).
    |   +-- MethodNotAllowed the path exists but not for this method (405, ``Allow`` header)
    +-- DaemonUnreachable    nothing answers on the control socket (the CLI exits 4); its
    |                        ``reason`` (``Unreachable``) tells a missing daemon from a slow one
    +-- SocketPathError      no socket path can be chosen (non-root without XDG_RUNTIME_DIR)
    +-- UnsafeSocketDirectory the socket's directory is not ours alone (the daemon refuses to
    |                        start rather than listen where others could replace the socket)
    +-- AlreadyRunning       another daemon answers on the socket (the daemon refuses to start)

This module is pure: no I/O, so both the server and the client (and the CLI) share it.
"""

from __future__ import annotations

import enum

from lksup.errors import LksupError

__all__ = [
    "AlreadyRunning",
    "ControlError",
    "DaemonUnreachable",
    "MethodNotAllowed",
    "SocketPathError",
    "Unreachable",
    "UnsafeSocketDirectory",
]


class ControlError(LksupError):
    """A control request failed with a stable ``code`` (``not_found``, ``invalid``, ...).

    Args:
        code: Machine-readable error code, ``snake_case``.
        message: One human sentence; shown by the CLI as is.
        status: The HTTP status the server answers with.
    """

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def to_body(self) -> dict[str, str]:
        """The wire form: ``{"code": ..., "message": ...}``."""
        return {"code": self.code, "message": self.message}

    def __repr__(self) -> str:
        return f"ControlError({self.code!r}, {self.message!r}, {self.status})"


class MethodNotAllowed(ControlError):
    """The path exists, but not for this method; ``allowed`` lists the methods it takes."""

    def __init__(self, method: str, path: str, allowed: tuple[str, ...]) -> None:
        super().__init__(
            "method_not_allowed",
            f"{method} is not allowed on {path} (use {', '.join(allowed)})",
            405,
        )
        self.allowed = allowed


class Unreachable(enum.Enum):
    """Why the control socket gave no answer, decided where the failure is caught."""

    NOT_LISTENING = "not_listening"
    """No socket file, or nothing accepts on it (connection refused): no daemon runs there."""
    PERMISSION_DENIED = "permission_denied"
    """The socket exists but this user may not connect to it."""
    CONNECT_FAILED = "connect_failed"
    """Connecting failed for another reason."""
    TIMEOUT = "timeout"
    """A daemon took the connection but did not answer in time."""
    DISCONNECTED = "disconnected"
    """The connection was lost in the middle of a request."""


class DaemonUnreachable(LksupError):
    """Nothing answers on the control socket; ``reason`` says why (``Unreachable``).

    Args:
        message: One human sentence naming the socket.
        reason: Why: only ``NOT_LISTENING`` means that no daemon runs on the socket.
    """

    def __init__(self, message: str, reason: Unreachable) -> None:
        super().__init__(message)
        self.reason = reason


class SocketPathError(LksupError):
    """No control socket path can be chosen for this user."""


class UnsafeSocketDirectory(LksupError):
    """The socket's directory is writable by others or owned by another user."""


class AlreadyRunning(LksupError):
    """Another lksup daemon answers on the control socket."""
