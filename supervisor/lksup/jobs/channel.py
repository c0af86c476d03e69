"""The child's outbound side of the IPC socket, its log forwarding, and its lifetime guards.

Why a writer thread: frames come from several places at once: the event loop (``Pong``,
``JobStarted``...), the synchronous start-up phase before any event loop exists (``Ready``,
import-time logs), and logging calls from any thread user code starts. One ``Outbox`` takes
them all through a thread-safe queue, in order, and a single daemon thread writes them. A
sender never blocks, and the event loop never waits on a slow reader; a blocked event loop
still stops ``Pong`` (health checks keep their meaning) because pongs are queued by the loop.

Invariants:

* frames reach the socket whole and in the order ``send`` was called (one writer);
* the shared file descriptor stays non-blocking, as anyio's reader requires: every socket
  object on it uses a timeout (never ``settimeout(None)``), which waits with ``poll`` instead;
* logging never feeds itself: records emitted on the writer thread are not forwarded, and the
  writer never logs. When the parent lags, log records beyond ``max_log_backlog`` queued frames
  are dropped and counted (a WARNING record reports the count); protocol frames never are;
* ``close`` flushes within a bounded time, so an exiting child never hangs on its parent.

Lifetime guards: ``start_eof_watchdog`` ends the process shortly after the supervisor's end of
the socket closes even when user code has wedged the event loop (Linux: ``POLLRDHUP``), and
``arm_exit_watchdog`` bounds interpreter shutdown (non-daemon threads, ``atexit`` handlers).

``exit_process`` is how a job process ends: ``atexit`` handlers, flushed output, then
``os._exit``, without finalising the interpreter. livekit-rtc's native runtime keeps threads
that call into Python; one that calls in while the interpreter is being finalised is unwound
by it, which aborts the process (a Rust panic, "panic in a function that cannot unwind"), so a
job that succeeded would end as killed by SIGABRT. The SDK's own job processes end the same way
(multiprocessing ends its children with ``os._exit``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import select
import socket
import sys
import threading
from typing import Protocol

from lksup.jobs.ipc import ChildMessage, LogRecord, encode

__all__ = [
    "ForwardingHandler",
    "LogSink",
    "Outbox",
    "arm_exit_watchdog",
    "exit_process",
    "extra_fields",
    "flush_std_streams",
    "set_thread_job",
    "start_eof_watchdog",
]

#: How long one blocked ``send`` waits before it retries (not a give-up: see module docstring).
_SEND_WAIT = 60.0
#: Longest text (message, traceback) forwarded in one record; the rest is cut.
MAX_LOG_TEXT = 256 * 1024


class Outbox:
    """Queue of frames to the parent, written by one daemon thread.

    Args:
        sock: the connected IPC socket; the outbox writes through its own duplicate.
        max_log_backlog: queued frames beyond which log records are dropped.
    """

    def __init__(self, sock: socket.socket, *, max_log_backlog: int = 10_000) -> None:
        self._sock = socket.socket(fileno=os.dup(sock.fileno()))
        self._sock.settimeout(_SEND_WAIT)
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._max_log_backlog = max_log_backlog
        self._broken = False
        self._thread = threading.Thread(target=self._run, name="lksup-ipc-writer", daemon=True)
        self._thread.start()

    @property
    def writer_ident(self) -> int | None:
        """Thread id of the writer (records logged there are not forwarded)."""
        return self._thread.ident

    @property
    def broken(self) -> bool:
        """True once a write failed (the parent is gone); later frames are discarded."""
        return self._broken

    def send(self, msg: ChildMessage) -> None:
        """Queue ``msg``; never blocks.

        Raises:
            FrameTooLarge: ``msg`` cannot be framed (a local bug).
            ValueError: a number is outside its field's range.
        """
        self._queue.put(encode(msg))

    def has_log_room(self) -> bool:
        """Whether the backlog leaves room for another log record."""
        return self._queue.qsize() < self._max_log_backlog

    def close(self, timeout: float) -> bool:
        """Flush what is queued, waiting at most ``timeout`` seconds; True when all was sent."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False  # still writing: leave its socket alone, the process is exiting
        self._sock.close()
        return not self._broken

    def _run(self) -> None:
        while (frame := self._queue.get()) is not None:
            if self._broken:
                continue
            try:
                self._write(frame)
            except OSError:
                self._broken = True  # the parent is gone; the reader sees EOF and ends

    def _write(self, frame: bytes) -> None:
        view = memoryview(frame)
        while view:
            try:
                sent = self._sock.send(view)
            except TimeoutError:
                continue  # the parent is slow to read; it drains or it closes
            view = view[sent:]


def _cut(text: str) -> str:
    if len(text) <= MAX_LOG_TEXT:
        return text
    return f"{text[:MAX_LOG_TEXT]}... [{len(text) - MAX_LOG_TEXT} characters cut]"


