"""The daemon's control socket: HTTP/1.1 over a Unix socket, served by ``lksup.httpd``.

``ControlServer.run`` owns the socket file from bind to exit. Routing, body models and the
response documents live in ``lksup.control.api``; the HTTP layer (limits, timeouts, the
connection cap, graceful close) is ``lksup.httpd``; this module binds the socket, checks the
peer and maps failures to JSON errors.

Invariants:

* **Owner only.** The socket's directory is created 0700 and refused when it is writable by
  group or others or owned by another uid (someone else could swap the socket). The socket is
  0600. Every connection's peer uid (``SO_PEERCRED``) must be in ``allowed_uids`` (the
  daemon's euid and root); any other peer gets one 403 and the connection is closed.
* **One daemon per socket.** Before binding, a socket file that accepts a connection means
  another daemon runs: ``AlreadyRunning``. One that refuses it is stale (a daemon that was
  killed) and is removed. The socket is then bound with ``bind(2)``, which fails if the path
  reappeared meanwhile. (``anyio.create_unix_listener`` is not used: it unlinks any socket at
  the path, so two daemons starting at once could steal each other's socket.)
* **The socket file is removed on exit**, but only if it is still the one this server bound
  (same inode): a second daemon's socket is never removed by the first.
* **Nothing a client does stops the server** (``lksup.httpd``): malformed HTTP is answered
  400; reading a request and running its handler are each bounded by ``request_timeout``;
  bodies are bounded by ``max_body``; an unexpected exception in a handler is logged and
  answered 500. A slow handler (a drain) only holds its own connection, so ``status``
  answers. At most ``max_connections`` clients are served at once: a flood of idle
  connections waits in the kernel's backlog instead of taking the daemon's file descriptors,
  which its job processes and monitors need, and while every slot is taken a connection that
  sends nothing is closed after a second, so a real client behind the flood is served.
* Errors are always ``{"code", "message"}`` JSON with a non-2xx status.
"""

from __future__ import annotations

import errno
import logging
import os
import platform
import socket
import stat
import struct
from collections.abc import Collection
from importlib import metadata
from pathlib import Path
from typing import Final

import anyio
import anyio.abc

from lksup import __version__, httpd
from lksup.control.api import ControlApp, Health, Match, call, document, parse_body, resolve
from lksup.control.errors import (
    AlreadyRunning,
    ControlError,
    MethodNotAllowed,
    SocketPathError,
    UnsafeSocketDirectory,
)

__all__ = ["MAX_BODY", "MAX_CONNECTIONS", "ControlServer", "peer_uid", "prepare_directory"]

_log = logging.getLogger(__name__)

#: Default limit of a request body (a normalized fleet is far smaller).
MAX_BODY: Final = 1024 * 1024
_STALE_CONNECT_TIMEOUT: Final = 2.0
_BACKLOG: Final = 128
#: Clients served at once (a CLI call holds one; ``--watch`` and ``--wait`` hold theirs).
MAX_CONNECTIONS: Final = 64
#: sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_PATH: Final = 107
_CREDENTIALS = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}


