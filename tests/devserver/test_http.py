"""The HTTP side: routes, authentication before the upgrade, the WebSocket shell."""

from __future__ import annotations

import anyio
import httpx
import pytest
from livekit.protocol import agent
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from lksup.devserver.http import split_target

from .helpers import (
    OTHER_KEY,
    OTHER_SECRET,
    WAIT,
    http_url,
    running_server,
    token,
    worker,
    worker_token,
)

pytestmark = pytest.mark.anyio


async def test_root_is_ok_and_unknown_paths_are_404() -> None:
    async with running_server() as server, httpx.AsyncClient(base_url=http_url(server)) as client:
        root = await client.get("/")
        assert (root.status_code, root.text) == (200, "OK")
        # keep-alive: the same connection serves the next requests
        assert (await client.get("/nope")).status_code == 404
        assert (await client.post("/agent/", content=b"x")).status_code == 404
        assert (await client.get("/")).status_code == 200


async def test_agent_without_upgrade_is_404_even_with_a_token() -> None:
    async with running_server() as server, httpx.AsyncClient(base_url=http_url(server)) as client:
        response = await client.get("/agent", headers={"Authorization": f"Bearer {worker_token()}"})
        assert response.status_code == 404


@pytest.mark.parametrize(
    ("headers", "query", "status"),
    [
        ({}, "", 401),  # no token: no grants
        (
            {
                "Authorization": f"Bearer {token({'agent': True}, secret='wrong-secret-wrong-secret-wrong!')}"
            },
            "",
            401,
        ),
        ({"Authorization": f"Bearer {token({'agent': True}, key='nobody')}"}, "", 401),
        ({"Authorization": f"Bearer {token({'roomAdmin': True})}"}, "", 401),
        ({"Authorization": f"Bearer {token(None)}"}, "", 401),
        ({"Authorization": f"Bearer {token({'agent': True}, ttl=-120)}"}, "", 401),
        ({"Authorization": f"Bearer {token({'agent': True}, exp=None)}"}, "", 401),
        ({"Authorization": f"Token {worker_token()}"}, f"?access_token={worker_token()}", 401),
        ({}, "?access_token=garbage", 401),
    ],
)
async def test_upgrade_refused_before_handshake(
    headers: dict[str, str], query: str, status: int
) -> None:
    async with running_server() as server:
        with pytest.raises(InvalidStatus) as info:
            async with connect(
                f"{server.url}/agent{query}", additional_headers=headers, open_timeout=WAIT
            ):
                pass
        assert info.value.response.status_code == status


@pytest.mark.parametrize("path", ["/agent/", "/agents", "///agent", "/twirp/agent"])
async def test_only_the_exact_agent_path_upgrades(path: str) -> None:
    async with running_server() as server:
        with pytest.raises(InvalidStatus) as info:
            async with worker(server, path=path):
                pass
        assert info.value.response.status_code == 404


@pytest.mark.parametrize("path", ["/agent", "//agent", "/%61gent"])
async def test_agent_path_variants_that_work(path: str) -> None:
    async with running_server() as server, worker(server, path=path) as w:
        response = await w.register("a")
        assert response.worker_id.startswith("AW_")
        assert w.ws.protocol.extensions == []  # no compression negotiated


async def test_access_token_query_and_second_key() -> None:
    async with running_server() as server:
        query = f"?access_token={worker_token(key=OTHER_KEY, secret=OTHER_SECRET)}"
        async with connect(f"{server.url}/agent{query}", ping_interval=None) as ws:
            message = agent.WorkerMessage()
            message.register.agent_name = "q"
            await ws.send(message.SerializeToString())
            with anyio.fail_after(WAIT):
                reply = agent.ServerMessage.FromString(await ws.recv())  # type: ignore[arg-type]
            assert reply.register.worker_id.startswith("AW_")
            with anyio.fail_after(WAIT):
                (info,) = await server.wait_workers(lambda workers: len(workers) == 1)
            assert (info.id, info.api_key) == (reply.register.worker_id, OTHER_KEY)


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/agent", "/agent", ""),
        ("//agent?access_token=x", "/agent", "access_token=x"),
        ("///agent", "//agent", ""),
        ("/%61gent?a=b?c", "/agent", "a=b?c"),
        ("/twirp/livekit.RoomService/CreateRoom", "/twirp/livekit.RoomService/CreateRoom", ""),
    ],
)
def test_split_target(target: str, path: str, query: str) -> None:
    assert split_target(target) == (path, query)


class RawClient:
    """websockets' sans-I/O client over an anyio TCP stream, to see frames the asyncio client hides."""

    def __init__(self, url: str) -> None:
        self.protocol = ClientProtocol(parse_uri(url))
        self.stream: anyio.abc.SocketStream | None = None

    async def frames(self) -> list[Frame]:
        assert self.stream is not None
        with anyio.fail_after(WAIT):
            self.protocol.receive_data(await self.stream.receive())
        for chunk in self.protocol.data_to_send():
            if chunk:
                await self.stream.send(chunk)
        return [e for e in self.protocol.events_received() if isinstance(e, Frame)]


async def test_pings_every_interval_and_early_frames_after_the_handshake() -> None:
    async with running_server(ping_interval=0.05) as server:
        host, port = server.url.removeprefix("ws://").split(":")
        client = RawClient(server.url + "/agent")
        request = client.protocol.connect()
        request.headers["Authorization"] = f"Bearer {worker_token()}"
        client.protocol.send_request(request)
        register = agent.WorkerMessage()
        register.register.agent_name = "raw"
        async with await anyio.connect_tcp(host, int(port)) as stream:
            client.stream = stream
            # The handshake request and the first frame leave in one write.
            handshake = b"".join(client.protocol.data_to_send())
            # The client protocol is still CONNECTING, so frame the message by hand.
            frame = Frame(Opcode.BINARY, register.SerializeToString())
            await stream.send(handshake + frame.serialize(mask=True, extensions=[]))
            seen: list[Frame] = []
            with anyio.fail_after(WAIT):
                while {Opcode.PING, Opcode.BINARY} - {f.opcode for f in seen}:
                    seen += await client.frames()
            responses = [e for e in seen if e.opcode is Opcode.BINARY]
            reply = agent.ServerMessage.FromString(bytes(responses[0].data))
            assert reply.register.worker_id.startswith("AW_")
            ping = next(f for f in seen if f.opcode is Opcode.PING)
            assert bytes(ping.data) == b""
            assert client.protocol.handshake_exc is None


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        ("GET", {"Sec-WebSocket-Version": "13"}, 400),  # no Sec-WebSocket-Key
        (
            "GET",
            {"Sec-WebSocket-Key": "AAAAAAAAAAAAAAAAAAAAAA==", "Sec-WebSocket-Version": "8"},
            400,
        ),
        (
            "POST",
            {"Sec-WebSocket-Key": "AAAAAAAAAAAAAAAAAAAAAA==", "Sec-WebSocket-Version": "13"},
            405,
        ),
    ],
)
async def test_bad_handshakes_are_refused_by_the_websocket_protocol(
    method: str, headers: dict[str, str], status: int
) -> None:
    async with running_server() as server, httpx.AsyncClient(base_url=http_url(server)) as client:
        upgrade = {
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Authorization": f"Bearer {worker_token()}",
        }
        response = await client.request(method, "/agent", headers={**upgrade, **headers})
        assert response.status_code == status
        assert server.workers() == []
