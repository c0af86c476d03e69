from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # livekit-agents and the livekit rtc package run on asyncio
