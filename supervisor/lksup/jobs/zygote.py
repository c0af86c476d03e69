"""Templates (zygotes): pre-imported processes that job processes are forked from.

A fresh interpreter that imports livekit.agents and its plugins costs about a second and over
100 MB of memory of its own. A template imports once, calls ``gc.freeze()`` (so the collector
never writes to the pages it holds, and they stay shared copy-on-write), and forks: a job
process is then ready in milliseconds, and most of its memory is shared with every other
process forked from the same template. The tree:

* a **base** template (``python -m lksup.jobs.zygote --ipc-fd N``, one per interpreter for the
  fleet) imports what every agent shares: livekit.agents, livekit.rtc, the plugins and models
  the fleet preloads;
* an **agent** template is forked from the base (``ForkTemplate``), takes the agent's
  environment and working directory, and imports the agent's modules; an agent that opts out
  of sharing gets a template of its own, spawned with its environment (``ZygoteStart`` with
  ``imports``);
* a **job process** is forked from its agent's template (``ForkJob``) and runs the ordinary job
  process protocol (``lksup.jobs.child``) on the IPC socket it was given: ``Initialize``, prewarm,
  ``Ready``...

Isolation is that of a spawned process: every fork calls ``setsid()`` (signals sent to the
supervisor's process group never reach it), gets its own stdout and stderr (descriptors the
supervisor passed), closes the template's control socket, restores default signal handling,
and drops the template's log handlers. Every template exits when its control socket reaches
EOF (the supervisor went away or stopped it); a job process exits on the EOF of its own IPC
socket, so nothing outlives the supervisor. A template reaps its children and reports each
exit status (``Exited``); each ``Forked`` answer carries the child's pidfd, through which the
supervisor signals it without any risk of pid reuse.

Templates never start threads or event loops: forking a process with threads leaves their
locks behind. Their loop is ``poll()`` over the control socket and a signal wakeup pipe. An
agent whose modules start threads at import, or read their environment at import before the
agent template has set it, opts out (``process_start: isolated`` or ``spawn``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence

from lksup.jobs.channel import exit_process, flush_std_streams
from lksup.jobs.framing import FrameDecoder, FramingError
from lksup.jobs.ipc import (
    ChildMessage,
    ExitCode,
    Exited,
    Forked,
    ForkJob,
    ForkTemplate,
    Initialize,
    IpcError,
    Ping,
    Pong,
    Shutdown,
    ZygoteReady,
    ZygoteStart,
    decode,
    encode,
)
from lksup.jobs.loader import LoadError, describe_exception
from lksup.jobs.sigmask import accept_signals

__all__ = ["main"]

logger = logging.getLogger("lksup.zygote")

#: Descriptors that may come with one message (a fork request carries three).
_MAX_FDS = 16
_RECEIVE = 65536
_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
_PR_SET_PDEATHSIG = 1


class _StartFailed(Exception):
    pass


def _import_all(modules: Sequence[str], *, optional: bool) -> list[str]:
    """Import ``modules``; failures of optional ones are returned as ``module: error``."""
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # user code: SystemExit and friends are failures too
            detail = describe_exception(exc, with_location=True)
            if not optional:
                raise _StartFailed(f"cannot import module {name!r}: {detail}") from None
            failed.append(f"{name}: {detail}")
    return failed


#: lksup's own job runtime and what it imports lazily: every forked job process runs them.
_RUNTIME = (
    "lksup.jobs.child",
    "lksup.jobs.rehearsal",
    "lksup.jobs.sdk.runtime",
    "anyio._backends._asyncio",
)
#: Shared packages a template reports having imported (the base can preload them).
_SHAREABLE = ("livekit.agents", "livekit.rtc")


def _plugins() -> tuple[str, ...]:
    """The ``livekit.plugins.*`` packages and the SDK's packages imported so far."""
    return tuple(
        sorted(
            name
            for name in sys.modules
            if (name.startswith("livekit.plugins.") and name.count(".") == 2) or name in _SHAREABLE
        )
    )


class _Unforkable(Exception):
    """Prewarm left the template in a state that cannot be forked safely (the message: why)."""


def _thread_count() -> int:
    """How many threads this process has (the kernel's count: native ones too)."""
    return len(os.listdir("/proc/self/task"))


