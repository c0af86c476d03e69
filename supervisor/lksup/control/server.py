"""The daemon's control socket: HTTP/1.1 (h11) over a Unix socket, served on anyio.

``ControlServer.run`` owns the socket file from bind to exit. Routing, body models and the
response documents live in ``lksup.control.api``; this module only moves bytes, enforces the
limits and maps failures to JSON errors.

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
* **Nothing a client does stops the server.** Each connection is its own task; malformed
  HTTP is answered 400 and the connection closed; reading a request and running its handler
  are each bounded by ``request_timeout``; bodies are bounded by ``max_body``; an unexpected
  exception in a handler is logged and answered 500. A slow handler (a drain) only holds its
  own connection, so ``status`` answers. At most ``max_connections`` clients are served at
  once: a flood of idle connections waits in the kernel's backlog (and is closed after
  ``request_timeout``) instead of taking the daemon's file descriptors, which its job
  processes and monitors need.
* Errors are always ``{"code", "message"}`` JSON with a non-2xx status.

Sockets are read and written with ``anyio.wait_readable``/``wait_writable`` rather than
anyio's socket streams: on asyncio, ``UNIXSocketStream`` and ``UNIXSocketListener`` resolve
their wait futures from ``add_reader`` callbacks without checking whether the waiting task
was cancelled meanwhile, so a client leaving while the server is cancelled raises
``InvalidStateError`` in the event loop (the family of agronholm/anyio#1267), and the
transport-based streams abort unsent data on close. The two waits are race-free on both
backends.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import platform
import socket
import stat
import struct
from collections.abc import Collection, Mapping
from http import HTTPStatus
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc
import anyio.lowlevel
import h11

from lksup import __version__
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
#: Largest request head (request line and headers) h11 buffers.
MAX_HEAD: Final = 16 * 1024
#: An oversized body is read and thrown away, up to this many times ``max_body``, so that the
#: client, still writing it, gets to read the 413 instead of a broken pipe.
_DISCARD_FACTOR: Final = 8
_STALE_CONNECT_TIMEOUT: Final = 2.0
_BACKLOG: Final = 128
#: Clients served at once (a CLI call holds one; ``--watch`` and ``--wait`` hold theirs).
MAX_CONNECTIONS: Final = 64
#: sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_PATH: Final = 107
_LINGER_TIMEOUT: Final = 2.0
#: accept(2) failures that mean "out of resources for now", not "the listener is broken".
_ACCEPT_RETRY = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_RETRY_DELAY: Final = 0.1
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


class _TooLarge(Exception):
    pass


class _Connection:
    """One accepted connection: a non-blocking socket and the two waits it needs."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def receive(self) -> bytes:
        """The next bytes from the peer; ``b""`` once it has closed its side."""
        await anyio.lowlevel.checkpoint()
        while True:
            try:
                return self.sock.recv(65536)
            except BlockingIOError:
                await anyio.wait_readable(self.sock)

    async def send(self, data: bytes) -> None:
        """Send all of ``data``."""
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                await anyio.wait_writable(self.sock)
            else:
                view = view[sent:]

    async def linger(self, limit: int) -> None:
        """Close gracefully: end our side, then read and drop what the peer still sends.

        Closing a Unix socket with unread data resets the connection, and the peer may then
        lose the response it has not read yet (a 400 for a request it is still sending).
        Bounded by ``limit`` bytes and ``_LINGER_TIMEOUT`` seconds.
        """
        self.sock.shutdown(socket.SHUT_WR)
        with anyio.move_on_after(_LINGER_TIMEOUT):
            while limit > 0:
                data = await self.receive()
                if not data:
                    return
                limit -= len(data)


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
        self._slots = anyio.Semaphore(max_connections)
        self.app = app
        self.max_body = max_body
        self.request_timeout = request_timeout
        self.allowed_uids = (
            frozenset({os.geteuid(), 0}) if allowed_uids is None else frozenset(allowed_uids)
        )
        self.version = version

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
                async with anyio.create_task_group() as tg:
                    task_status.started(self.path)
                    while True:
                        await self._slots.acquire()  # released when the connection ends
                        sock = await self._accept(listener)
                        if sock is None:
                            self._slots.release()
                        else:
                            tg.start_soon(self._connection, _Connection(sock))
            finally:
                self._remove_socket(inode)

    async def _accept(self, listener: socket.socket) -> socket.socket | None:
        """One accepted connection, or None after waiting (then call again)."""
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            await anyio.wait_readable(listener)
            return None
        except OSError as exc:
            if exc.errno not in _ACCEPT_RETRY:
                raise
            _log.warning("Control socket accept failed: %s; retrying.", exc)
            await anyio.sleep(_ACCEPT_RETRY_DELAY)
            return None
        await anyio.lowlevel.checkpoint()
        sock.setblocking(False)
        return sock

    def _remove_socket(self, inode: int) -> None:
        try:
            if os.stat(self.path).st_ino == inode:
                self.path.unlink()
        except FileNotFoundError:
            pass

    async def _connection(self, stream: _Connection) -> None:
        with stream.sock:
            try:
                await self._serve(stream)
                await stream.linger(self.max_body * _DISCARD_FACTOR)
            except OSError as exc:
                _log.debug("Control connection lost: %s.", exc)
            except Exception:
                _log.exception("Control connection failed.")
            finally:
                self._slots.release()

    async def _serve(self, stream: _Connection) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        uid = peer_uid(stream.sock)
        while True:
            request: tuple[h11.Request, bytes] | None = None
            with anyio.move_on_after(self.request_timeout) as scope:
                try:
                    request = await self._read(conn, stream)
                except _TooLarge:
                    error = ControlError(
                        "too_large", f"request body exceeds {self.max_body} bytes", 413
                    )
                    await self._send(conn, stream, error.status, error.to_body(), close=True)
                    return
                except h11.RemoteProtocolError as exc:
                    if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        body = {"code": "bad_request", "message": f"malformed HTTP request: {exc}"}
                        await self._send(conn, stream, exc.error_status_hint, body, close=True)
                    return
            if scope.cancelled_caught:
                started = conn.their_state is not h11.IDLE or conn.trailing_data[0]
                if started and conn.our_state is h11.IDLE:
                    body = {"code": "timeout", "message": "request not received in time"}
                    await self._send(conn, stream, 408, body, close=True)
                return
            if request is None:
                return
            head, payload = request
            if uid not in self.allowed_uids:
                _log.warning("Control request refused: peer uid %d is not allowed.", uid)
                body = {
                    "code": "forbidden",
                    "message": f"uid {uid} may not use this control socket",
                }
                await self._send(conn, stream, 403, body, close=True)
                return
            status, document_, headers = await self._answer(head, payload)
            if not await self._send(conn, stream, status, document_, headers=headers):
                return

    async def _read(
        self, conn: h11.Connection, stream: _Connection
    ) -> tuple[h11.Request, bytes] | None:
        """Read one request and its body; None when the client closed the connection."""
        event = await self._next_event(conn, stream)
        if not isinstance(event, h11.Request):
            return None
        body = bytearray()
        received = 0
        while True:
            part = await self._next_event(conn, stream)
            if isinstance(part, h11.Data):
                received += len(part.data)
                if received > self.max_body * _DISCARD_FACTOR:
                    raise _TooLarge
                if received <= self.max_body:
                    body += part.data
            elif isinstance(part, h11.EndOfMessage):
                if received > self.max_body:
                    raise _TooLarge
                return event, bytes(body)
            else:
                return None

    async def _next_event(self, conn: h11.Connection, stream: _Connection) -> object:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await stream.receive())

    async def _answer(
        self, head: h11.Request, payload: bytes
    ) -> tuple[int, Mapping[str, Any], list[tuple[str, str]]]:
        method = head.method.decode("ascii", "replace")
        target = head.target.decode("ascii", "replace")
        try:
            match = resolve(method, target)
            _check_content_type(head, payload, match)
            body = parse_body(match.route, payload)
            with anyio.fail_after(self.request_timeout):
                if match.route.template == "/v1/health":
                    _, protocol, python = runtime_versions()
                    health = Health(
                        pid=os.getpid(),
                        version=self.version,
                        livekit_protocol=protocol,
                        python=python,
                    )
                    result = document("Health", health)
                else:
                    result = await call(self.app, match, body)
            return 200, result, []
        except MethodNotAllowed as exc:
            return exc.status, exc.to_body(), [("allow", ", ".join(exc.allowed))]
        except ControlError as exc:
            return exc.status, exc.to_body(), []
        except TimeoutError:
            message = f"{method} {target} did not answer within {self.request_timeout:g} s"
            _log.warning("Control request %s %s timed out.", method, target)
            return 503, {"code": "timeout", "message": message}, []
        except Exception as exc:
            _log.exception("Control request %s %s failed.", method, target)
            message = f"internal error: {type(exc).__name__}: {exc}"
            return 500, {"code": "internal", "message": message}, []

    async def _send(
        self,
        conn: h11.Connection,
        stream: _Connection,
        status: int,
        body: Mapping[str, Any],
        *,
        close: bool = False,
        headers: list[tuple[str, str]] | None = None,
    ) -> bool:
        """Send one JSON response; True when the connection can serve another request."""
        data = json.dumps(body, separators=(",", ":")).encode() + b"\n"
        all_headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(data))),
            *(headers or []),
        ]
        if close:
            all_headers.append(("connection", "close"))
        try:
            phrase = HTTPStatus(status).phrase.encode()
        except ValueError:
            phrase = b""
        out = conn.send(h11.Response(status_code=status, headers=all_headers, reason=phrase))
        out = (out or b"") + (conn.send(h11.Data(data=data)) or b"")
        out = (out or b"") + (conn.send(h11.EndOfMessage()) or b"")
        await stream.send(out)
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            return True
        return False


def _check_content_type(head: h11.Request, payload: bytes, match: Match) -> None:
    if match.route.body is None or not payload:
        return
    for name, value in head.headers:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            if media != b"application/json" and not media.endswith(b"+json"):
                raise ControlError(
                    "unsupported_media_type",
                    f"request bodies must be application/json, not {media.decode('latin-1')}",
                    415,
                )
