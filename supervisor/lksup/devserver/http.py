"""HTTP/1.1 (``lksup.httpd``) and WebSocket (websockets' sans-I/O ``ServerProtocol``) on one port.

A thin shell: no routing and no protocol decisions live here. ``serve`` reads each request
through lksup's HTTP layer and asks the ``Application`` for a ``Response`` or an ``Upgrade``.
For an upgrade, the very bytes of that request are fed to a ``ServerProtocol``, which checks
the handshake and writes the ``101`` (or its own rejection); the WebSocket then runs on the
same connection through ``WebSocketChannel``. The HTTP layer's body limit applies (413 above
``MAX_BODY``); there is no request timeout and no connection cap, as in a livekit-server
without them: every worker holds a connection for as long as it runs.

Invariants:

* The request path is percent-decoded and one leading ``/`` of a ``//`` prefix is removed (the
  real server's ``RemoveDoubleSlashes``), so ``//agent`` is ``/agent``; nothing else is
  normalised.
* No WebSocket extension is negotiated (no compression), like gorilla's zero ``Upgrader``.
* Writes go through one lock per connection, in the order ``ServerProtocol`` produced them;
  pings are answered and close frames echoed by the protocol, flushed after every read.
* Dropping a WebSocket means closing the TCP connection with no close frame; that is what
  the HTTP layer does when the handler returns (clients see 1006).
* Keep-alive requests are served one after the other; an error response to a refused upgrade
  closes the connection.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Protocol
from urllib.parse import unquote

import anyio
import anyio.abc
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Request as WsRequest
from websockets.protocol import State
from websockets.server import ServerProtocol

from lksup import httpd


class _NoDebug(logging.LoggerAdapter[logging.Logger]):
    """Never DEBUG: websockets would log request headers (tokens included) and frames."""

    def isEnabledFor(self, level: int) -> bool:
        """Whether ``level`` is logged; DEBUG never is."""
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


_ws_log = _NoDebug(logging.getLogger(__name__ + ".websocket"))

#: Largest request body read (Twirp requests are far smaller).
MAX_BODY = 4 * 1024 * 1024
#: A complete HTTP response.
Response = httpd.Reply


class ChannelClosed(Exception):
    """The WebSocket (or its TCP connection) has ended."""


class Request(httpd.Request):
    """One HTTP request, with the path as the real server routes it (``split_target``)."""

    @property
    def path(self) -> str:
        """The percent-decoded path, without one leading ``/`` of a ``//`` prefix."""
        return split_target(self.target)[0]

    @property
    def query(self) -> str:
        """The raw query string (without the ``?``)."""
        return split_target(self.target)[1]


@dataclass(frozen=True)
class Upgrade:
    """Accept the request as a WebSocket and run ``handler`` on it."""

    handler: Callable[[WebSocketChannel], Awaitable[None]]
    ping_interval: float
    max_message_size: int | None = None


class Application(Protocol):
    """What serves the requests of ``serve_connection``."""

    async def handle(self, request: Request) -> Response | Upgrade:
        """Answer one request."""
        ...


def is_websocket_upgrade(request: Request) -> bool:
    """Gorilla's ``IsWebSocketUpgrade``: ``Connection: upgrade`` and ``Upgrade: websocket``."""
    return "upgrade" in request.header_tokens("connection") and (
        "websocket" in request.header_tokens("upgrade")
    )


def split_target(target: str) -> tuple[str, str]:
    """``(path, query)`` of a request target, with the real server's path clean-up."""
    path, _, query = target.partition("?")
    path = unquote(path)
    if path.startswith("//"):
        path = path[1:]
    return path, query


async def serve(listener: anyio.abc.Listener[anyio.abc.SocketStream], app: Application) -> None:
    """Serve ``app`` on the sockets of ``listener`` until cancelled."""
    answer = partial(_answer, app)
    server = httpd.HttpServer("Dev server", answer, httpd.Limits(MAX_BODY), error=_error)
    await server.serve(httpd.listening_sockets(listener))


def _error(status: int, code: str, message: str) -> Response:
    return Response(status, b"request body too large\n" if status == 413 else b"bad request\n")