def _descriptors() -> dict[int, str]:
    """This process's open descriptors and what each is."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return found


def _prepare(payload: bytes) -> bool:
    """Run the prewarm of the encoded ``Initialize`` here, once, for every fork to adopt.

    A fork copies memory, not threads: prewarm that leaves a thread running (a client's
    background thread, a native thread pool) would leave its forks with locks nobody releases,
    and a descriptor it opened (a connection) would be shared by every fork. Either is
    ``_Unforkable``: the agent's processes then run prewarm themselves.

    Raises:
        _StartFailed: the agent cannot be imported, or prewarm raised (its init failure).
        _Unforkable: prewarm left threads or descriptors behind.
    """
    from lksup.jobs import child

    init = decode(payload)
    if not isinstance(init, Initialize):
        raise _StartFailed(f"prepare carries {type(init).__name__}, not Initialize")
    threads, python_threads, descriptors = _thread_count(), threading.enumerate(), _descriptors()
    try:
        prepared = child.prepare(init)
    except LoadError as exc:
        raise _StartFailed(str(exc)) from None
    left = []
    started = _thread_count() - threads
    if started > 0:
        names = [t.name for t in threading.enumerate() if t not in python_threads]
        if started > len(names):
            names.append(f"{started - len(names)} native")
        left.append(f"{started} thread(s) still running ({', '.join(names)})")
    opened = sorted(set(_descriptors().items()) - set(descriptors.items()))
    if opened:
        left.append("descriptors open (" + ", ".join(what for _fd, what in opened[:4]) + ")")
    if left:
        raise _Unforkable(f"prewarm {init.prewarm} left " + " and ".join(left))
    child.keep_prepared(init, prepared)
    return True


class Template:
    """One template's loop: fork on request, reap and report children, exit on EOF."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._decoder = FrameDecoder()
        self._fds: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._children: set[int] = set()

    def send(self, message: ChildMessage, fds: Sequence[int] = ()) -> None:
        """Send one frame (with descriptors); a gone supervisor is noticed by the loop."""
        with contextlib.suppress(OSError):
            if fds:
                socket.send_fds(self._sock, [encode(message)], list(fds))
            else:
                self._sock.sendall(encode(message))

    def start(self, start: ZygoteStart) -> bool:
        """Import, freeze, answer ``ZygoteReady``; False when the template must exit."""
        began = time.perf_counter()
        try:
            failed = _import_all(_RUNTIME + start.preload, optional=True)
            _import_all(start.imports, optional=False)
        except _StartFailed as exc:
            elapsed = time.perf_counter() - began
            self.send(ZygoteReady(pid=os.getpid(), error=str(exc), init_seconds=elapsed))
            return False
        for failure in failed:
            logger.warning("Preload of %s", failure)
        from lksup.jobs.rehearsal import rehearse

        rehearse()  # the job-start path's first-use costs, paid once for every fork
        prepared = False
        if start.prepare:
            try:
                prepared = _prepare(start.prepare)
            except _StartFailed as exc:
                elapsed = time.perf_counter() - began
                self.send(ZygoteReady(pid=os.getpid(), error=str(exc), init_seconds=elapsed))
                return False
            except _Unforkable as exc:  # the supervisor stops it and never asks it to fork
                elapsed = time.perf_counter() - began
                self.send(ZygoteReady(pid=os.getpid(), unforkable=str(exc), init_seconds=elapsed))
                return True
        gc.collect()
        gc.freeze()  # what was imported stays put: its pages stay shared with every fork
        self.send(
            ZygoteReady(
                pid=os.getpid(),
                init_seconds=time.perf_counter() - began,
                plugins=_plugins(),
                preload_failed=tuple(failed),
                prepared=prepared,
            )
        )
        return True

    def serve(self) -> None:
        """Serve fork requests until EOF or ``Shutdown``."""
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            self._reap()
            try:
                events = poller.poll()
            except InterruptedError:
                continue
            for fd, _event in events:
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                elif not self._receive():
                    return

    def _receive(self) -> bool:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self._sock, _RECEIVE, _MAX_FDS)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return True
        except OSError:
            return False
        self._fds.extend(fds)
        if not data:
            return False
        try:
            payloads = self._decoder.feed(data)
        except FramingError as exc:
            logger.error("Template control stream broken: %s.", exc)
            return False
        for payload in payloads:
            try:
                message = decode(payload)
            except IpcError as exc:
                logger.warning("Ignoring a frame: %s.", exc)
                continue
            match message:
                case ForkJob(request_id=request_id):
                    self._fork(request_id, self._take(3), _run_job)
                case ForkTemplate():
                    self._fork(message.request_id, self._take(3), _template_runner(message))
                case Ping(sent_at_ns=sent_at_ns):
                    self.send(Pong(sent_at_ns=sent_at_ns))
                case Shutdown():
                    return False
                case _:
                    logger.warning("Ignoring an unexpected %s.", type(message).__name__)
        return True

    def _take(self, count: int) -> list[int]:
        taken, self._fds = self._fds[:count], self._fds[count:]
        return taken

    def _fork(self, request_id: str, fds: list[int], run: Callable[[int], int]) -> None:
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            self.send(Forked(request_id=request_id, error="the request carried no descriptors"))
            return
        control, out, err = fds
        flush_std_streams()
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            self.send(Forked(request_id=request_id, error=f"fork failed: {exc}"))
            return
        if pid == 0:  # the child: never returns into this loop
            code: int = ExitCode.OK
            try:
                self._become_child(out, err, keep=control)
                code = run(control)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 70
            finally:
                exit_process(code)
        self._children.add(pid)
        for fd in fds:
            os.close(fd)
        try:
            pidfd = os.pidfd_open(pid)  # works for a child that already ended: not reaped yet
        except OSError as exc:
            os.kill(pid, signal.SIGKILL)
            self.send(Forked(request_id=request_id, error=f"pidfd_open failed: {exc}"))
            return
        self.send(Forked(request_id=request_id, pid=pid), [pidfd])
        os.close(pidfd)

    def _become_child(self, out: int, err: int, *, keep: int) -> None:
        os.setsid()
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        os.dup2(out, 1)
        os.dup2(err, 2)
        for fd in (out, err, self._wake_r, self._wake_w, *self._fds):
            if fd > 2 and fd != keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._sock.close()
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)

    def _reap(self) -> None:
        for pid in list(self._children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                self._children.discard(pid)
                continue
            if done:
                self._children.discard(pid)
                self.send(Exited(pid=pid, returncode=os.waitstatus_to_exitcode(status)))


def _run_job(ipc_fd: int) -> int:
    from lksup.jobs import child

    return child.main(["--ipc-fd", str(ipc_fd)])


def _template_runner(request: ForkTemplate) -> Callable[[int], int]:
    def run(control_fd: int) -> int:
        os.environ.clear()
        os.environ.update(request.env)
        if request.cwd:
            os.chdir(request.cwd)
        return _serve_template(
            control_fd,
            ZygoteStart(
                imports=request.imports,
                log_level=request.log_level,
                agent_name=request.agent_name,
                prepare=request.prepare,
            ),
        )

    return run


def _receive_start(sock: socket.socket) -> ZygoteStart | None:
    decoder = FrameDecoder()
    while True:
        data = sock.recv(_RECEIVE)
        if not data:
            return None
        payloads = decoder.feed(data)
        if payloads:
            first = decode(payloads[0])
            if not isinstance(first, ZygoteStart):
                raise IpcError(f"first message is {type(first).__name__}, not ZygoteStart")
            return first


def _serve_template(fd: int, start: ZygoteStart | None = None) -> int:
    """Run a template on control descriptor ``fd``; ``start`` when it was forked with one."""
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    os.set_inheritable(fd, False)
    if start is None:
        try:
            start = _receive_start(sock)
        except (FramingError, IpcError) as exc:
            logger.error("Protocol error before ZygoteStart: %s.", exc)
            return ExitCode.PROTOCOL
        if start is None:
            return ExitCode.OK
    if not logging.getLogger().handlers:  # a forked template dropped its parent's handler
        logging.basicConfig(stream=sys.stderr, format=_LOG_FORMAT)
    logging.getLogger().setLevel(start.log_level.upper() or "INFO")
    cwd = os.getcwd()
    if not sys.path or sys.path[0] != cwd:
        sys.path.insert(0, cwd)
    template = Template(sock)
    if not template.start(start):
        return ExitCode.INIT_FAILED
    template.serve()
    return ExitCode.OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run a spawned template; returns its exit code."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    accept_signals()  # spawned with group signals blocked (lksup.jobs.sigmask)
    parser = argparse.ArgumentParser(
        prog="python -m lksup.jobs.zygote",
        description="lksup template process (started by the supervisor, not by hand).",
    )
    parser.add_argument("--ipc-fd", type=int, required=True, help="the control socket")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return ExitCode.USAGE if exc.code else ExitCode.OK
    _die_with_parent()
    return _serve_template(args.ipc_fd)


def _die_with_parent() -> None:
    """A spawned template is killed with the supervisor, even in the middle of its imports.

    (Its control socket's EOF is only seen between imports.) Forked templates and job processes
    do not get this: they must survive the death of the template they were forked from.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main())
