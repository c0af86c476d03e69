from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

AGENT = """
import asyncio, logging, os, signal, sys, time

log = logging.getLogger("pool-test-agent")


def prewarm(proc):
    if os.environ.get("FAIL_PREWARM"):
        raise RuntimeError("no model available")
    proc.userdata["model"] = "loaded-" + os.environ.get("MODEL", "small")


async def request(req):
    room = req.job.room.name
    if room.startswith("yes"):
        await req.accept(identity="chosen-" + req.job.id, name="Chosen", attributes={"k": "v"})
    elif room.startswith("slow"):
        await asyncio.sleep(100)
    else:
        await req.reject()


async def entrypoint(ctx):
    mode = ctx.job.metadata
    log.info("entrypoint %s model=%s pid=%d", ctx.job.id, ctx.proc.userdata.get("model"), os.getpid())
    if mode == "raise":
        raise RuntimeError("boom")
    if mode == "exit3":
        os._exit(3)
    if mode == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "hold":
        async def on_shutdown(reason):
            log.info("shutdown callback: %s", reason)

        ctx.add_shutdown_callback(on_shutdown)
        await ctx.wait_for_shutdown()
        return
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:  # blocks the event loop: shutdown is never processed
            time.sleep(0.05)
    if mode == "linger":  # ends at once; its loop's executor keeps a thread for a while
        asyncio.get_running_loop().run_in_executor(None, time.sleep, 3)
        return
    if mode == "flood":
        for i in range(20000):
            print(f"out line {i} " + "x" * 60)
            print(f"err line {i}", file=sys.stderr)
        sys.stdout.flush()
        return
    if mode.startswith("alloc:"):
        blobs = []
        for _ in range(int(mode.split(":")[1]) // 10):  # 10 MB at a time: the monitor sees it grow
            blob = bytearray(10 * 1024 * 1024)
            for i in range(0, len(blob), 4096):
                blob[i] = 1
            blobs.append(blob)
            await asyncio.sleep(0.02)
        log.info("allocated %d MB", 10 * len(blobs))
        await ctx.wait_for_shutdown()
        return
    await asyncio.sleep(0.05)
"""


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    (tmp_path / "pool_test_agent.py").write_text(textwrap.dedent(AGENT))
    return tmp_path


@pytest.fixture(params=["spawn", "zygote"])
def launch(request: pytest.FixtureRequest) -> str:
    """How the pool starts its processes: a fresh interpreter, or forked from a template."""
    mode: str = request.param
    return mode


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}
