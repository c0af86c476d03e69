"""Entry point of a job process: ``python -m lksup.jobs.child --ipc-fd N``.

The supervisor starts a fresh interpreter in its own session, in the agent's working
directory and environment, with one end of a socketpair (``AF_UNIX``, ``SOCK_STREAM``) as
file descriptor ``N``. The process then:

1. ignores SIGINT (Ctrl+C in a terminal is the supervisor's business), installs faulthandler
   (fatal errors, and SIGUSR1 dumps every thread's stack to stderr), starts the writer thread
   and the EOF watchdog (``lksup.jobs.channel``) and forwards every logging record as a
   ``LogRecord`` frame (stdout and stderr are left alone: the supervisor reads both pipes);
2. reads the first frame, which must be ``Initialize`` (EOF first: exit 0; anything else: exit
   ``ExitCode.PROTOCOL``); sets the root log level, puts the working directory first on
   ``sys.path``, imports the entrypoint, prewarm and request functions and runs ``prewarm(proc)``
   in the main thread, before any event loop exists, as the SDK does (so prewarm may itself
   call ``asyncio.run``). The supervisor bounds this phase with its initialisation timeout;
   SIGTERM keeps its default action here;
3. sends ``Ready{pid, init_seconds}``, or ``Ready{error}`` and exits ``ExitCode.INIT_FAILED``;
4. serves the supervisor's messages on an anyio event loop (``lksup.jobs.runtime``) until the
   job has ended, the process was shut down while idle, or the socket reached EOF;
5. flushes what is queued for the supervisor (bounded) and exits with the runtime's code.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import anyio

from lksup.jobs.channel import (
    ForwardingHandler,
    Outbox,
    arm_exit_watchdog,
    exit_process,
    start_eof_watchdog,
)
from lksup.jobs.context import JobProcess
from lksup.jobs.framing import FrameDecoder, FramingError
from lksup.jobs.ipc import (
    RUNTIME_LIVEKIT_AGENTS,
    ExitCode,
    Initialize,
    IpcError,
    ParentMessage,
    Ready,
    decode,
)
from lksup.jobs.loader import AgentFunctions, LoadError, load_agent, run_prewarm
from lksup.jobs.runtime import EOF_CLEANUP_TIMEOUT, EXIT_TIMEOUT, ChildRuntime
from lksup.jobs.sigmask import accept_signals

if TYPE_CHECKING:
    from lksup.jobs.sdk.runtime import Prepared as SdkPrepared
    from lksup.jobs.sdk.runtime import SdkRuntime

__all__ = [
    "Prepared",
    "ProtocolError",
    "keep_prepared",
    "main",
    "prepare",
    "receive_first",
    "run_child",
]

logger = logging.getLogger("lksup.jobs")

#: How long the final flush of queued frames may take.
FLUSH_TIMEOUT = 1.0
#: After the supervisor's end closes, how long before the EOF watchdog forces the exit.
EOF_EXIT_TIMEOUT = EOF_CLEANUP_TIMEOUT + 1.0
#: How long one blocking read of the start-up phase waits before it waits again.
_RECEIVE_WAIT = 60.0


class ProtocolError(Exception):
    """The supervisor's first frame is not what this process is for (or not a frame)."""


M = TypeVar("M", bound=ParentMessage)


