from __future__ import annotations

import subprocess

import pytest

from tests.conftest import ROOT

#: The oldest livekit-agents version CI runs (the newest is the project's own environment).
OLDEST = "1.6.10"


def sdk_venv_python(version: str = OLDEST) -> str:
    """The interpreter of a virtual environment with that livekit-agents and this lksup."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "sdk-venv.sh"), version],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # livekit-agents and the livekit rtc package run on asyncio
