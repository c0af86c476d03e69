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
            # the survey's job must still run at SIGTERM, however slow the host is by then
            "SURVEY_STEP_SECONDS": "4",
        }
        log = scratch / "daemon.log"
        with log.open("wb") as sink:  # no fleet yet: `lksup apply` gives it one
            daemon = await anyio.open_process(
                [sys.executable, "-m", "lksup", "run"],
                env=env,
                cwd=ROOT,
                stdout=sink,
                stderr=sink,
            )
        try:

            async def cli(*args: str) -> tuple[int, str]:
                result = await anyio.run_process(
                    [sys.executable, "-m", "lksup", *args], env=env, cwd=ROOT, check=False
                )
                return result.returncode, (result.stdout + result.stderr).decode()

            async def states() -> dict[str, str]:
                async with ControlClient(scratch / "ctl.sock") as client:
                    return {i.name: i.state for i in (await client.status()).items}

            with anyio.fail_after(30):
                while True:
                    try:
                        assert await states() == {}
                        break
                    except DaemonUnreachable:
                        assert daemon.returncode is None, log.read_text()[-3000:]
                        await anyio.sleep(0.1)  # the control socket is the handshake
            code, out = await cli(
                "apply", str(fleet), "--set", "hold_seconds=8", "--wait", "--timeout", "60s"
            )
            assert code == 0, out
            assert "3 to create" in out
            assert "converged: 3 agent(s) ready" in out
            assert real.API_SECRET not in log.read_text()

            async def dispatch(agent: str, marker: str) -> None:
                # the real server may miss a dispatch made right after a registration: retry
                for attempt in range(10):
                    code, out = await cli("dispatch", agent, "--room", f"{agent}-real-{attempt}")
                    assert code == 0, out
                    with anyio.move_on_after(3):
                        while marker not in log.read_text():
                            await anyio.sleep(0.05)
                    if marker in log.read_text():
                        return
                raise AssertionError(f"{agent} never took a job:\n{log.read_text()[-3000:]}")

            await dispatch("survey", "survey job started")
            await dispatch("customer-service", "support job started")
            # simulate goes through the agent's own connection to the real server
            code, out = await cli("simulate", "sales", "--room", "sales-sim")
            assert code == 0, out
            with anyio.fail_after(20):
                while "room=sales-sim" not in log.read_text():
                    await anyio.sleep(0.05)
            code, out = await cli("drain", "sales")
            assert code == 0, out
            assert (await states())["survey"] == "running"  # the others keep accepting

            daemon.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):  # both agents with a running job report draining
                while not (
                    (now := await states()).get("survey") == "draining"
                    and now.get("customer-service") == "draining"
                ):
                    await anyio.sleep(0.1)
            with anyio.fail_after(60):
                assert await daemon.wait() == 0, log.read_text()[-3000:]
            text = log.read_text()
            assert "draining: " in text
            assert "survey job done" in text
            assert "support job done" in text
            assert "sales job ending: pitch delivered" in text  # the drain let it finish
            assert real.API_SECRET not in text
        finally:
            with anyio.CancelScope(shield=True):
                if daemon.returncode is None:
                    daemon.kill()
                await daemon.wait()
                await daemon.aclose()
