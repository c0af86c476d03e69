"""The fleet's inference process: ``python -m lksup.jobs.inference --ipc-fd N``.

livekit-agents plugins register *inference runners* (the turn detector's end-of-turn model,
for example) that the SDK's worker runs in one inference process per worker, so that its jobs
share one copy of the model. lksup starts one such process per distinct set of runners for
the whole fleet (usually one), supervised like a job process: ten agents that use the turn
detector load its model once. Job processes report the runners their imports registered
(``Ready.inference_runners``); their ``ctx.inference_executor`` requests reach this process
through the supervisor, which relays each ``InferenceRequest`` and its ``InferenceResponse``.

Protocol, after the same start-up as a job process (own session, SIGINT ignored, log records
forwarded, EOF watchdog): the first frame is ``StartInference(runners)``; each runner class is
imported (``module:qualname``), instantiated without arguments and initialised (its model
loaded), then ``Ready{pid, init_seconds}`` is sent, or ``Ready{error}`` and exit
``ExitCode.INIT_FAILED``. Then, until ``Shutdown``, SIGTERM or EOF: ``InferenceRequest`` runs
the runner of its method in a thread pool (requests run concurrently; a runner's ``run`` is
synchronous) and answers ``InferenceResponse`` (``error`` for an unknown method or a runner that
raised, the process goes on); ``Ping`` is answered with ``Pong`` from the event loop.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
from anyio.abc import UNIXSocketStream

from lksup.jobs.channel import ForwardingHandler, Outbox, arm_exit_watchdog, start_eof_watchdog
from lksup.jobs.framing import FrameDecoder, FramingError
from lksup.jobs.ipc import (
    ExitCode,
    InferenceRequest,
    InferenceResponse,
    IpcError,
    Ping,
    Pong,
    Ready,
    Shutdown,
    StartInference,
    decode,
)
from lksup.jobs.loader import describe_exception

__all__ = ["load_runners", "main"]

logger = logging.getLogger("lksup.inference")

#: Runner threads: inference is CPU-bound; more threads than cores only queue in the GIL.
MAX_THREADS = max(2, os.cpu_count() or 1)


class RunnerLoadError(Exception):
    """A runner cannot be imported, built or initialised (the message says which and why)."""


def load_runners(refs: Sequence[str]) -> dict[str, Any]:
    """Import, build and initialise each runner; ``{INFERENCE_METHOD: runner}``.

    Raises:
        RunnerLoadError: the first runner that fails.
    """
    runners: dict[str, Any] = {}
    for ref in refs:
        module_name, _, qualname = ref.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part)
            method = str(obj.INFERENCE_METHOD)
            runner = obj()
            started = time.perf_counter()
            runner.initialize()
        except BaseException as exc:  # user or plugin code: everything is a failure here
            detail = describe_exception(exc, with_location=True)
            raise RunnerLoadError(f"inference runner {ref} failed to load: {detail}") from None
        logger.info("Inference runner %s ready in %.2fs.", method, time.perf_counter() - started)
        runners[method] = runner
    return runners


class InferenceServer:
    """Serves inference requests for the loaded runners."""

    def __init__(self, runners: dict[str, Any], outbox: Outbox) -> None:
        self._runners = runners
        self._outbox = outbox
        self._limiter = anyio.CapacityLimiter(MAX_THREADS)
        self._done = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None

    async def serve(
        self, sock: socket.socket, decoder: FrameDecoder, received: list[bytes]
    ) -> None:
        """Serve until ``Shutdown``, SIGTERM or EOF."""
        stream = await UNIXSocketStream.from_socket(sock)
        async with stream, anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._watch_sigterm)
            tg.start_soon(self._read, stream, decoder, received)
            await self._done.wait()
            tg.cancel_scope.cancel()

    async def _watch_sigterm(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                logger.info("SIGTERM received.")
                self._done.set()

    async def _read(
        self, stream: UNIXSocketStream, decoder: FrameDecoder, received: list[bytes]
    ) -> None:
        for payload in received:
            self._dispatch(payload)
        while True:
            try:
                data = await stream.receive()
                payloads = decoder.feed(data)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._done.set()
                return
            except FramingError as exc:
                logger.error("IPC stream broken: %s.", exc)
                self._done.set()
                return
            for payload in payloads:
                self._dispatch(payload)

    def _dispatch(self, payload: bytes) -> None:
        try:
            msg = decode(payload)
        except IpcError as exc:
            logger.warning("Ignoring an IPC frame: %s.", exc)
            return
        match msg:
            case Ping(sent_at_ns=sent_at_ns):
                self._outbox.send(Pong(sent_at_ns=sent_at_ns))
            case InferenceRequest():
                assert self._tg is not None
                self._tg.start_soon(self._infer, msg)
            case Shutdown():
                self._done.set()
            case _:
                logger.warning("Ignoring an unexpected %s message.", type(msg).__name__)

    async def _infer(self, request: InferenceRequest) -> None:
        runner = self._runners.get(request.method)
        if runner is None:
            known = ", ".join(sorted(self._runners)) or "none"
            error = f"unknown inference method {request.method!r} (loaded: {known})"
            self._outbox.send(InferenceResponse(request_id=request.request_id, error=error))
            return
        try:
            data = await anyio.to_thread.run_sync(runner.run, request.data, limiter=self._limiter)
        except Exception as exc:
            logger.exception("Inference %s failed.", request.method)
            self._outbox.send(
                InferenceResponse(request_id=request.request_id, error=describe_exception(exc))
            )
            return
        self._outbox.send(
            InferenceResponse(
                request_id=request.request_id, data=data or b"", has_data=data is not None
            )
        )


def _receive_start(
    sock: socket.socket, decoder: FrameDecoder
) -> tuple[StartInference, list[bytes]] | None:
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        if not data:
            return None
        payloads = decoder.feed(data)
        if not payloads:
            continue
        first = decode(payloads[0])
        if not isinstance(first, StartInference):
            raise IpcError(f"first message is {type(first).__name__}, not StartInference")
        return first, payloads[1:]


def _serve(sock: socket.socket, outbox: Outbox) -> ExitCode:
    decoder = FrameDecoder()
    try:
        first = _receive_start(sock, decoder)
    except (FramingError, IpcError) as exc:
        logger.error("IPC protocol error before StartInference: %s.", exc)
        return ExitCode.PROTOCOL
    if first is None:
        return ExitCode.OK
    start, received = first
    logging.getLogger().setLevel(start.log_level.upper() or "INFO")
    began = time.perf_counter()
    try:
        runners = load_runners(start.runners)
    except RunnerLoadError as exc:
        outbox.send(
            Ready(pid=os.getpid(), error=str(exc), init_seconds=time.perf_counter() - began)
        )
        return ExitCode.INIT_FAILED
    outbox.send(Ready(pid=os.getpid(), init_seconds=time.perf_counter() - began))
    server = InferenceServer(runners, outbox)
    anyio.run(server.serve, sock, decoder, received, backend="asyncio")
    return ExitCode.OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the inference process; returns its exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m lksup.jobs.inference",
        description="lksup inference process (started by the supervisor, not by hand).",
    )
    parser.add_argument("--ipc-fd", type=int, required=True, help="the IPC socket's descriptor")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return ExitCode.USAGE if exc.code else ExitCode.OK
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        sock = socket.socket(fileno=args.ipc_fd)
    except OSError as exc:
        print(f"lksup.jobs.inference: --ipc-fd {args.ipc_fd}: {exc}", file=sys.stderr)  # noqa: T201
        return ExitCode.USAGE
    os.set_inheritable(args.ipc_fd, False)
    sock.settimeout(60.0)  # never blocking: see lksup.jobs.channel
    outbox = Outbox(sock)
    start_eof_watchdog(sock, exit_timeout=1.0, exit_code=ExitCode.OK)
    handler = ForwardingHandler(outbox)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        code = _serve(sock, outbox)
    finally:
        root.removeHandler(handler)
        outbox.close(1.0)
        sock.close()
    return code


if __name__ == "__main__":
    status = main()
    arm_exit_watchdog(2.0, status)
    sys.exit(status)