class LogSink(Protocol):
    """Where ``ForwardingHandler`` puts records (an ``Outbox``)."""

    @property
    def writer_ident(self) -> int | None:
        """Thread whose records must not be forwarded."""

    def has_log_room(self) -> bool:
        """Whether another record fits in the backlog."""

    def send(self, msg: ChildMessage) -> None:
        """Queue a message."""


class ForwardingHandler(logging.Handler):
    """Sends every record to the parent as a ``LogRecord`` frame (message already formatted)."""

    def __init__(self, outbox: LogSink) -> None:
        super().__init__()
        self._outbox = outbox
        self._formatter = logging.Formatter()
        self._dropped = 0

    @property
    def dropped(self) -> int:
        """Records dropped because the parent lagged, not yet reported."""
        return self._dropped

    def emit(self, record: logging.LogRecord) -> None:
        """Forward ``record``, or count it as dropped when the backlog is full."""
        if threading.get_ident() == self._outbox.writer_ident:
            return
        try:
            if not self._outbox.has_log_room():
                self._dropped += 1
                return
            if self._dropped:
                self._outbox.send(
                    LogRecord(
                        level=logging.WARNING,
                        logger="lksup.jobs",
                        message=f"{self._dropped} log records were dropped (IPC backlog full).",
                        created=record.created,
                    )
                )
                self._dropped = 0
            self._outbox.send(self._convert(record))
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _convert(self, record: logging.LogRecord) -> LogRecord:
        exc_text = record.exc_text or ""
        if record.exc_info:
            exc_text = self._formatter.formatException(record.exc_info)
        if record.stack_info:
            stack = self._formatter.formatStack(record.stack_info)
            exc_text = f"{exc_text}\n{stack}" if exc_text else stack
        return LogRecord(
            level=record.levelno,
            logger=record.name,
            message=_cut(record.getMessage()),
            created=record.created,
            exc_text=_cut(exc_text),
            fields=extra_fields(record),
            job_id=getattr(_thread_job, "job_id", ""),
        )


#: The job a thread of a job host runs (``set_thread_job``): its records name it.
_thread_job = threading.local()


def set_thread_job(job_id: str) -> None:
    """Records logged on this thread from now on belong to job ``job_id`` (a job host's)."""
    _thread_job.job_id = job_id


#: Attributes every ``logging.LogRecord`` has; anything else came from ``extra=`` or a filter.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
#: Most extra fields forwarded per record, and the longest text of one.
MAX_FIELDS = 32
MAX_FIELD_TEXT = 1024


def extra_fields(record: logging.LogRecord) -> dict[str, str]:
    """The record's extra attributes (``extra=``, the SDK's job context fields) as text."""
    fields: dict[str, str] = {}
    for key, value in vars(record).items():
        if key in _STANDARD or key.startswith("_") or len(fields) >= MAX_FIELDS:
            continue
        text = value if isinstance(value, str) else repr(value)
        fields[key] = text if len(text) <= MAX_FIELD_TEXT else text[: MAX_FIELD_TEXT - 3] + "..."
    return fields


def flush_std_streams() -> None:
    """Write out what Python buffered for stdout and stderr (before a fork or ``os._exit``)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed pipe or file: nothing to save
            stream.flush()


def _hard_exit(code: int) -> None:
    flush_std_streams()
    os._exit(code)


def exit_process(code: int) -> None:
    """End the process: ``atexit`` handlers, flushed output, no interpreter finalisation."""
    try:
        atexit._run_exitfuncs()
    finally:
        _hard_exit(code)


def start_eof_watchdog(sock: socket.socket, *, exit_timeout: float, exit_code: int) -> bool:
    """End the process ``exit_timeout`` s after the peer closes ``sock``, whatever the loop does.

    Returns False where the OS cannot watch for a peer's close without reading (no
    ``POLLRDHUP``); then only the event loop notices EOF.
    """
    rdhup = getattr(select, "POLLRDHUP", None)
    if rdhup is None or not hasattr(select, "poll"):
        return False
    fd = os.dup(sock.fileno())  # its own descriptor, never closed: the watch stays valid
    mask = rdhup | select.POLLHUP | select.POLLERR | select.POLLNVAL

    def watch() -> None:
        poller = select.poll()
        poller.register(fd, rdhup)
        while not any(events & mask for _fd, events in poller.poll()):
            pass  # poll() without a timeout only returns for a registered event
        threading.Event().wait(exit_timeout)  # the event loop's chance to end cleanly
        _hard_exit(exit_code)

    threading.Thread(target=watch, name="lksup-eof-watchdog", daemon=True).start()
    return True


def arm_exit_watchdog(timeout: float, code: int) -> None:
    """Exit with ``code`` after ``timeout`` s even if interpreter shutdown hangs."""
    timer = threading.Timer(timeout, _hard_exit, args=(code,))
    timer.daemon = True
    timer.name = "lksup-exit-watchdog"
    timer.start()
