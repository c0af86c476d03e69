"""Reading the IPC socket: a reader cancelled as its data lands logs nothing."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from lksup.jobs.sockio import SocketReceiver, receive, receive_fds

pytestmark = pytest.mark.anyio

Reader = Callable[[socket.socket], Awaitable[bytes]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def cancelled_as_data_lands(read: Reader, rounds: int = 10) -> list[dict[str, Any]]:
    """What asyncio's exception handler saw while a reader was cancelled, ``rounds`` times, in
    the very loop turn in which its socket became readable (a job's end: the supervisor writes
    while the process stops reading)."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        for _ in range(rounds):
            a_out, a_in = socket.socketpair()
            b_out, b_in = socket.socketpair()
            with a_out, a_in, b_out, b_in:
                a_in.setblocking(False)
                b_in.setblocking(False)
                scope = anyio.CancelScope()
                done = anyio.Event()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_read_until_cancelled, read, b_in, scope, done)
                    await anyio.wait_all_tasks_blocked()  # waiting for b_in
                    loop.add_reader(a_in.fileno(), scope.cancel)  # a's event cancels it
                    a_out.send(b"a")
                    b_out.send(b"b")  # both readable in the same select
                    with anyio.fail_after(5):
                        await done.wait()
                    loop.remove_reader(a_in.fileno())
                for _ in range(3):  # let any handle queued in that turn run
                    await anyio.lowlevel.checkpoint()
    finally:
        loop.set_exception_handler(previous)
    return seen


async def _read_until_cancelled(
    read: Reader, sock: socket.socket, scope: anyio.CancelScope, done: anyio.Event
) -> None:
    with scope:
        await read(sock)
    done.set()


async def _receive_fds(sock: socket.socket) -> bytes:
    data, _fds = await receive_fds(sock)
    return data


async def _receiver(sock: socket.socket) -> bytes:
    return await SocketReceiver(sock).receive()


@pytest.mark.parametrize("read", [receive, _receive_fds, _receiver])
async def test_a_reader_cancelled_as_its_data_lands_logs_nothing(read: Reader) -> None:
    """Regression: about one job in thirty logged an error-level "Exception in callback
    Future.set_result(None) ... InvalidStateError" from its job process (anyio's socket
    stream resolves its wait future from a queued add_reader callback). The same readers
    serve templates' control sockets (with descriptors) and forked processes' output."""
    assert await cancelled_as_data_lands(read) == []


async def test_receive_fds_passes_descriptors_with_the_bytes() -> None:
    left, right = socket.socketpair()
    passed, kept = socket.socketpair()
    with left, right, passed, kept:
        right.setblocking(False)
        socket.send_fds(left, [b"fork"], [passed.fileno()])
        data, fds = await receive_fds(right)
        assert data == b"fork"
        assert len(fds) == 1
        with socket.socket(fileno=fds[0]) as received:
            received.sendall(b"through")
            assert kept.recv(16) == b"through"
        left.close()
        assert await receive_fds(right) == (b"", [])


async def test_a_socket_receiver_ends_and_closes_as_an_anyio_stream() -> None:
    left, right = socket.socketpair()
    receiver = SocketReceiver(right)
    with left:
        left.sendall(b"line\n")
        assert await receiver.receive() == b"line\n"
        left.close()
        with pytest.raises(anyio.EndOfStream):
            await receiver.receive()
    await receiver.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await receiver.receive()


async def test_receive_reads_then_reports_the_end_of_the_stream() -> None:
    left, right = socket.socketpair()
    with left, right:
        right.setblocking(False)
        left.sendall(b"frame")
        assert await receive(right) == b"frame"
        left.close()
        assert await receive(right) == b""
