"""A WebSocket client over any anyio byte stream, driven by websockets' sans-I/O protocol.

Thin on purpose: websockets' ``ClientProtocol`` does the handshake, framing, ping answers,
size limits and the closing handshake; this module moves bytes between it and the stream.
Every received chunk is followed by a flush, so pongs and close replies go out at once. Sends
are serialized by a lock. ``recv`` returns whole messages (fragments reassembled).

Errors: ``HandshakeError`` (the server refused the upgrade, e.g. HTTP 401; ``status`` tells),
``SocketClosed`` (with the close code, 1006 when the peer vanished without a close frame).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

import anyio
import anyio.abc
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from lksup.errors import LksupError

DEFAULT_MAX_SIZE = 2 * 1024 * 1024  # the server's own signal message limit
READ_SIZE = 65536


class TransportError(LksupError):
    """A connection could not be opened or broke (retryable)."""


class HandshakeError(TransportError):
    """The server answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status: int, body: bytes) -> None:
        text = body.decode("utf-8", "replace").strip()[:200]
        super().__init__(f"HTTP {status}" + (f": {text}" if text else ""))
        self.status = status


class SocketClosed(TransportError):
    """The WebSocket is closed; ``code`` is the close code (1006: no close frame)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed with {code}" + (f" ({reason})" if reason else ""))
        self.code = code
        self.reason = reason


def websocket_url(base: str, path: str = "agent") -> str:
    """``ws(s)://host[:port]/base-path/`` + ``path`` from a ws, wss, http or https base URL."""
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise ValueError(f"unsupported URL scheme {parts.scheme!r}")
    base_path = parts.path.rstrip("/")
    return f"{scheme}://{parts.netloc}{base_path}/{path}"


