"""livekit-agents agents at both ends of the supported window, and on their own interpreter.

The oldest tested version (1.6.10) runs in a virtual environment of its own
(``scripts/sdk-venv.sh``), named by the agent's ``python:``, beside the newest (the project's
own environment): the same agent module, the same job, the same observations. An interpreter
without lksup says what to install there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from lksup.pool.pool import AgentPool
from lksup.pool.process import ProcessSpec
from tests.pool.helpers import Reporter, make_job, offer_and_run, running_pool, spec, wait_for
from tests.sdkruntime.conftest import OLDEST, sdk_venv_python

pytestmark = [pytest.mark.anyio, pytest.mark.process]


AGENT = """
import json, os
from livekit.agents import JobContext, JobProcess, get_job_context, utils


def prewarm(proc: JobProcess) -> None:
    proc.userdata["warm"] = os.getpid()


async def entrypoint(ctx: JobContext) -> None:
    out = os.path.join(os.environ["OUT_DIR"], ctx.job.id)
    session = utils.http_context.http_session()
    seen = {
        "same_context": get_job_context() is ctx,
        "http_session": type(session).__name__,
        "prewarmed": "warm" in ctx.proc.userdata,
        "proc_pid": ctx.proc.pid == os.getpid(),  # even when prewarm ran in the template
        "worker_id": ctx.worker_id,
        "metadata": ctx.job.metadata,
        "room": ctx.job.room.name,
    }

    async def on_shutdown(reason: str) -> None:
        with open(out + ".shutdown", "w") as f:
            f.write(reason)

    ctx.add_shutdown_callback(on_shutdown)
    with open(out + ".json", "w") as f:
        json.dump(seen, f)
    ctx.shutdown("all said")
"""


@pytest.fixture(scope="module")
def oldest_python() -> str:
    return sdk_venv_python()


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    (tmp_path / "window_agent.py").write_text(textwrap.dedent(AGENT))
    (tmp_path / "out").mkdir()
    return tmp_path


def sdk_spec(agent_dir: Path, python: str = "") -> ProcessSpec:
    return spec(
        agent_dir,
        entrypoint="window_agent:entrypoint",
        prewarm="window_agent:prewarm",
        runtime="livekit-agents",
        python=python,
        env={"OUT_DIR": str(agent_dir / "out"), "LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE": "0"},
    )


async def one_job(pool: AgentPool, agent_dir: Path) -> tuple[dict[str, object], str]:
    await wait_for(pool, lambda: len(pool.idle) == 1, timeout=60)
    reporter = Reporter()
    await offer_and_run(pool, reporter, make_job("AJ_w", room="window-room", metadata="m-1"))
    assert reporter.ended == {"AJ_w": None}
    seen = json.loads((agent_dir / "out" / "AJ_w.json").read_text())
    reason = (agent_dir / "out" / "AJ_w.shutdown").read_text()
    return seen, reason


@pytest.mark.parametrize("end", ["oldest", "newest"])
async def test_both_ends_of_the_window_give_the_sdk_job_context(
    agent_dir: Path, end: str, launch: str, request: pytest.FixtureRequest
) -> None:
    python = request.getfixturevalue("oldest_python") if end == "oldest" else ""
    async with running_pool(sdk_spec(agent_dir, python), num_idle=1, launch=launch) as pool:
        await wait_for(pool, lambda: len(pool.idle) == 1, timeout=60)
        version = pool.idle[0].sdk_version
        seen, reason = await one_job(pool, agent_dir)
    assert version == (OLDEST if end == "oldest" else "1.8.9")
    assert seen == {
        "same_context": True,
        "http_session": "ClientSession",
        "prewarmed": True,
        "proc_pid": True,
        "worker_id": "AW_test",
        "metadata": "m-1",
        "room": "window-room",
    }
    assert reason == "all said"


async def test_an_interpreter_without_lksup_says_what_to_install(
    agent_dir: Path, tmp_path: Path
) -> None:
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    python = str(bare / "bin" / "python")
    async with running_pool(sdk_spec(agent_dir, python), num_idle=1) as pool:
        with anyio.fail_after(30):
            await pool.wait_until(lambda: pool.last_failure is not None)
        assert pool.last_failure == (
            f"lksup's job runtime cannot be imported by {python}: install lksup there "
            f"(`{python} -m pip install 'lksup==" + _version() + "'`, or `pip install -e` of "
            "this checkout)"
        )
        assert pool.in_backoff


def _version() -> str:
    from lksup import __version__

    return __version__