def _open_socket(fd: int) -> socket.socket:
    sock = socket.socket(fileno=fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise OSError(f"fd {fd} is not a Unix stream socket")
    os.set_inheritable(fd, False)  # never leaks into processes that user code starts
    # A timeout (never None) keeps the descriptor non-blocking for anyio: see channel.py.
    sock.settimeout(_RECEIVE_WAIT)
    return sock


def receive_first(
    sock: socket.socket, decoder: FrameDecoder, expected: type[M]
) -> tuple[M, list[bytes]] | None:
    """The first message, which must be ``expected``, and the payloads after it; None at EOF.

    Raises:
        ProtocolError: not a frame, or another message.
    """
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        if not data:
            return None
        try:
            payloads = decoder.feed(data)
            if not payloads:
                continue
            first = decode(payloads[0])
        except (FramingError, IpcError) as exc:
            raise ProtocolError(str(exc)) from None
        if not isinstance(first, expected):
            name = expected.__name__
            raise ProtocolError(f"first message is {type(first).__name__}, not {name}")
        return first, payloads[1:]


def _set_log_level(name: str) -> None:
    levels = logging.getLevelNamesMapping() | {"WARN": logging.WARNING, "TRACE": 5}
    level = levels.get(name.strip().upper()) if name else logging.INFO
    logging.getLogger().setLevel(level or logging.INFO)
    if level is None:
        logger.warning("Unknown log level %r; using INFO.", name)


@dataclass(frozen=True)
class Prepared:
    """An lksup agent's functions and the ``JobProcess`` its prewarm filled."""

    functions: AgentFunctions
    proc: JobProcess


#: What the template this process was forked from prepared, and for which ``Initialize``.
_prepared: tuple[Initialize, Prepared | SdkPrepared] | None = None


def prepare(init: Initialize) -> Prepared | SdkPrepared:
    """Import the agent's functions and run its prewarm.

    In the job process, or once in the agent's template before it forks (every process forked
    from it adopts the result).

    Raises:
        LoadError: what ``Ready.error`` says.
    """
    _set_log_level(init.log_level)
    cwd = os.getcwd()
    if not sys.path or sys.path[0] != cwd:
        sys.path.insert(0, cwd)
    if init.runtime == RUNTIME_LIVEKIT_AGENTS:
        from lksup.jobs.sdk import runtime as sdk_runtime  # imports nothing of the SDK yet

        return sdk_runtime.prepare(init)
    if init.runtime not in ("", "lksup"):
        raise LoadError(f"unknown runtime {init.runtime!r}")
    proc = JobProcess(agent_name=init.agent_name)
    functions = load_agent(init)
    run_prewarm(functions, proc, ref=init.prewarm)
    return Prepared(functions=functions, proc=proc)


def keep_prepared(init: Initialize, prepared: Prepared | SdkPrepared) -> None:
    """A template keeps what it prepared for ``init``: its forks adopt it."""
    global _prepared
    _prepared = (init, prepared)


def _initialise(init: Initialize, outbox: Outbox) -> ChildRuntime | SdkRuntime | None:
    """Import and prewarm (unless the template did), then send ``Ready``.

    Returns the runtime, or None when that failed.
    """
    started = time.perf_counter()
    prepared = _prepared[1] if _prepared is not None and _prepared[0] == init else None
    if prepared is None:
        try:
            prepared = prepare(init)
        except LoadError as exc:
            elapsed = time.perf_counter() - started
            outbox.send(Ready(pid=os.getpid(), error=str(exc), init_seconds=elapsed))
            return None
    else:
        _set_log_level(init.log_level)
    if not isinstance(prepared, Prepared):
        from lksup.jobs.sdk import runtime as sdk_runtime

        return sdk_runtime.initialise(init, outbox, prepared)
    outbox.send(Ready(pid=os.getpid(), init_seconds=time.perf_counter() - started))
    functions, proc = prepared.functions, prepared.proc
    if init.max_jobs > 1:
        from lksup.jobs.threads import ThreadHost

        return ThreadHost(init=init, functions=functions, proc=proc, outbox=outbox)
    return ChildRuntime(init=init, functions=functions, proc=proc, outbox=outbox)


def _serve(sock: socket.socket, outbox: Outbox) -> ExitCode:
    decoder = FrameDecoder()
    try:
        first = receive_first(sock, decoder, Initialize)
    except ProtocolError as exc:
        logger.error("IPC protocol error before Initialize: %s.", exc)
        return ExitCode.PROTOCOL
    if first is None:
        return ExitCode.OK
    init, received = first
    runtime = _initialise(init, outbox)
    if runtime is None:
        return ExitCode.INIT_FAILED
    code: ExitCode = anyio.run(runtime.serve, sock, decoder, received, backend="asyncio")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job process; returns its exit code (``ExitCode``)."""
    return run_child(argv, "lksup.jobs.child", "lksup job process", _serve)


def run_child(
    argv: Sequence[str] | None,
    module: str,
    what: str,
    serve: Callable[[socket.socket, Outbox], ExitCode],
) -> int:
    """The start and end every child process of the supervisor shares.

    Parses ``--ipc-fd``, ignores SIGINT, turns faulthandler on (SIGUSR1 dumps stacks), opens
    the socket, starts the outbox, the EOF watchdog and log forwarding, runs ``serve`` and
    flushes what is queued (bounded). Returns the exit code.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    accept_signals()  # spawned with group signals blocked (lksup.jobs.sigmask)
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=f"{what} (started by the supervisor, not by hand).",
    )
    parser.add_argument("--ipc-fd", type=int, required=True, help="the IPC socket's descriptor")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return ExitCode.USAGE if exc.code else ExitCode.OK
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        sock = _open_socket(args.ipc_fd)
    except OSError as exc:
        print(f"{module}: --ipc-fd {args.ipc_fd}: {exc}", file=sys.stderr)  # noqa: T201
        return ExitCode.USAGE
    outbox = Outbox(sock)
    start_eof_watchdog(sock, exit_timeout=EOF_EXIT_TIMEOUT, exit_code=ExitCode.OK)
    handler = ForwardingHandler(outbox)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        code = serve(sock, outbox)
    finally:
        root.removeHandler(handler)
        outbox.close(FLUSH_TIMEOUT)
        sock.close()
    return code


if __name__ == "__main__":
    status = main()
    arm_exit_watchdog(EXIT_TIMEOUT, status)  # bounds the atexit handlers
    exit_process(status)  # not sys.exit: see lksup.jobs.channel
