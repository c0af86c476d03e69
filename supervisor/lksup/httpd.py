"""One HTTP/1.1 layer (h11 over raw non-blocking sockets, on anyio) for lksup's three servers.

The control socket (``lksup.control.server``), the health listener (``lksup.daemon.health``)
and the dev server (``lksup.devserver.http``, which adds WebSocket upgrades) differ in their
routes, their limits and the shape of their error bodies. Everything else lives here:
accepting, reading a request within limits, answering it, closing gracefully. ``HttpServer``
is the whole server; an ``Answer`` turns a ``Request`` into a ``Reply`` or takes the
connection over (a WebSocket).

Invariants:

* **Nothing a client does stops the server.** Each connection is its own task, and an
  exception in it ends that connection only. accept(2) failures that mean "out of resources
  for now" (EMFILE, ENFILE, ENOBUFS, ENOMEM) are logged and retried, never raised.
* **Limits.** A request head is at most ``MAX_HEAD`` bytes. A body above ``max_body`` is
  answered 413, after reading and dropping it up to ``DISCARD_FACTOR`` times the limit, so a
  client still writing it reads the 413 instead of a broken pipe. Malformed HTTP is answered
  with h11's status hint (400, 431). Every error answer closes the connection.
* **Timeouts** (``request_timeout``, optional). Receiving one request, and separately
  answering it (503 past it), are each bounded; a request begun and not finished in time is
  answered 408; a connection idle that long is closed without an answer.
* **A cap, and shedding under it** (``max_connections``, optional). At most that many
  connections are served at once; the next wait in the kernel's backlog, so a flood of idle
  connections cannot take the descriptors the daemon needs. While every slot is taken, a
  connection that has not sent a byte yet is closed after ``idle_grace`` instead of the
  request timeout (as Apache's mod_reqtimeout and nginx do under pressure), so a real client
  behind a flood is served within seconds, not after rounds of request timeouts. A
  connection that has sent a request is never shed.
* **Graceful close.** A connection we wrote to is closed by ending our side and reading
  what the peer still sends (bounded in bytes and time): closing a socket with unread data
  resets it, and the peer may lose the response it has not read yet. A connection we never
  wrote to is closed at once, so shedding frees its slot at once.

Sockets are read and written with ``anyio.wait_readable``/``wait_writable`` rather than
anyio's socket streams: on asyncio, those resolve their wait futures from ``add_reader``
callbacks without checking whether the waiting task was cancelled meanwhile, so a client
leaving while the server is cancelled raised ``InvalidStateError`` in the event loop (the
family of agronholm/anyio#1267), and the transport-based streams abort unsent data on close.
The two waits are race-free on both backends.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import socket
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, TypeAlias

import anyio
import anyio.abc
import anyio.lowlevel
import h11

__all__ = [
    "MAX_HEAD",
    "Answer",
    "Connection",
    "ErrorReply",
    "HttpConnection",
    "HttpServer",
    "Limits",
    "Reply",
    "Request",
    "Takeover",
    "json_error",
    "json_reply",
    "listening_sockets",
]

_log = logging.getLogger(__name__)

#: Largest request head (request line and headers) h11 buffers.
MAX_HEAD: Final = 16 * 1024
#: An oversized body is read and thrown away up to this many times ``max_body``.
DISCARD_FACTOR: Final = 8
_LINGER_TIMEOUT: Final = 2.0
#: accept(2) failures that mean "out of resources for now", not "the listener is broken".
_ACCEPT_RETRY = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_RETRY_DELAY: Final = 0.1
#: How often, at most, shedding is logged (a flood would otherwise log every second).
_SHED_LOG_INTERVAL: Final = 60.0


@dataclass(frozen=True)
class Limits:
    """What one server allows a client (see the module docstring).

    Attributes:
        max_body: Largest request body, in bytes (413 above).
        request_timeout: Seconds to receive one request, and again to answer it; None: no
            bound (nor is an idle connection closed).
        max_connections: Connections served at once; None: no cap (and no shedding).
        idle_grace: Seconds a new connection has to send its first byte while every slot is
            taken.
    """

    max_body: int
    request_timeout: float | None = None
    max_connections: int | None = None
    idle_grace: float = 1.0


@dataclass(frozen=True)
class Request:
    """One HTTP request; header names are lower case, names and values latin-1."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of header ``name``, or None."""
        name = name.lower()
        return next((value for key, value in self.headers if key == name), None)

    def header_tokens(self, name: str) -> list[str]:
        """The comma-separated tokens of every ``name`` header, lower-cased."""
        name = name.lower()
        values = (value for key, value in self.headers if key == name)
        return [t.strip().lower() for value in values for t in value.split(",") if t.strip()]


