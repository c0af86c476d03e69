"""Where the control socket lives.

Precedence (supervisor-conventions §2.5): an explicit ``--socket`` value, then
``$LKSUP_SOCKET``, then ``/run/lksup/lksup.sock`` for root, then
``$XDG_RUNTIME_DIR/lksup/lksup.sock``. There is deliberately no ``/tmp`` fallback: a
world-writable directory lets another user pre-create the directory or the socket and
impersonate the daemon. A non-root user without ``XDG_RUNTIME_DIR`` must say where the socket is.

The resolver is pure: the environment and the uid are parameters, so the daemon and the CLI
pass ``os.environ`` and ``os.getuid()`` and tests pass whatever they need. Empty values count
as unset (``LKSUP_SOCKET= lksup status`` does not mean "the current directory").
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lksup.control.errors import SocketPathError

__all__ = ["ENV_VAR", "ROOT_SOCKET", "SOCKET_NAME", "resolve_socket_path"]

#: Environment variable naming the socket (below ``--socket``, above the defaults).
ENV_VAR = "LKSUP_SOCKET"
#: The socket of a daemon run by root.
ROOT_SOCKET = Path("/run/lksup/lksup.sock")
#: The socket's file name inside ``$XDG_RUNTIME_DIR/lksup/``.
SOCKET_NAME = "lksup.sock"


def resolve_socket_path(
    explicit: str | Path | None, *, environ: Mapping[str, str], uid: int
) -> Path:
    """The control socket path for this invocation.

    Args:
        explicit: The ``--socket`` value, or None when the option was not given.
        environ: The process environment (``os.environ``).
        uid: The effective uid (``os.getuid()``); 0 selects ``/run/lksup``.

    Returns:
        The socket path (not checked for existence).

    Raises:
        SocketPathError: Non-root, with neither ``$LKSUP_SOCKET`` nor ``$XDG_RUNTIME_DIR``.
    """
    if explicit is not None and str(explicit):
        return Path(explicit)
    if value := environ.get(ENV_VAR):
        return Path(value)
    if uid == 0:
        return ROOT_SOCKET
    if runtime := environ.get("XDG_RUNTIME_DIR"):
        return Path(runtime) / "lksup" / SOCKET_NAME
    raise SocketPathError(
        "cannot choose a control socket: XDG_RUNTIME_DIR is not set; "
        f"pass --socket PATH or set {ENV_VAR} (there is no /tmp fallback)"
    )