async def _answer(
    app: Application, request: httpd.Request, _: httpd.Connection
) -> Response | httpd.Takeover:
    result = await app.handle(
        Request(request.method, request.target, request.headers, request.body)
    )
    if isinstance(result, Upgrade):
        return partial(_upgrade, result)
    if request.header("upgrade") is not None:
        # A refused upgrade: answer and close, as after any failed handshake.
        return replace(result, close=True)
    return result


async def _upgrade(upgrade: Upgrade, http: httpd.HttpConnection) -> None:
    protocol = ServerProtocol(max_size=upgrade.max_message_size, logger=_ws_log)
    protocol.receive_data(http.request_bytes)
    channel = WebSocketChannel(http.connection, protocol)
    events = protocol.events_received()
    if events and isinstance(events[0], WsRequest):
        response = protocol.accept(events[0])
        protocol.send_response(response)
        accepted = response.status_code == 101
    else:
        accepted = False
    try:
        await channel.flush()
    except ChannelClosed:
        return
    if not accepted:
        return
    async with anyio.create_task_group() as tg:
        tg.start_soon(_keepalive, channel, upgrade.ping_interval)
        channel.feed(http.trailing_data)
        await upgrade.handler(channel)
        tg.cancel_scope.cancel()


async def _keepalive(channel: WebSocketChannel, interval: float) -> None:
    if interval <= 0:
        return
    while True:
        await anyio.sleep(interval)
        try:
            await channel.ping()
        except ChannelClosed:
            return


class WebSocketChannel:
    """Whole WebSocket messages in and out of a ``ServerProtocol`` over one connection."""

    def __init__(self, stream: httpd.Connection, protocol: ServerProtocol) -> None:
        self._stream = stream
        self._protocol = protocol
        self._send_lock = anyio.Lock()
        self._inbox: deque[bytes | str] = deque()
        self._fragments: list[bytes] = []
        self._fragment_text = False
        self._closed = False

    def feed(self, data: bytes) -> None:
        """Bytes read together with the handshake request (sent before the 101)."""
        if data:
            self._protocol.receive_data(data)
            self._collect()

    async def receive(self) -> bytes | str:
        """The next data message (``str`` for a text message)."""
        while not self._inbox:
            if self._closed:
                raise ChannelClosed
            try:
                data = await self._stream.receive()
            except OSError:
                self._closed = True
                raise ChannelClosed from None
            if data:
                self._protocol.receive_data(data)
            else:
                self._protocol.receive_eof()
            self._collect()
            await self.flush()
        return self._inbox.popleft()

    async def send(self, payload: bytes | str) -> None:
        """Send one message: text for ``str``, binary for ``bytes``."""
        try:
            if isinstance(payload, str):
                self._protocol.send_text(payload.encode())
            else:
                self._protocol.send_binary(payload)
        except InvalidState:
            self._closed = True
            raise ChannelClosed from None
        await self.flush()

    async def ping(self) -> None:
        """Send a ping frame with an empty payload."""
        try:
            self._protocol.send_ping(b"")
        except InvalidState:
            raise ChannelClosed from None
        await self.flush()

    async def flush(self) -> None:
        """Write what the protocol produced; an EOF marker half-closes the stream."""
        async with self._send_lock:
            for chunk in self._protocol.data_to_send():
                try:
                    if chunk:
                        await self._stream.send(chunk)
                    else:
                        self._closed = True
                        self._stream.send_eof()
                except OSError:
                    self._closed = True
                    raise ChannelClosed from None

    def _collect(self) -> None:
        for frame in self._protocol.events_received():
            if not isinstance(frame, Frame):
                continue
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                self._fragments = [bytes(frame.data)]
                self._fragment_text = frame.opcode is Opcode.TEXT
            elif frame.opcode is Opcode.CONT:
                self._fragments.append(bytes(frame.data))
            else:
                continue  # ping/pong/close: the protocol has already answered
            if frame.fin:
                data = b"".join(self._fragments)
                self._fragments = []
                if self._fragment_text:
                    try:
                        self._inbox.append(data.decode())
                    except UnicodeDecodeError:
                        self._closed = True
                        return
                else:
                    self._inbox.append(data)
        if self._protocol.state is State.CLOSED or self._protocol.close_expected():
            self._closed = True