class WebSocket:
    """An open client WebSocket."""

    def __init__(self, stream: anyio.abc.ByteStream, protocol: ClientProtocol) -> None:
        self._stream = stream
        self._protocol = protocol
        self._send_lock = anyio.Lock(fast_acquire=True)  # uncontended: no loop trip per message
        self._pending: list[bytes | str] = []
        self._fragments: list[bytes] = []
        self._fragment_text = False
        self._pongs = 0
        self._closed_event = anyio.Event()

    @property
    def pongs_received(self) -> int:
        """How many pongs arrived (a keepalive compares it before and after a ping)."""
        return self._pongs

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        open_timeout: float = 10.0,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> WebSocket:
        """Open a TCP (TLS for wss) connection and complete the WebSocket handshake.

        Raises:
            HandshakeError: the server refused the upgrade.
            TransportError: the connection failed or timed out.
        """
        uri = parse_uri(url)
        protocol = ClientProtocol(uri, max_size=max_size)
        request = protocol.connect()
        for name, value in (headers or {}).items():
            request.headers[name] = value
        stream: anyio.abc.ByteStream | None = None
        try:
            with anyio.fail_after(open_timeout):
                if uri.secure:
                    stream = await anyio.connect_tcp(
                        uri.host,
                        uri.port,
                        tls=True,
                        ssl_context=ssl.create_default_context(),
                        tls_hostname=uri.host,
                    )
                else:
                    stream = await anyio.connect_tcp(uri.host, uri.port)
                protocol.send_request(request)
                for data in protocol.data_to_send():
                    await stream.send(data)
                response = await cls._read_response(stream, protocol)
        except TimeoutError:
            if stream is not None:
                await anyio.aclose_forcefully(stream)
            raise TransportError(f"no WebSocket handshake within {open_timeout:g}s") from None
        except (OSError, anyio.BrokenResourceError, anyio.EndOfStream, ssl.SSLError) as exc:
            if stream is not None:
                await anyio.aclose_forcefully(stream)
            raise TransportError(f"cannot connect to {uri.host}:{uri.port}: {exc}") from None
        except BaseException:
            if stream is not None:
                await anyio.aclose_forcefully(stream)
            raise
        if protocol.handshake_exc is not None:
            await anyio.aclose_forcefully(stream)
            if isinstance(protocol.handshake_exc, InvalidStatus):
                raise HandshakeError(response.status_code, bytes(response.body or b""))
            raise TransportError(f"WebSocket handshake failed: {protocol.handshake_exc}")
        websocket = cls(stream, protocol)
        # frames that arrived in the same read as the handshake response
        websocket._collect(protocol.events_received())
        return websocket

    @staticmethod
    async def _read_response(stream: anyio.abc.ByteStream, protocol: ClientProtocol) -> Response:
        while True:
            try:
                data = await stream.receive(READ_SIZE)
            except anyio.EndOfStream:
                protocol.receive_eof()
            else:
                protocol.receive_data(data)
            events = protocol.events_received()
            for event in events:
                if isinstance(event, Response):
                    return event
            if protocol.state is State.CLOSED or protocol.handshake_exc is not None:
                raise TransportError("connection closed during the WebSocket handshake")

    def _collect(self, events: Sequence[object]) -> None:
        for event in events:
            if not isinstance(event, Frame):
                continue
            if event.opcode is Opcode.PONG:
                self._pongs += 1
            elif event.opcode in (Opcode.TEXT, Opcode.BINARY):
                self._fragments = [bytes(event.data)]
                self._fragment_text = event.opcode is Opcode.TEXT
                if event.fin:
                    self._finish_message()
            elif event.opcode is Opcode.CONT:
                self._fragments.append(bytes(event.data))
                if event.fin:
                    self._finish_message()

    def _finish_message(self) -> None:
        data = b"".join(self._fragments)
        self._fragments = []
        self._pending.append(data.decode("utf-8", "replace") if self._fragment_text else data)

    async def _flush(self) -> None:
        for data in self._protocol.data_to_send():
            if data:
                await self._stream.send(data)
            else:  # SEND_EOF: half-close
                await self._stream.send_eof()

    async def recv(self) -> bytes | str:
        """The next whole message (bytes for binary, str for text).

        Raises:
            SocketClosed: the connection is closed (code 1006 when the peer vanished).
        """
        while not self._pending:
            if self._protocol.state is State.CLOSED:
                self._closed_event.set()
                raise self._closed()
            try:
                data = await self._stream.receive(READ_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                self._protocol.receive_eof()
            else:
                self._protocol.receive_data(data)
            self._collect(self._protocol.events_received())
            async with self._send_lock:
                try:
                    await self._flush()
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    self._protocol.receive_eof()
        return self._pending.pop(0)

    def _closed(self) -> SocketClosed:
        exc = self._protocol.close_exc
        received, sent = exc.rcvd, exc.sent
        if received is not None and not (sent is not None and exc.rcvd_then_sent is False):
            return SocketClosed(received.code, received.reason)
        if sent is not None:  # we closed first (e.g. 1009, a message over the limit)
            return SocketClosed(sent.code, sent.reason or "closed by lksup")
        return SocketClosed(1006, "no close frame")

    async def send(self, data: bytes) -> None:
        """Send one binary message.

        Raises:
            SocketClosed: the connection is closed.
        """
        async with self._send_lock:
            if self._protocol.state is not State.OPEN:
                raise SocketClosed(1006, "connection not open")
            self._protocol.send_binary(data)
            try:
                await self._flush()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                raise SocketClosed(1006, str(exc)) from None

    async def ping(self, payload: bytes = b"lksup") -> None:
        """Send a WebSocket ping (the answer shows up in ``pongs_received``)."""
        async with self._send_lock:
            if self._protocol.state is not State.OPEN:
                return
            self._protocol.send_ping(payload)
            try:
                await self._flush()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return

    async def send_close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; the task reading ``recv`` sees it complete."""
        async with self._send_lock:
            if self._protocol.state is State.OPEN:
                self._protocol.send_close(code, reason)
                with contextlib.suppress(
                    anyio.BrokenResourceError, anyio.ClosedResourceError, OSError
                ):
                    await self._flush()

    @property
    def closing(self) -> bool:
        """Whether our close frame went out and the peer's answer is awaited."""
        return self._protocol.state is State.CLOSING

    async def wait_closed(self) -> None:
        """Wait until ``recv`` has seen the connection closed."""
        await self._closed_event.wait()

    async def close(self, code: int = 1000, reason: str = "", *, timeout: float = 2.0) -> None:
        """Close when no other task reads: handshake (bounded by ``timeout``), then drop TCP."""
        with anyio.move_on_after(timeout, shield=True):
            await self.send_close(code, reason)
            try:
                while True:
                    await self.recv()
            except SocketClosed:
                pass
        await anyio.aclose_forcefully(self._stream)

    async def aclose(self) -> None:
        """Drop the connection at once, without a closing handshake."""
        await anyio.aclose_forcefully(self._stream)
