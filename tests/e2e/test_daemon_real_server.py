"""`lksup run` against the real livekit-server: apply, dispatch through Twirp, drain, SIGTERM."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

import anyio
import pytest

from lksup.control.client import ControlClient
from lksup.control.errors import DaemonUnreachable
from tests.conftest import ROOT
from tests.interop import livekit_server as real

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.interop]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_apply_dispatch_drain_and_sigterm_with_the_real_server(tmp_path: Path) -> None:
    scratch = Path(tempfile.mkdtemp(dir="/tmp", prefix="lksup-real-"))
    fleet = tmp_path / "fleet.yaml"
    async with real.real_livekit_server(tmp_path) as server:
        fleet.write_text(
            (ROOT / "fleets" / "dev.yaml")
            .read_text()
            .replace(
                "supervisor:\n",
                "livekit:\n  url: {{ env.LIVEKIT_URL }}\n  api_key: {env: LIVEKIT_API_KEY}\n"
                "  api_secret: {env: LIVEKIT_API_SECRET}\nsupervisor:\n",
            )
        )
        env = {
            **os.environ,
            "LKSUP_SOCKET": str(scratch / "ctl.sock"),
            "LKSUP_STATE_DIR": str(scratch / "state"),
            "LIVEKIT_URL": server.url,
            "LIVEKIT_API_KEY": real.API_KEY,
            "LIVEKIT_API_SECRET": real.API_SECRET,
        }
        log = scratch / "daemon.log"
        with log.open("wb") as sink:
            daemon = await anyio.open_process(
                [sys.executable, "-m", "lksup", "run", str(fleet), "--set", "hold_seconds=3"],
                env=env,
                cwd=ROOT,
                stdout=sink,
                stderr=sink,
            )
        try:
            with anyio.fail_after(60):
                while True:
                    try:
                        async with ControlClient(scratch / "ctl.sock") as client:
                            items = (await client.status()).items
                        if len(items) == 3 and all(i.ready for i in items):
                            break
                    except DaemonUnreachable:
                        pass
                    assert daemon.returncode is None, log.read_text()[-3000:]
                    await anyio.sleep(0.1)
            assert real.API_SECRET not in log.read_text()

            async def cli(*args: str) -> tuple[int, str]:
                result = await anyio.run_process(
                    [sys.executable, "-m", "lksup", *args], env=env, cwd=ROOT, check=False
                )
                return result.returncode, (result.stdout + result.stderr).decode()

            # the real server may miss a dispatch made right after a registration: retry rooms
            for attempt in range(10):
                code, out = await cli("dispatch", "survey", "--room", f"survey-real-{attempt}")
                assert code == 0, out
                with anyio.move_on_after(3):
                    while "survey job started" not in log.read_text():
                        await anyio.sleep(0.05)
                if "survey job started" in log.read_text():
                    break
            assert "survey job started" in log.read_text()
            code, out = await cli("drain", "sales")
            assert code == 0, out
            daemon.send_signal(signal.SIGTERM)
            with anyio.fail_after(60):
                assert await daemon.wait() == 0, log.read_text()[-3000:]
            text = log.read_text()
            assert "draining:" in text
            assert "survey job done" in text
            assert real.API_SECRET not in text
        finally:
            with anyio.CancelScope(shield=True):
                if daemon.returncode is None:
                    daemon.kill()
                await daemon.wait()
                await daemon.aclose()