def prepare_directory(directory: Path) -> None:
    """Create the socket's directory 0700, or check that an existing one is ours alone.

    Raises:
        UnsafeSocketDirectory: It exists and is not a directory, is owned by another uid,
            or is writable by group or others.
    """
    try:
        directory.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    else:
        directory.chmod(0o700)  # mkdir's mode is masked by the umask; be exact
        return
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeSocketDirectory(f"{directory} is not a directory")
    if info.st_uid != os.geteuid():
        raise UnsafeSocketDirectory(
            f"{directory} is owned by uid {info.st_uid}, not by this user ({os.geteuid()})"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeSocketDirectory(
            f"{directory} is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
            "make it 0700 or choose another --socket"
        )


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket (``SO_PEERCRED``)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
    _pid, uid, _gid = _CREDENTIALS.unpack(raw)
    return int(uid)


async def _clear_stale(path: Path) -> None:
    """Remove a stale socket at ``path``; raise if a daemon answers there."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise SocketPathError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with probe:
        probe.setblocking(False)
        try:
            probe.connect(os.fspath(path))
        except ConnectionRefusedError:
            _log.info("Removing the stale control socket %s.", path)
            path.unlink(missing_ok=True)
            return
        except FileNotFoundError:
            return
        except BlockingIOError:
            # The backlog is full: someone listens but does not accept. Not ours to take.
            pass
    raise AlreadyRunning(f"another lksup daemon is running on {path}")


def _bind(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(path))
        path.chmod(0o600)
        sock.listen(_BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise AlreadyRunning(f"another lksup daemon is running on {path}") from None
        raise
    sock.setblocking(False)
    return sock


def runtime_versions() -> tuple[str, str, str]:
    """(lksup, livekit-protocol, Python) versions of this process."""
    try:
        protocol = metadata.version("livekit-protocol")
    except metadata.PackageNotFoundError:
        protocol = "unknown"
    return __version__, protocol, platform.python_version()


class ControlServer:
    """Serves the control API of ``app`` on the Unix socket ``path``.

    Args:
        path: The socket path (``lksup.control.paths.resolve_socket_path``).
        app: The daemon's implementation of the API.
        max_body: Largest request body accepted, in bytes (413 above).
        request_timeout: Seconds allowed to receive one request, and separately to compute
            its response (408 or 503 ``timeout`` past it); an idle keep-alive connection is
            closed after the same time.
        allowed_uids: Peer uids allowed to talk; default the daemon's euid and root.
        version: The version reported by ``/v1/health``.
        max_connections: Clients served at once; the next wait in the backlog.
    """

    def __init__(
        self,
        path: Path,
        app: ControlApp,
        *,
        max_body: int = MAX_BODY,
        request_timeout: float = 10.0,
        allowed_uids: Collection[int] | None = None,
        version: str = __version__,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.path = path
        self.app = app
        self.max_body = max_body
        self.request_timeout = request_timeout
        self.allowed_uids = (
            frozenset({os.geteuid(), 0}) if allowed_uids is None else frozenset(allowed_uids)
        )
        self.version = version
        limits = httpd.Limits(max_body, request_timeout, max_connections)
        self._http = httpd.HttpServer("Control socket", self._answer, limits)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[Path] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind the socket, report ``started(path)``, and serve until cancelled.

        Raises:
            AlreadyRunning: Another daemon answers on the socket.
            UnsafeSocketDirectory: The directory is not safe to listen in.
            SocketPathError: Something other than a socket is at the path, or the path is
                longer than a Unix socket address allows.
        """
        if len(os.fsencode(self.path)) > _MAX_PATH:
            raise SocketPathError(
                f"control socket path is too long for a Unix socket "
                f"({len(os.fsencode(self.path))} bytes, at most {_MAX_PATH}): {self.path}"
            )
        await anyio.to_thread.run_sync(prepare_directory, self.path.parent)
        await _clear_stale(self.path)
        listener = await anyio.to_thread.run_sync(_bind, self.path)
        with listener:
            inode = os.stat(self.path).st_ino
            _log.info("Control socket listening on %s.", self.path)
            try:
                task_status.started(self.path)
                await self._http.serve([listener])
            finally:
                self._remove_socket(inode)

    def _remove_socket(self, inode: int) -> None:
        try:
            if os.stat(self.path).st_ino == inode:
                self.path.unlink()
        except FileNotFoundError:
            pass

    async def _answer(self, request: httpd.Request, connection: httpd.Connection) -> httpd.Reply:
        uid = peer_uid(connection.sock)
        if uid not in self.allowed_uids:
            _log.warning("Control request refused: peer uid %d is not allowed.", uid)
            message = f"uid {uid} may not use this control socket"
            return httpd.json_reply(403, {"code": "forbidden", "message": message}, close=True)
        method, target = request.method, request.target
        try:
            match = resolve(method, target)
            _check_content_type(request, match)
            body = parse_body(match.route, request.body)
            if match.route.template == "/v1/health":
                _, protocol, python = runtime_versions()
                health = Health(
                    pid=os.getpid(), version=self.version, livekit_protocol=protocol, python=python
                )
                return httpd.json_reply(200, document("Health", health))
            return httpd.json_reply(200, await call(self.app, match, body))
        except MethodNotAllowed as exc:
            return httpd.json_reply(
                exc.status, exc.to_body(), headers=(("allow", ", ".join(exc.allowed)),)
            )
        except ControlError as exc:
            return httpd.json_reply(exc.status, exc.to_body())
        except Exception as exc:
            _log.exception("Control request %s %s failed.", method, target)
            message = f"internal error: {type(exc).__name__}: {exc}"
            return httpd.json_error(500, "internal", message)


def _check_content_type(request: httpd.Request, match: Match) -> None:
    if match.route.body is None or not request.body:
        return
    for name, value in request.headers:
        if name == "content-type":
            media = value.split(";", 1)[0].strip().lower()
            if media != "application/json" and not media.endswith("+json"):
                raise ControlError(
                    "unsupported_media_type",
                    f"request bodies must be application/json, not {media}",
                    415,
                )
