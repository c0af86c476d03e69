"""A real job process's lifetime: health pings, signals, EOF, bad frames, logs and output."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import anyio
import pytest

from lksup.jobs import ipc

from .harness import initialize, job_wire, spawn, write_agent

pytestmark = [pytest.mark.anyio, pytest.mark.process]

AGENT = """
    import logging
    import pathlib
    import sys
    import threading
    import time
    import anyio

    log = logging.getLogger("agent")

    async def note(reason):
        pathlib.Path("ended.txt").write_text(reason)

    async def entrypoint(ctx):
        mode = ctx.job.metadata
        ctx.add_shutdown_callback(note)
        if mode == "block":
            time.sleep(60)  # wedges the event loop
        elif mode == "thread":
            threading.Thread(target=time.sleep, args=(60,), name="forgotten").start()
            return
        elif mode == "chatty":
            for i in range(3000):
                log.debug("debug %d is below the level", i)
                log.info("record %d of %s", i, ctx.job.id)
            sys.stdout.write("o" * 1_000_000)
            sys.stderr.write("e" * 1_000_000)
            try:
                {}["missing"]
            except KeyError:
                log.exception("with a traceback")
            log.warning("surrogate \\udcff survives")
            return
        await ctx.wait_for_shutdown()
"""


def start(mode: str) -> ipc.StartJob:
    return ipc.StartJob(job=job_wire(metadata=mode), url="ws://lk", token="tok")


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    write_agent(tmp_path, AGENT)
    return tmp_path


async def test_ping_is_answered_idle_and_during_a_job(agent_dir: Path) -> None:
    async with spawn(agent_dir) as child:
        await child.ready()
        for sent_at in (0, -1, 2**62):
            await child.send(ipc.Ping(sent_at_ns=sent_at))
            assert await child.expect(ipc.Pong) == ipc.Pong(sent_at_ns=sent_at)
        await child.send(start("wait"))
        await child.expect(ipc.JobStarted)
        await child.send(ipc.Ping(sent_at_ns=7))
        assert await child.expect(ipc.Pong) == ipc.Pong(sent_at_ns=7)
        await child.send(ipc.Shutdown(reason="done"))
        await child.expect(ipc.JobEnded)
        assert await child.wait_exit() == ipc.ExitCode.OK


async def test_sigint_is_ignored_and_sigterm_stops_an_idle_process(agent_dir: Path) -> None:
    async with spawn(agent_dir) as child:
        await child.ready()
        child.process.send_signal(signal.SIGINT)
        await child.send(ipc.Ping(sent_at_ns=1))  # still serving after SIGINT
        assert await child.expect(ipc.Pong) == ipc.Pong(sent_at_ns=1)
        child.process.send_signal(signal.SIGTERM)
        assert await child.wait_exit() == ipc.ExitCode.OK
        assert "Shutting down while idle: SIGTERM." in child.log_messages()


async def test_shutdown_while_idle_exits_at_once(agent_dir: Path) -> None:
    async with spawn(agent_dir) as child:
        await child.ready()
        await child.send(ipc.Shutdown(reason="pool shrinking"))
        assert await child.wait_exit() == ipc.ExitCode.OK


FINALISATION_WITNESS = """
    import atexit
    import os

    class Witness:
        def __del__(self):  # runs when the interpreter is finalised, and only then
            os.write(2, b"interpreter finalised\\n")

    WITNESS = Witness()
    atexit.register(os.write, 2, b"atexit handler ran\\n")

    async def entrypoint(ctx):
        pass
