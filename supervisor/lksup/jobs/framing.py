"""Length-prefixed frames on the supervisor <-> job process socket (pure: no I/O).

A frame is a 4-byte big-endian unsigned length followed by that many payload bytes (one
serialized ``lksup.ipc.Envelope``, see ``lksup.jobs.ipc``). Both ends use this module: the
parent pool and the child runtime.

Invariants:

* ``FrameDecoder.feed`` returns exactly the payloads that were encoded, in order, whatever
  the chunking of the byte stream (one byte at a time, many frames at once, a frame split
  anywhere, empty chunks).
* A declared length above ``max_size`` raises ``FrameTooLarge`` as soon as the 4-byte header
  is seen, before any of the payload is buffered, so a hostile or desynchronised peer cannot
  make the decoder allocate more than ``max_size`` plus one read.
* ``feed`` raises nothing but ``FramingError`` (``FrameTooLarge`` is its only subclass today).
  After an error the stream is desynchronised for good: every later ``feed`` raises the same
  error again, and the owner must close the connection.
* A zero-length frame is legal (an empty payload).
"""

from __future__ import annotations

import struct

__all__ = [
    "HEADER_SIZE",
    "MAX_FRAME_SIZE",
    "FrameDecoder",
    "FrameTooLarge",
    "FramingError",
    "encode_frame",
]

#: Largest payload either side accepts by default: 16 MiB.
MAX_FRAME_SIZE = 16 * 1024 * 1024
_HEADER = struct.Struct(">I")
#: Bytes of the length prefix.
HEADER_SIZE = _HEADER.size


class FramingError(ValueError):
    """The byte stream is not a valid sequence of frames; the connection must be closed."""


class FrameTooLarge(FramingError):
    """A frame declares (or a caller tried to send) more than ``limit`` payload bytes."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes")


def encode_frame(payload: bytes, *, max_size: int = MAX_FRAME_SIZE) -> bytes:
    """The frame carrying ``payload``: its length as 4 big-endian bytes, then the payload.

    Raises:
        FrameTooLarge: ``payload`` is longer than ``max_size`` (a local bug: the peer would
            reject the frame and drop the connection).
    """
    size = len(payload)
    if size > max_size:
        raise FrameTooLarge(size, max_size)
    return _HEADER.pack(size) + bytes(payload)


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, get whole payloads back.

    Args:
        max_size: the largest payload accepted; a larger declared length is an error.
    """

    def __init__(self, *, max_size: int = MAX_FRAME_SIZE) -> None:
        if max_size < 0:
            raise ValueError(f"max_size must be >= 0, not {max_size}")
        self._max_size = max_size
        self._buffer = bytearray()
        self._needed: int | None = None  # payload length of the frame being read, if known
        self._error: FramingError | None = None

    @property
    def max_size(self) -> int:
        """The largest payload this decoder accepts."""
        return self._max_size

    @property
    def at_boundary(self) -> bool:
        """True when no part of an unfinished frame is held.

        False at end of stream means the peer stopped in the middle of a frame.
        """
        return self._needed is None and not self._buffer

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add ``data`` to the stream; return the payloads of every frame it completes.

        Raises:
            FrameTooLarge: a frame header declares more than ``max_size`` bytes (also raised
                again by every later call: the stream cannot be resynchronised).
        """
        if self._error is not None:
            raise self._error
        self._buffer += data
        frames: list[bytes] = []
        offset = 0
        available = len(self._buffer)
        while True:
            if self._needed is None:
                if available - offset < HEADER_SIZE:
                    break
                (size,) = _HEADER.unpack_from(self._buffer, offset)
                if size > self._max_size:
                    self._error = FrameTooLarge(size, self._max_size)
                    self._buffer.clear()
                    raise self._error
                offset += HEADER_SIZE
                self._needed = size
            if available - offset < self._needed:
                break
            end = offset + self._needed
            frames.append(bytes(self._buffer[offset:end]))
            offset = end
            self._needed = None
        if offset:
            del self._buffer[:offset]
        return frames