@dataclass(frozen=True)
class Reply:
    """A complete HTTP response."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    close: bool = False
    headers: tuple[tuple[str, str], ...] = ()


def json_reply(
    status: int,
    document: Mapping[str, Any],
    *,
    close: bool = False,
    headers: tuple[tuple[str, str], ...] = (),
) -> Reply:
    """A compact JSON response, one line."""
    body = json.dumps(document, separators=(",", ":")).encode() + b"\n"
    return Reply(status, body, "application/json", close, headers)


def json_error(status: int, code: str, message: str) -> Reply:
    """The ``{"code", "message"}`` JSON error body of lksup's own APIs."""
    return json_reply(status, {"code": code, "message": message})


class Connection:
    """One accepted connection: a non-blocking socket and the two waits it needs."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent = False

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
        self.sent = True
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                await anyio.wait_writable(self.sock)
            else:
                view = view[sent:]

    def send_eof(self) -> None:
        """End our side of the connection (the peer reads EOF)."""
        self.sock.shutdown(socket.SHUT_WR)

    async def linger(self, limit: int) -> None:
        """End our side, then read and drop what the peer still sends (bounded).

        At most ``limit`` bytes and ``_LINGER_TIMEOUT`` seconds.
        """
        self.send_eof()
        with anyio.move_on_after(_LINGER_TIMEOUT):
            while limit > 0:
                data = await self.receive()
                if not data:
                    return
                limit -= len(data)


class _TooLarge(Exception):
    pass


class _Shed(Exception):
    pass


class _Slots:
    """The connection cap, and the fresh connections to shed while it is reached."""

    def __init__(self, name: str, limits: Limits) -> None:
        self._name = name
        self._limit = limits.max_connections
        self._grace = limits.idle_grace
        self._free = anyio.Semaphore(self._limit or 1)
        self._blocked = 0  # accept loops waiting for a free slot: every slot is taken
        self._fresh: set[anyio.CancelScope] = set()
        self._logged = -math.inf

    async def acquire(self) -> None:
        if self._limit is None:
            return
        if self._free.value == 0:
            self._blocked += 1
            try:
                self._shed(self._fresh)
                await self._free.acquire()
            finally:
                self._blocked -= 1
        else:
            await self._free.acquire()

    def release(self) -> None:
        if self._limit is not None:
            self._free.release()

    @contextmanager
    def first_bytes(self) -> Iterator[anyio.CancelScope]:
        """A scope for waiting for a connection's first bytes.

        It is cancelled ``idle_grace`` after every slot is taken (or after it starts, when
        they are taken already).
        """
        with anyio.CancelScope() as scope:
            self._fresh.add(scope)
            try:
                if self._blocked:
                    self._shed([scope])
                yield scope
            finally:
                self._fresh.discard(scope)

    def _shed(self, scopes: Collection[anyio.CancelScope]) -> None:
        now = anyio.current_time()
        if scopes and now - self._logged >= _SHED_LOG_INTERVAL:
            self._logged = now
            _log.warning(
                "%s: all %d connection slots are taken; connections that send nothing "
                "within %g s are closed.",
                self._name,
                self._limit,
                self._grace,
            )
        for scope in scopes:
            scope.deadline = min(scope.deadline, now + self._grace)


#: Takes a connection over once its request is read (a WebSocket); the connection ends after.
Takeover: TypeAlias = Callable[["HttpConnection"], Awaitable[None]]
#: A server's routes: a request and its connection in, a reply (or a takeover) out.
Answer: TypeAlias = Callable[[Request, Connection], Awaitable[Reply | Takeover]]
#: A server's error body for (status, code, message).
ErrorReply: TypeAlias = Callable[[int, str, str], Reply]


class HttpConnection:
    """h11's server side of one connection, within its server's limits."""

    def __init__(
        self, connection: Connection, limits: Limits, error: ErrorReply, slots: _Slots
    ) -> None:
        self.connection = connection
        self._limits = limits
        self._error = error
        self._slots = slots
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._head = bytearray()  # bytes received until the request head was complete
        self._fresh = True  # nothing received yet

    @property
    def request_bytes(self) -> bytes:
        """The bytes of the request read last, as they came.

        For a request without a body, such as a WebSocket handshake (whose protocol reads the
        request itself).
        """
        return bytes(self._head[: len(self._head) - len(self.trailing_data)])

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the request read last (early WebSocket frames)."""
        return bytes(self._h11.trailing_data[0])

    async def next_request(self) -> Request | None:
        """The next request, or None when the connection is to end.

        It ends when the peer left, sent nothing in time, or was answered an error.
        """
        self._head = bytearray(self._h11.trailing_data[0])
        with anyio.move_on_after(self._limits.request_timeout):
            try:
                return await self._read()
            except _Shed:
                return None
            except _TooLarge:
                message = f"request body exceeds {self._limits.max_body} bytes"
                await self._fail(413, "too_large", message)
                return None
            except h11.RemoteProtocolError as exc:
                if self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    message = f"malformed HTTP request: {exc}"
                    await self._fail(exc.error_status_hint, "bad_request", message)
                return None
        started = self._h11.their_state is not h11.IDLE or self._h11.trailing_data[0]
        if started and self._h11.our_state is h11.IDLE:
            await self._fail(408, "timeout", "request not received in time")
        return None

    async def respond(self, reply: Reply) -> bool:
        """Send ``reply``; True when the connection can serve another request."""
        headers = [
            ("content-type", reply.content_type),
            ("content-length", str(len(reply.body))),
            *reply.headers,
        ]
        if reply.close:
            headers.append(("connection", "close"))
        try:
            phrase = HTTPStatus(reply.status).phrase.encode()
        except ValueError:
            phrase = b""
        head = h11.Response(status_code=reply.status, headers=headers, reason=phrase)
        out = self._h11.send(head) or b""
        if reply.body:
            out += self._h11.send(h11.Data(data=reply.body)) or b""
        out += self._h11.send(h11.EndOfMessage()) or b""
        await self.connection.send(out)
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
            return True
        return False

    async def _fail(self, status: int, code: str, message: str) -> None:
        reply = self._error(status, code, message)
        await self.respond(Reply(reply.status, reply.body, reply.content_type, True, reply.headers))

    async def _read(self) -> Request | None:
        head = await self._next_event()
        if not isinstance(head, h11.Request):
            return None  # the peer closed the connection
        body = bytearray()
        received = 0
        while True:
            part = await self._next_event()
            if isinstance(part, h11.Data):
                received += len(part.data)
                if received > self._limits.max_body * DISCARD_FACTOR:
                    raise _TooLarge
                if received <= self._limits.max_body:
                    body += part.data
            elif isinstance(part, h11.EndOfMessage):
                if received > self._limits.max_body:
                    raise _TooLarge
                headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers)
                method, target = head.method.decode("latin-1"), head.target.decode("latin-1")
                return Request(method, target, headers, bytes(body))
            else:
                return None

    async def _next_event(self) -> object:
        while True:
            event = self._h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self._receive()
            if self._h11.their_state is h11.IDLE:
                self._head += data
            self._h11.receive_data(data)

    async def _receive(self) -> bytes:
        if not self._fresh:
            return await self.connection.receive()
        data = b""
        with self._slots.first_bytes() as scope:
            data = await self.connection.receive()
        if scope.cancelled_caught:
            raise _Shed
        self._fresh = False
        return data


