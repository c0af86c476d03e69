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

import importlib
import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from lksup.jobs.channel import Outbox, arm_exit_watchdog
from lksup.jobs.child import ProtocolError, receive_first, run_child
from lksup.jobs.framing import FrameDecoder
from lksup.jobs.ipc import (
    ExitCode,
    InferenceRequest,
    InferenceResponse,
    Ping,
    Pong,
    Ready,
    Shutdown,
    StartInference,
)
from lksup.jobs.loader import describe_exception
from lksup.jobs.runtime import EXIT_TIMEOUT, IpcLoop

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


class InferenceServer(IpcLoop):
    """Serves inference requests for the loaded runners."""

    def __init__(self, runners: dict[str, Any], outbox: Outbox) -> None:
        super().__init__(outbox)
        self._runners = runners
        self._limiter = anyio.CapacityLimiter(MAX_THREADS)

    def _shutdown(self, reason: str, job_id: str = "") -> None:
        self._finish()

    def _lost(self, reason: str) -> None:
        self._finish()

    def _on_message(self, payload: bytes) -> None:
        match self._decode(payload):
            case Ping(sent_at_ns=sent_at_ns):
                self._outbox.send(Pong(sent_at_ns=sent_at_ns))
            case InferenceRequest() as request:
                assert self._tg is not None
                self._tg.start_soon(self._infer, request)
            case Shutdown():
                self._finish()
            case None:
                pass
            case other:
                logger.warning("Ignoring an unexpected %s message.", type(other).__name__)

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


def _serve(sock: socket.socket, outbox: Outbox) -> ExitCode:
    decoder = FrameDecoder()
    try:
        first = receive_first(sock, decoder, StartInference)
    except ProtocolError as exc:
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
    code: ExitCode = anyio.run(server.serve, sock, decoder, received, backend="asyncio")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the inference process; returns its exit code."""
    return run_child(argv, "lksup.jobs.inference", "lksup inference process", _serve)


if __name__ == "__main__":
    status = main()
    arm_exit_watchdog(EXIT_TIMEOUT, status)
    sys.exit(status)
