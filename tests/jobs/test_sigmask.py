"""Group signals at a spawn: a child is born with them blocked and settles them itself.

A group signal that lands between the fork and the child's ``setsid()`` used to kill a job
process still starting (SIGTERM's default action): a refill spawned while the supervisor's group
was signalled died "killed by signal SIGTERM before it was ready".
"""

from __future__ import annotations

import ast
import signal
import socket
import subprocess
import sys
import textwrap

import anyio
import pytest

from lksup.jobs.sigmask import GROUP_SIGNALS, accept_signals, blocked_while_spawning

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _blocked() -> set[int]:
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, []))


def _child(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


async def _spawn(body: str) -> anyio.abc.Process:
    with blocked_while_spawning():
        return await anyio.open_process(_child(body), start_new_session=True)


async def test_a_child_is_spawned_with_the_group_signals_blocked_and_the_caller_unchanged() -> None:
    before = _blocked()
    process = await _spawn(
        """
        import signal
        print(sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])))
        """
    )
    async with process:
        assert process.stdout is not None
        out = (await process.stdout.receive()).decode()
        assert await process.wait() == 0
    assert set(ast.literal_eval(out)) >= {int(s) for s in GROUP_SIGNALS}
    assert _blocked() == before


async def test_overlapping_spawns_restore_the_mask_when_the_last_ends() -> None:
    before = _blocked()
    first = blocked_while_spawning()
    second = blocked_while_spawning()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first spawn ends while the second still forks
    assert _blocked() >= {int(s) for s in GROUP_SIGNALS}
    second.__exit__(None, None, None)
    assert _blocked() == before


def test_a_group_signal_pending_from_someone_else_is_dropped() -> None:
    # The child signals itself (not its parent): as a signal to the old group would be.
    done = subprocess.run(
        _child(
            """
            import os, signal
            from lksup.jobs.sigmask import GROUP_SIGNALS, accept_signals
            signal.pthread_sigmask(signal.SIG_BLOCK, GROUP_SIGNALS)
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGHUP)
            print([s.name for s in accept_signals()])
            print(sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
            """
        ),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr  # unblocking without settling: killed by SIGTERM
    dropped, mask = done.stdout.splitlines()
    assert ast.literal_eval(dropped) == ["SIGHUP", "SIGTERM"]
    assert not set(ast.literal_eval(mask)) & {int(s) for s in GROUP_SIGNALS}


async def test_a_signal_from_the_parent_while_starting_still_acts() -> None:
    """The supervisor stopping a process that has not settled its signals yet: not lost."""
    process = await _spawn(
        """
        import sys
        from lksup.jobs.sigmask import accept_signals
        print("started", flush=True)
        sys.stdin.readline()
        accept_signals()
        print("survived", flush=True)
        """
    )
    async with process:
        assert process.stdout is not None
        assert process.stdin is not None
        with anyio.fail_after(30):
            assert (await process.stdout.receive()).startswith(b"started")
            process.send_signal(signal.SIGTERM)  # pending: the child has it blocked
            await process.stdin.send(b"go\n")
            assert await process.wait() == -signal.SIGTERM


def test_accept_signals_with_nothing_pending_only_unblocks() -> None:
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, GROUP_SIGNALS)
    try:
        assert accept_signals() == []
        assert not _blocked() & {int(s) for s in GROUP_SIGNALS}
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@pytest.mark.parametrize(
    "module", ["lksup.jobs.child", "lksup.jobs.zygote", "lksup.jobs.inference"]
)
async def test_child_entry_points_settle_a_group_signal_that_came_before_their_session(
    module: str,
) -> None:
    """Each entry point the supervisor spawns starts by settling its signals: a SIGTERM pending
    from elsewhere (signalled itself here, as the old group would) does not kill it; it runs
    and, its socket closed by the parent, exits 0."""
    parent, child = socket.socketpair()
    with parent:
        with child, blocked_while_spawning():
            process = await anyio.open_process(
                _child(
                    f"""
                        import os, signal, sys
                        os.kill(os.getpid(), signal.SIGTERM)
                        from {module} import main
                        sys.exit(main(["--ipc-fd", "{child.fileno()}"]))
                        """
                ),
                pass_fds=[child.fileno()],
                start_new_session=True,
            )
        async with process:
            parent.close()  # EOF before Initialize: the process ends on its own
            with anyio.fail_after(60):
                code = await process.wait()
            assert code == 0, f"exit {code}: killed by the group's SIGTERM"
