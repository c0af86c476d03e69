"""The HTTP layer on its own: the connection cap, and shedding idle connections under it."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio
import anyio.abc
import h11
import pytest

from lksup import httpd

pytestmark = pytest.mark.anyio

WAIT = 5.0  # every wait is a handshake bounded by this, far below the request timeouts


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _ok(request: httpd.Request, _: httpd.Connection) -> httpd.Reply:
    return httpd.Reply(200, request.target.encode())


@contextmanager
def _listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0), backlog=128) as sock:
        yield sock


@asynccontextmanager
async def serving(limits: httpd.Limits) -> AsyncIterator[int]:
    """Serve ``_ok`` within ``limits`` on a loopback port until the block ends."""
    with _listener() as sock:
        async with anyio.create_task_group() as tg:
            tg.start_soon(httpd.HttpServer("Test", _ok, limits).serve, [sock])
            yield sock.getsockname()[1]
            tg.cancel_scope.cancel()


class Client:
    """One keep-alive client connection."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream, self.conn = stream, h11.Connection(h11.CLIENT)

    async def get(self, target: str) -> tuple[int, bytes]:
        request = h11.Request(method="GET", target=target, headers=[("host", "x")])
        await self.stream.send(self.conn.send(request) + self.conn.send(h11.EndOfMessage()))
        status, body = 0, b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                with anyio.fail_after(WAIT):
                    self.conn.receive_data(await self.stream.receive())
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self.conn.start_next_cycle()
                return status, body


async def _connect(port: int) -> anyio.abc.SocketStream:
    return await anyio.connect_tcp("127.0.0.1", port)


async def _closed_by_server(stream: anyio.abc.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    with anyio.fail_after(WAIT):
        while True:
            try:
                data += await stream.receive()
            except anyio.EndOfStream:
                return data


async def test_an_idle_connection_is_shed_once_every_slot_is_taken() -> None:
    limits = httpd.Limits(1024, request_timeout=60, max_connections=2, idle_grace=0.1)
    async with serving(limits) as port, await _connect(port) as s:
        busy = Client(s)
        assert await busy.get("/first") == (200, b"/first")
        async with await _connect(port) as idle:  # both slots are taken now
            # closed at the grace, not at the 60 s request timeout, without an answer
            assert await _closed_by_server(idle) == b""
        assert await busy.get("/again") == (200, b"/again")  # a client with a request stays


async def test_a_client_behind_a_flood_of_idle_connections_is_served() -> None:
    limits = httpd.Limits(1024, request_timeout=60, max_connections=4, idle_grace=0.2)
    async with serving(limits) as port:
        flood = [await _connect(port) for _ in range(12)]
        try:
            async with await _connect(port) as stream:
                with anyio.fail_after(WAIT):  # the flood's request timeouts are 60 s
                    assert await Client(stream).get("/status") == (200, b"/status")
        finally:
            for stream in flood:
                await stream.aclose()


async def test_without_pressure_an_idle_connection_has_the_whole_request_timeout() -> None:
    limits = httpd.Limits(1024, request_timeout=0.3, max_connections=2, idle_grace=0.01)
    async with serving(limits) as port:
        started = anyio.current_time()
        async with await _connect(port) as idle:
            assert await _closed_by_server(idle) == b""
        assert anyio.current_time() - started >= 0.3  # not the grace: a slot was free


async def test_a_request_begun_under_pressure_is_not_shed() -> None:
    limits = httpd.Limits(1024, request_timeout=1.0, max_connections=2, idle_grace=0.3)
    async with serving(limits) as port:
        started = anyio.current_time()  # before the server can start its timeout
        async with await _connect(port) as partial:
            await partial.send(b"GET / HTTP/1.1\r\n")  # a head that never ends
            async with await _connect(port) as s:
                assert await Client(s).get("/") == (200, b"/")  # both slots taken
                answer = await _closed_by_server(partial)
        assert answer.startswith(b"HTTP/1.1 408 ")  # at the request timeout, not the grace
        assert anyio.current_time() - started >= 1.0


async def test_without_a_cap_nothing_is_shed() -> None:
    async with serving(httpd.Limits(1024, request_timeout=0.3, idle_grace=0.01)) as port:
        started = anyio.current_time()
        flood = [await _connect(port) for _ in range(5)]
        try:
            async with await _connect(port) as s:
                assert await Client(s).get("/") == (200, b"/")
            assert await _closed_by_server(flood[0]) == b""
            assert anyio.current_time() - started >= 0.3
        finally:
            for stream in flood:
                await stream.aclose()
