"""Reading a non-blocking socket on anyio without anyio's socket streams.

On asyncio, anyio's ``UNIXSocketStream.receive`` waits with ``loop.add_reader(fd,
future.set_result, None)`` and removes the reader from the future's done callback. When the
reading task is cancelled in the same turn of the event loop in which the socket became
readable (a job ending while the supervisor writes to it), the queued ``set_result`` runs on
the cancelled future and asyncio logs "Exception in callback Future.set_result(None) ...
InvalidStateError" at error level: a traceback in the log for a job that ended well.
``anyio.wait_readable`` tolerates that turn, so the readers here wait with it.
"""

from __future__ import annotations

import array
import socket

import anyio
import anyio.abc
import anyio.lowlevel

__all__ = ["SocketReceiver", "receive", "receive_fds"]


async def receive(sock: socket.socket, max_bytes: int = 65536) -> bytes:
    """The next bytes from ``sock`` (non-blocking); ``b""`` at the end of the stream.

    Raises:
        OSError: the connection broke (e.g. ``ECONNRESET``).
    """
    await anyio.lowlevel.checkpoint()
    while True:
        try:
            return sock.recv(max_bytes)
        except BlockingIOError:
            await anyio.wait_readable(sock)


async def receive_fds(
    sock: socket.socket, max_bytes: int = 65536, max_fds: int = 16
) -> tuple[bytes, list[int]]:
    """The next bytes from ``sock`` and the descriptors that came with them (``SCM_RIGHTS``).

    ``b""`` at the end of the stream. The caller owns the descriptors.

    Raises:
        OSError: the connection broke.
    """
    await anyio.lowlevel.checkpoint()
    int_size = array.array("i").itemsize
    while True:
        try:
            data, ancdata, _flags, _addr = sock.recvmsg(
                max_bytes, socket.CMSG_SPACE(max_fds * int_size)
            )
        except BlockingIOError:
            await anyio.wait_readable(sock)
            continue
        fds = array.array("i")
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - (len(payload) % int_size)])
        return data, list(fds)


class SocketReceiver(anyio.abc.ByteReceiveStream):
    """The receiving side of a non-blocking socket as an anyio byte stream; owns the socket.

    Read with ``receive`` (see the module docstring), not with anyio's socket stream.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """The next bytes.

        Raises:
            anyio.EndOfStream: at the end of the stream.
            anyio.BrokenResourceError: the connection broke.
            anyio.ClosedResourceError: the receiver was closed.
        """
        if self._sock.fileno() < 0:
            raise anyio.ClosedResourceError
        try:
            data = await receive(self._sock, max_bytes)
        except OSError as exc:
            if self._sock.fileno() < 0:
                raise anyio.ClosedResourceError from None
            raise anyio.BrokenResourceError from exc
        if not data:
            raise anyio.EndOfStream
        return data

    async def aclose(self) -> None:
        """Close the socket."""
        self._sock.close()
        await anyio.lowlevel.checkpoint()
