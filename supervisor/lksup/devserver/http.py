"""HTTP/1.1 (h11) and WebSocket (websockets' sans-I/O ``ServerProtocol``) over one anyio stream.

A thin shell: no routing and no protocol decisions live here. ``serve_connection`` reads each
request with h11 and asks the ``Application`` for a ``Response`` or an ``Upgrade``. For an
upgrade, the very bytes of that request are fed to a ``ServerProtocol``, which checks the
handshake and writes the ``101`` (or its own rejection); the WebSocket then runs on the same
stream through ``WebSocketChannel``.

Invariants:

* The request path is percent-decoded and one leading ``/`` of a ``//`` prefix is removed (the
  real server's ``RemoveDoubleSlashes``), so ``//agent`` is ``/agent``; nothing else is
  normalised.
* No WebSocket extension is negotiated (no compression), like gorilla's zero ``Upgrader``.
* Writes go through one lock per connection, in the order ``ServerProtocol`` produced them;
  pings are answered and close frames echoed by the protocol, flushed after every read.
* Dropping a WebSocket means closing the TCP stream with no close frame; that is what the
  caller does when the handler returns (clients see 1006).
* Keep-alive requests are served one after the other; an error response to a refused upgrade
  closes the connection.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol
from urllib.parse import unquote

import anyio
import anyio.abc
import h11
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Request as WsRequest
from websockets.protocol import State
from websockets.server import ServerProtocol

_log = logging.getLogger(__name__)


class _NoDebug(logging.LoggerAdapter[logging.Logger]):
    """Never DEBUG: websockets would log request headers (tokens included) and frames."""

    def isEnabledFor(self, level: int) -> bool:
        """Whether ``level`` is logged; DEBUG never is."""
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


_ws_log = _NoDebug(logging.getLogger(__name__ + ".websocket"))

#: Largest request body read (Twirp requests are far smaller).
MAX_BODY = 4 * 1024 * 1024
_BROKEN = (anyio.BrokenResourceError, anyio.ClosedResourceError)


class ChannelClosed(Exception):
    """The WebSocket (or its TCP connection) has ended."""


@dataclass(frozen=True)
class Request:
    """One HTTP request; header names are lower case."""

    method: str
    path: str
    query: str
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
class Response:
    """A complete HTTP response."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    close: bool = False


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


async def serve_connection(
    stream: anyio.abc.ByteStream, app: Application, *, max_body: int = MAX_BODY
) -> None:
    """Serve HTTP requests on ``stream`` until the client leaves or a WebSocket ends."""
    conn = _Connection(stream)
    async with stream:
        while True:
            try:
                read = await conn.read_request(max_body)
            except _TooLarge:
                await conn.respond(Response(413, b"request body too large\n", close=True))
                return
            except h11.RemoteProtocolError as exc:
                await conn.respond_error(exc.error_status_hint)
                return
            if read is None:
                return
            request, body = read
            path, query = split_target(request.target.decode("latin-1"))
            headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers)
            method = request.method.decode("latin-1")
            result = await app.handle(Request(method, path, query, headers, body))
            if isinstance(result, Upgrade):
                await conn.upgrade(result)
                return
            if any(name == b"upgrade" for name, _ in request.headers):
                # A refused upgrade: answer and close, as after any failed handshake.
                result = Response(result.status, result.body, result.content_type, close=True)
            if not await conn.respond(result):
                return


class _TooLarge(Exception):
    pass


class _Connection:
    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER)
        self.raw = bytearray()  # the bytes of the current request (and what followed)

    async def _event(self) -> h11.Event | type[h11.PAUSED] | type[h11.NEED_DATA]:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.stream.receive()
            except anyio.EndOfStream:
                data = b""
            self.raw += data
            self.h11.receive_data(data)

    async def read_request(self, max_body: int) -> tuple[h11.Request, bytes] | None:
        self.raw = bytearray(self.h11.trailing_data[0])
        event = await self._event()
        if not isinstance(event, h11.Request):
            return None  # ConnectionClosed
        body = bytearray()
        while True:
            part = await self._event()
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > max_body:
                    raise _TooLarge
            elif isinstance(part, h11.EndOfMessage):
                return event, bytes(body)
            else:
                return None

    async def respond(self, response: Response) -> bool:
        """Send ``response``; True when the connection can serve another request."""
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
        ]
        if response.close:
            headers.append(("connection", "close"))
        phrase = HTTPStatus(response.status).phrase.encode()
        head = h11.Response(status_code=response.status, headers=headers, reason=phrase)
        out = self.h11.send(head)
        if response.body:
            out = (out or b"") + (self.h11.send(h11.Data(data=response.body)) or b"")
        out = (out or b"") + (self.h11.send(h11.EndOfMessage()) or b"")
        try:
            await self.stream.send(out)
        except _BROKEN:
            return False
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return True
        return False

    async def respond_error(self, status: int) -> None:
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        try:
            await self.respond(Response(status, b"bad request\n", close=True))
        except h11.LocalProtocolError:
            _log.debug("Could not answer a malformed request.")

    async def upgrade(self, upgrade: Upgrade) -> None:
        trailing = self.h11.trailing_data[0]
        raw = bytes(self.raw[: len(self.raw) - len(trailing)])
        protocol = ServerProtocol(max_size=upgrade.max_message_size, logger=_ws_log)
        protocol.receive_data(raw)
        channel = WebSocketChannel(self.stream, protocol)
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
            channel.feed(trailing)
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
    """Whole WebSocket messages in and out of a ``ServerProtocol`` over an anyio stream."""

    def __init__(self, stream: anyio.abc.ByteStream, protocol: ServerProtocol) -> None:
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
            except anyio.EndOfStream:
                self._protocol.receive_eof()
            except _BROKEN:
                self._closed = True
                raise ChannelClosed from None
            else:
                self._protocol.receive_data(data)
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
                        await self._stream.send_eof()
                except _BROKEN:
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
