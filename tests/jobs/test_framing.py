"""The frame decoder returns the encoded payloads for any chunking, and only documented errors."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lksup.jobs.framing import (
    HEADER_SIZE,
    MAX_FRAME_SIZE,
    FrameDecoder,
    FrameTooLarge,
    FramingError,
    encode_frame,
)

payloads = st.lists(st.binary(max_size=300), max_size=12)


def _chunk(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(frames=payloads, cuts=st.lists(st.integers(min_value=0), max_size=40), empties=st.booleans())
def test_any_chunking_gives_the_same_frames(
    frames: list[bytes], cuts: list[int], empties: bool
) -> None:
    stream = b"".join(encode_frame(p) for p in frames)
    decoder = FrameDecoder()
    out: list[bytes] = []
    for chunk in _chunk(stream, cuts):
        out += decoder.feed(chunk)
        if empties:
            assert decoder.feed(b"") == []
    assert out == frames
    assert decoder.at_boundary


@given(frames=payloads)
def test_one_byte_at_a_time(frames: list[bytes]) -> None:
    stream = b"".join(encode_frame(p) for p in frames)
    decoder = FrameDecoder()
    out: list[bytes] = []
    for i in range(len(stream)):
        out += decoder.feed(memoryview(stream)[i : i + 1])
    assert out == frames


def _reference(stream: bytes, max_size: int) -> tuple[list[bytes], bool]:
    """Frames a correct decoder returns before it must fail, and whether it must fail."""
    frames: list[bytes] = []
    offset = 0
    while len(stream) - offset >= HEADER_SIZE:
        (size,) = struct.unpack_from(">I", stream, offset)
        if size > max_size:
            return frames, True
        if len(stream) - offset - HEADER_SIZE < size:
            break
        frames.append(stream[offset + HEADER_SIZE : offset + HEADER_SIZE + size])
        offset += HEADER_SIZE + size
    return frames, False


@given(garbage=st.binary(max_size=400), cuts=st.lists(st.integers(min_value=0), max_size=10))
def test_garbage_gives_frames_or_framing_errors_only(garbage: bytes, cuts: list[int]) -> None:
    expected, must_fail = _reference(garbage, 64)
    decoder = FrameDecoder(max_size=64)
    out: list[bytes] = []
    failed = False
    for chunk in _chunk(garbage, cuts):
        try:
            out += decoder.feed(chunk)
        except FramingError:
            failed = True
            break
    assert (out, failed) == (expected, must_fail)


def test_oversized_header_fails_before_the_payload_arrives_and_forever() -> None:
    decoder = FrameDecoder(max_size=10)
    assert decoder.feed(encode_frame(b"0123456789")) == [b"0123456789"]
    with pytest.raises(FrameTooLarge) as caught:
        decoder.feed(struct.pack(">I", 11))
    assert (caught.value.size, caught.value.limit) == (11, 10)
    assert str(caught.value) == "frame of 11 bytes exceeds the limit of 10 bytes"
    with pytest.raises(FrameTooLarge):
        decoder.feed(encode_frame(b"ok"))


def test_default_limit_is_16_mib() -> None:
    assert MAX_FRAME_SIZE == 16 * 1024 * 1024
    decoder = FrameDecoder()
    assert decoder.max_size == MAX_FRAME_SIZE
    with pytest.raises(FrameTooLarge):
        decoder.feed(struct.pack(">I", MAX_FRAME_SIZE + 1))


def test_encode_refuses_oversized_payloads() -> None:
    assert encode_frame(b"abc", max_size=3) == b"\x00\x00\x00\x03abc"
    with pytest.raises(FrameTooLarge):
        encode_frame(b"abcd", max_size=3)


def test_empty_frames_and_partial_state() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(b"") * 3) == [b"", b"", b""]
    assert decoder.feed(b"\x00\x00\x00\x02") == []
    assert not decoder.at_boundary  # header seen, payload pending
    assert decoder.feed(b"h") == []
    assert decoder.feed(b"i\x00") == [b"hi"]
    assert not decoder.at_boundary  # one byte of the next header


def test_negative_limit_is_a_local_error() -> None:
    with pytest.raises(ValueError, match="max_size"):
        FrameDecoder(max_size=-1)
