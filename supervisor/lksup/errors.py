"""The one exception tree of lksup.

::

    LksupError                 base of everything lksup raises on purpose
    +-- FleetError             a fleet file (or its template, values or secrets) is invalid;
    |                          carries every Diagnostic found, each with file:line:col
    +-- SecretError            a secret reference cannot be resolved (the message never
    |                          contains a secret's value)
    +-- TransportError         a WebSocket could not be opened or broke (retryable;
    |   |                      lksup.transport.websocket)
    |   +-- HandshakeError     the server refused the upgrade (HTTP status, e.g. 401)
    |   +-- ConnectionClosed   the WebSocket closed (code; 1006 when the peer vanished)
    +-- DispatchError          a dispatch API call failed (lksup.transport.dispatch)
    +-- DevServerError         the dev server refused a request (lksup.devserver.model)
    |   +-- NotFound           unknown room or dispatch (Twirp not_found)
    |   +-- InvalidArgument    malformed request (Twirp invalid_argument)
    +-- ControlError           a control request failed: code, message, HTTP status
    |                          (lksup.control.errors; MethodNotAllowed is one)
    +-- DaemonUnreachable      no supervisor answers on the control socket (CLI exit 4)
    +-- SocketPathError        no control socket path can be chosen
    +-- UnsafeSocketDirectory  the socket's directory is writable by others, or not ours
    +-- AlreadyRunning         another supervisor answers on the control socket

Rules: local misuse raises; remote misbehaviour (bad frames, protocol violations) is recorded
as an event and recovered from; failures of one job or one agent are contained and reported,
never allowed to stop the others.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Severity(enum.Enum):
    """How bad a diagnostic is: errors make a fleet invalid, warnings do not (unless strict)."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One finding about a fleet file, located at a 1-based line and column.

    ``line`` and ``col`` are 0 when the finding has no position (a whole-file problem).
    """

    file: str
    line: int
    col: int
    message: str
    severity: Severity = Severity.ERROR

    def format(self) -> str:
        """``file:line:col: message``; warnings carry a ``warning:`` prefix before the message."""
        where = f"{self.file}:{self.line}:{self.col}" if self.line else self.file
        prefix = "warning: " if self.severity is Severity.WARNING else ""
        return f"{where}: {prefix}{self.message}"

    def as_error(self) -> Diagnostic:
        """The same finding promoted to an error (``--strict``)."""
        return Diagnostic(self.file, self.line, self.col, self.message, Severity.ERROR)


class LksupError(Exception):
    """Base class of every error lksup raises on purpose."""


class FleetError(LksupError):
    """A fleet file is invalid. ``diagnostics`` holds every error found, sorted by position."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = sorted(set(diagnostics), key=lambda d: (d.file, d.line, d.col))
        super().__init__("\n".join(d.format() for d in self.diagnostics))


class SecretError(LksupError):
    """A secret reference cannot be resolved. The message names the reference, never a value."""
