"""`lksup run` against the real livekit-server: apply, dispatch through Twirp, drain, SIGTERM."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import pytest

from tests.conftest import ROOT
from tests.e2e.test_daemon import LiveKit, daemon
from tests.interop import livekit_server as real

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.interop]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_apply_dispatch_drain_and_sigterm_with_the_real_server(tmp_path: Path) -> None:
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
            "LIVEKIT_URL": server.url,
            "LIVEKIT_API_KEY": real.API_KEY,
            "LIVEKIT_API_SECRET": real.API_SECRET,
            # the survey's job must still run at SIGTERM, however slow the host is by then
            "SURVEY_STEP_SECONDS": "4",
        }
        livekit = LiveKit(server.url, real.API_KEY, real.API_SECRET)
        async with daemon(env=env, livekit=livekit) as d:  # no fleet yet: `lksup apply` gives it

            async def cli(*args: str) -> tuple[int, str]:
                code, out, err = await d.cli(*args)
                return code, out + err

            await d.connected()
            assert await d.agents() == {}
            code, out = await cli(
                "apply", str(fleet), "--set", "hold_seconds=8", "--wait", "--timeout", "60s"
            )
            assert code == 0, out
            assert "3 to create" in out
            assert "converged: 3 agent(s) ready" in out
            assert real.API_SECRET not in d.log.read_text()

            async def dispatch(agent: str, marker: str) -> None:
                # the real server may miss a dispatch made right after a registration: retry
                for attempt in range(10):
                    code, out = await cli("dispatch", agent, "--room", f"{agent}-real-{attempt}")
                    assert code == 0, out
                    with anyio.move_on_after(3):
                        await d.wait_log(marker, timeout=10)
                        return
                raise AssertionError(f"{agent} never took a job:\n{d.log.read_text()[-3000:]}")

            await dispatch("survey", "survey job started")
            await dispatch("customer-service", "support job started")
            # simulate goes through the agent's own connection to the real server
            code, out = await cli("simulate", "sales", "--room", "sales-sim")
            assert code == 0, out
            await d.wait_log("room=sales-sim", timeout=20)
            code, out = await cli("drain", "sales")
            assert code == 0, out
            assert (await d.agents())["survey"]["state"] == "running"  # the others keep accepting

            d.process.send_signal(signal.SIGTERM)
            await d.until(  # both agents with a running job report draining
                lambda agents: (
                    agents["survey"]["state"] == "draining"
                    and agents["customer-service"]["state"] == "draining"
                ),
                timeout=10,
            )
            with anyio.fail_after(60):
                assert await d.process.wait() == 0, d.log.read_text()[-3000:]
            text = d.log.read_text()
            assert "draining: " in text
            assert "survey job done" in text
            assert "support job done" in text
            assert "sales job ending: pitch delivered" in text  # the drain let it finish
            assert real.API_SECRET not in text
