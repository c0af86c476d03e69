from __future__ import annotations

import pytest

from lksup.transport.websocket import websocket_url


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
