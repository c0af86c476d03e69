from __future__ import annotations

import anyio
import jwt
import pytest

from lksup.transport.websocket import SocketClosed, WebSocket, websocket_url
from tests.transport.fake_server import SECRET, fake_server


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("ws://127.0.0.1:7880", "ws://127.0.0.1:7880/agent"),
        ("wss://lk.example.com", "wss://lk.example.com/agent"),
        ("http://lk.example.com:8080/", "ws://lk.example.com:8080/agent"),
        ("https://lk.example.com/livekit", "wss://lk.example.com/livekit/agent"),
        ("https://lk.example.com/a/b/", "wss://lk.example.com/a/b/agent"),
    ],
)
def test_agent_url_keeps_the_base_path(base: str, url: str) -> None:
    assert websocket_url(base) == url


def test_other_schemes_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported URL scheme"):
        websocket_url("ftp://example.com")


@pytest.mark.anyio
async def test_a_message_over_the_limit_closes_with_1009_and_says_so() -> None:
    """Regression: lksup closed with 1009 (message too big) and then reported 1006 (the peer
    vanished), since the peer's answer to a failed connection is never read."""
    async with fake_server() as server:
        token = jwt.encode({"sub": "test"}, SECRET, algorithm="HS256")
        ws = await WebSocket.connect(
            websocket_url(server.url), headers={"Authorization": f"Bearer {token}"}, max_size=1024
        )
        peer = await server.accept()
        await peer.connection.send(b"x" * 4096)
        with anyio.fail_after(5), pytest.raises(SocketClosed) as closed:
            await ws.recv()
        assert closed.value.code == 1009
        assert "exceeds limit of 1024 bytes" in str(closed.value)
        await ws.aclose()