class HttpServer:
    """Serves ``answer`` on listening sockets, within ``limits`` (see the module docstring).

    Args:
        name: How logs call this server ("Control socket").
        answer: The routes.
        limits: Body size, timeouts, connection cap.
        error: The error body for (status, code, message): 400, 408, 413, 431, 503.
    """

    def __init__(
        self, name: str, answer: Answer, limits: Limits, *, error: ErrorReply = json_error
    ) -> None:
        self.name = name
        self.limits = limits
        self._answer = answer
        self._error = error
        self._slots = _Slots(name, limits)

    async def serve(self, listeners: Sequence[socket.socket]) -> None:
        """Accept on every bound, listening socket until cancelled (the caller closes them)."""
        async with anyio.create_task_group() as tg:
            for listener in listeners:
                listener.setblocking(False)
                tg.start_soon(self._accept_loop, listener, tg)

    async def _accept_loop(self, listener: socket.socket, tg: anyio.abc.TaskGroup) -> None:
        while True:
            await self._slots.acquire()  # released when the connection ends
            sock = await self._accept(listener)
            if sock is None:
                self._slots.release()
            else:
                tg.start_soon(self._connection, sock)

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
            _log.warning("%s: accept failed: %s; retrying.", self.name, exc)
            await anyio.sleep(_ACCEPT_RETRY_DELAY)
            return None
        await anyio.lowlevel.checkpoint()
        sock.setblocking(False)
        return sock

    async def _connection(self, sock: socket.socket) -> None:
        connection = Connection(sock)
        with sock:
            try:
                await self._serve(connection)
                if connection.sent:
                    await connection.linger(self.limits.max_body * DISCARD_FACTOR)
            except OSError as exc:
                _log.debug("%s: connection lost: %s.", self.name, exc)
            except Exception:
                _log.exception("%s: connection failed.", self.name)
            finally:
                self._slots.release()

    async def _serve(self, connection: Connection) -> None:
        http = HttpConnection(connection, self.limits, self._error, self._slots)
        timeout = self.limits.request_timeout
        while (request := await http.next_request()) is not None:
            result: Reply | Takeover | None = None
            with anyio.move_on_after(timeout):
                result = await self._answer(request, connection)
            if result is None:
                method, target = request.method, request.target
                _log.warning("%s: %s %s timed out.", self.name, method, target)
                message = f"{method} {target} did not answer within {timeout:g} s"
                result = self._error(503, "timeout", message)
            if not isinstance(result, Reply):
                await result(http)
                return
            if not await http.respond(result):
                return


def listening_sockets(listener: anyio.abc.Listener[anyio.abc.SocketStream]) -> list[socket.socket]:
    """The bound sockets of an anyio TCP listener (one per address family it listens on)."""
    listeners = getattr(listener, "listeners", None) or [listener]
    return [item.extra(anyio.abc.SocketAttribute.raw_socket) for item in listeners]
