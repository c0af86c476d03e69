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

import socket

import anyio

__all__ = ["receive"]


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