"""


@pytest.mark.parametrize("how", ["idle", "after a job"])
async def test_the_process_ends_without_finalising_the_interpreter(
    tmp_path: Path, how: str
) -> None:
    """A native thread (livekit-rtc's runtime) calling into Python while the interpreter is
    finalised aborts the process, so a job that succeeded ended killed by SIGABRT. Job
    processes end as the SDK's do: atexit handlers run, then ``os._exit``."""
    write_agent(tmp_path, FINALISATION_WITNESS)
    async with spawn(tmp_path) as child:
        await child.ready()
        if how == "idle":
            await child.send(ipc.Shutdown(reason="done"))
        else:
            await child.send(start("return"))
            await child.expect(ipc.JobStarted)
            assert (await child.expect(ipc.JobEnded)).error == ""
        assert await child.wait_exit() == ipc.ExitCode.OK
    assert "atexit handler ran" in child.stderr
    assert "interpreter finalised" not in child.stderr


async def test_sigusr1_dumps_the_stacks_to_stderr(agent_dir: Path) -> None:
    async with spawn(agent_dir) as child:
        await child.ready()
        child.process.send_signal(signal.SIGUSR1)
        await child.send(ipc.Shutdown(reason="done"))
        assert await child.wait_exit() == ipc.ExitCode.OK
        assert "Current thread" in child.stderr or "Thread 0x" in child.stderr, child.stderr


async def test_eof_while_idle_ends_the_process(agent_dir: Path) -> None:
    async with spawn(agent_dir) as child:
        await child.ready()
        await child.stream.aclose()
        assert await child.wait_exit(timeout=3) == ipc.ExitCode.OK


async def test_eof_during_a_job_cancels_it_briefly_then_exits(agent_dir: Path) -> None:
    async with spawn(agent_dir) as child:
        await child.ready()
        await child.send(start("wait"))
        await child.expect(ipc.JobStarted)
        await child.stream.aclose()
        assert await child.wait_exit(timeout=3) == ipc.ExitCode.OK
    assert (agent_dir / "ended.txt").read_text() == "supervisor went away"


async def test_eof_with_a_wedged_event_loop_still_ends_the_process(agent_dir: Path) -> None:
    async with spawn(agent_dir) as child:
        await child.ready()
        await child.send(start("block"))
        await child.expect(ipc.JobStarted)
        started = time.monotonic()
        await child.stream.aclose()
        assert await child.wait_exit(timeout=4) == ipc.ExitCode.OK
        assert time.monotonic() - started < 3.5


async def test_a_forgotten_thread_does_not_keep_the_process_alive(agent_dir: Path) -> None:
    async with spawn(agent_dir) as child:
        await child.ready()
        await child.send(start("thread"))
        await child.expect(ipc.JobStarted)
        assert await child.expect(ipc.JobEnded) == ipc.JobEnded(
            job_id="AJ_1", error="", reason="entrypoint returned"
        )
        assert await child.wait_exit(timeout=5) == ipc.ExitCode.OK


async def test_undecodable_frames_are_skipped_and_oversized_ones_end_the_process(
    agent_dir: Path,
) -> None:
    async with spawn(agent_dir) as child:
        await child.ready()
        await child.send_raw(b"\x00\x00\x00\x02\xff\xff")
        await child.send(ipc.Ping(sent_at_ns=3))
        assert await child.expect(ipc.Pong) == ipc.Pong(sent_at_ns=3)
        assert any(
            m.startswith("Ignoring an IPC frame: undecodable IPC frame")
            for m in child.log_messages()
        )
        await child.send_raw(ipc.encode(ipc.Ready(pid=1)))  # a child's message sent to a child
        await child.wait_log(lambda r: r.message == "Ignoring an unexpected Ready message.")
        await child.send(start("wait"))
        await child.expect(ipc.JobStarted)
        await child.send_raw(b"\x7f\xff\xff\xff")
        assert await child.wait_exit() == ipc.ExitCode.PROTOCOL
        assert (
            "IPC stream broken: frame of 2147483647 bytes exceeds the limit of 16777216 bytes."
            in child.log_messages()
        )
        ended = [m for m in child.messages if isinstance(m, ipc.JobEnded)]
        assert ended == [ipc.JobEnded(job_id="AJ_1", error="", reason="IPC protocol error")]


async def test_logs_and_output_are_forwarded_in_order_under_a_flood(agent_dir: Path) -> None:
    async with spawn(agent_dir) as child:
        await child.ready()
        before = time.time()
        await child.send(start("chatty"))
        await child.expect(ipc.JobStarted)
        await child.expect(ipc.JobEnded)
        assert await child.wait_exit() == ipc.ExitCode.OK
    records = [r for r in child.logs if r.logger == "agent"]
    assert [r.message for r in records[:3000]] == [f"record {i} of AJ_1" for i in range(3000)]
    assert all(
        r.level == logging.INFO and before - 1 <= r.created <= time.time() for r in records[:3000]
    )
    exception, surrogate = records[3000:]
    assert (exception.level, exception.message) == (logging.ERROR, "with a traceback")
    assert exception.exc_text.startswith("Traceback (most recent call last):")
    assert exception.exc_text.endswith("KeyError: 'missing'")
    assert surrogate.message == "surrogate \\udcff survives"
    assert child.stdout == "o" * 1_000_000
    assert child.stderr.count("e" * 1000) >= 999


async def test_the_log_level_comes_from_initialize(agent_dir: Path) -> None:
    async with spawn(agent_dir) as child:
        await child.ready(initialize(log_level="debug"))
        await child.send(start("chatty"))
        await child.expect(ipc.JobStarted)
        await child.expect(ipc.JobEnded)
        await child.wait_exit()
    assert sum(1 for r in child.logs if r.message.startswith("debug ")) == 3000
    async with spawn(agent_dir) as child:
        await child.ready(initialize(log_level="LOUD"))
        await child.send(ipc.Shutdown())
        await child.wait_exit()
    assert "Unknown log level 'LOUD'; using INFO." in child.log_messages()


async def test_flood_does_not_delay_pongs_behind_the_loop(agent_dir: Path) -> None:
    async with spawn(agent_dir) as child:
        await child.ready()
        with anyio.fail_after(5):
            for i in range(50):
                await child.send(ipc.Ping(sent_at_ns=i))
            assert [await child.expect(ipc.Pong) for _ in range(50)] == [
                ipc.Pong(sent_at_ns=i) for i in range(50)
            ]
        await child.send(ipc.Shutdown())
        assert await child.wait_exit() == ipc.ExitCode.OK
