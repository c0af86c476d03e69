"""A real job process starting up: Initialize -> import + prewarm -> Ready, and its failures."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lksup.jobs import ipc

from .harness import initialize, job_wire, spawn, write_agent

pytestmark = [pytest.mark.anyio, pytest.mark.process]

AGENT = """
    import logging
    import os

    log = logging.getLogger("agent")
    log.info("imported from %s", os.getcwd())

    def prewarm(proc):
        proc.userdata["model"] = f"model-of-{proc.agent_name}"
        proc.userdata["prewarm_pid"] = proc.pid

    async def entrypoint(ctx):
        log.info("userdata=%s room=%s id=%s", sorted(ctx.proc.userdata.items()), ctx.job.room.name, ctx.job.id)
"""


async def test_ready_after_prewarm_and_userdata_reach_the_job(tmp_path: Path) -> None:
    write_agent(tmp_path, AGENT)
    async with spawn(tmp_path) as child:
        ready = await child.ready(initialize(prewarm="agent:prewarm"))
        assert ready.pid == child.process.pid
        assert ready.init_seconds >= 0
        assert (
            child.logs[0].message == f"imported from {tmp_path}"
        )  # working directory, logs forwarded
        await child.send(ipc.StartJob(job=job_wire(room="vip-7"), url="ws://lk", token="tok"))
        assert await child.expect(ipc.JobStarted) == ipc.JobStarted(job_id="AJ_1")
        assert await child.expect(ipc.JobEnded) == ipc.JobEnded(
            job_id="AJ_1", error="", reason="entrypoint returned"
        )
        expected = f"userdata=[('model', 'model-of-support'), ('prewarm_pid', {ready.pid})] room=vip-7 id=AJ_1"
        assert expected in child.log_messages()
        assert await child.wait_exit() == ipc.ExitCode.OK


@pytest.mark.parametrize(
    ("source", "init", "error"),
    [
        (
            "def prewarm(proc):\n    raise RuntimeError('no model')\nasync def entrypoint(ctx): pass\n",
            initialize(prewarm="agent:prewarm"),
            "prewarm agent:prewarm failed: RuntimeError: no model (at agent.py:2)",
        ),
        (
            "import sys\nsys.exit(3)\n",
            initialize(),
            "cannot import module 'agent': SystemExit: 3 (at agent.py:2)",
        ),
        (
            "async def entrypoint(ctx)\n    pass\n",
            initialize(),
            "cannot import module 'agent': SyntaxError: expected ':' (at agent.py:1)",
        ),
        (
            "",
            initialize(entrypoint="missing:entrypoint"),
            "cannot import module 'missing': ModuleNotFoundError: No module named 'missing'",
        ),
        ("", initialize(), "module 'agent' has no attribute 'entrypoint'"),
        (
            "def entrypoint(ctx): pass\n",
            initialize(),
            "entrypoint agent:entrypoint must be an async function (async def)",
        ),
        (
            "async def entrypoint(ctx): pass\nasync def prewarm(proc): pass\n",
            initialize(prewarm="agent:prewarm"),
            "prewarm agent:prewarm must be a plain function (def), not async",
        ),
        (
            "async def entrypoint(ctx): pass\nrequest = 3\n",
            initialize(request_fnc="agent:request"),
            "request_fnc agent:request is not callable (it is int)",
        ),
    ],
    ids=[
        "prewarm-raises",
        "import-exits",
        "syntax-error",
        "no-module",
        "no-attribute",
        "sync-entrypoint",
        "async-prewarm",
        "not-callable",
    ],
)
async def test_init_failures_are_reported_in_ready_then_the_process_exits(
    tmp_path: Path, source: str, init: ipc.Initialize, error: str
) -> None:
    write_agent(tmp_path, source)
    async with spawn(tmp_path) as child:
        await child.send(init)
        ready = await child.expect(ipc.Ready)
        assert ready.error == error
        assert ready.pid == child.process.pid
        assert await child.wait_exit() == ipc.ExitCode.INIT_FAILED


async def test_eof_before_initialize_is_a_clean_exit(tmp_path: Path) -> None:
    async with spawn(tmp_path) as child:
        await child.stream.aclose()
        assert await child.wait_exit() == ipc.ExitCode.OK


async def test_a_first_frame_that_is_not_initialize_is_a_protocol_error(tmp_path: Path) -> None:
    async with spawn(tmp_path) as child:
        await child.send(ipc.Ping(sent_at_ns=1))
        record = await child.wait_log(lambda r: r.level >= 40)
        assert (
            record.message
            == "IPC protocol error before Initialize: first message is Ping, not Initialize."
        )
        assert await child.wait_exit() == ipc.ExitCode.PROTOCOL


async def test_an_oversized_first_frame_is_a_protocol_error(tmp_path: Path) -> None:
    async with spawn(tmp_path) as child:
        await child.send_raw(b"\xff\xff\xff\xff")
        assert await child.wait_exit() == ipc.ExitCode.PROTOCOL


def test_bad_command_lines_exit_with_usage(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "lksup.jobs.child"]
    missing = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert missing.returncode == ipc.ExitCode.USAGE
    assert "--ipc-fd" in missing.stderr
    not_open = subprocess.run(
        [*command, "--ipc-fd", "987"], capture_output=True, text=True, timeout=30, check=False
    )
    assert not_open.returncode == ipc.ExitCode.USAGE
    assert "--ipc-fd 987" in not_open.stderr
    datagram_a, datagram_b = socket.socketpair(type=socket.SOCK_DGRAM)
    with datagram_a, datagram_b:
        fd = datagram_b.fileno()
        wrong = subprocess.run(
            [*command, "--ipc-fd", str(fd)],
            pass_fds=[fd],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert wrong.returncode == ipc.ExitCode.USAGE
    assert "not a Unix stream socket" in wrong.stderr
