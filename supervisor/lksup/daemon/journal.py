"""What happened, kept for the control socket: the fleet's events and recent log records.

``lksup events`` and ``lksup logs`` read these buffers; ``-w``/``-f`` long-poll them
(``Journal.after``), so the control API stays plain request/response.

* ``Journal``: a bounded buffer of items numbered from 1 (``seq``); readers ask for the items
  after the last ``seq`` they saw, and may wait a little for the next ones. Appends may come
  from any thread (logging); one off the event loop's thread wakes the waiters through the
  loop's own thread-safe call (``call_soon_threadsafe``, trio's ``run_sync_soon``), never by
  polling.
* ``Event``: a Kubernetes-style event (``Normal``/``Warning``, a CamelCase reason, the agent
  and job it is about, a message), recorded by ``EventRecorder`` from the supervisor's state.
* ``LogBuffer``: a ``logging.Handler`` keeping every record as the JSON formatter shapes it,
  ``PER_AGENT`` per agent and as many about no agent (the supervisor's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

import anyio

from lksup.logs import record_fields
from lksup.pool.ended import EndedJob

__all__ = ["Event", "EventRecorder", "Journal", "LogBuffer", "Snapshot"]

T = TypeVar("T")

#: Events kept for the fleet.
EVENTS_KEPT = 2000
#: Log records kept per agent (and for the records about no agent).
PER_AGENT = 2000


class Journal(Generic[T]):
    """A bounded, numbered buffer (see the module docstring).

    ``key`` splits it into buffers of ``keep`` items each (a chatty agent never pushes out
    another's records); ``seq`` numbers run across them, so merged reads keep the order.
    """

    def __init__(self, keep: int, key: Callable[[T], Hashable] | None = None) -> None:
        self._keep = keep
        self._key = key
        self._buffers: dict[Hashable, deque[tuple[int, T]]] = {}
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._loop_thread = threading.get_ident()
        self._appended = anyio.Event()
        self._call_soon: Callable[[Callable[[], None]], object] | None = None
        """Runs a function on the event loop from another thread (set by the first reader)."""
        self.last = 0
        """The ``seq`` of the latest item (0: none yet)."""

    def append(self, item: T) -> int:
        """Keep ``item``; its ``seq``."""
        key = self._key(item) if self._key is not None else None
        with self._lock:
            seq = next(self._seq)
            buffer = self._buffers.get(key)
            if buffer is None:
                buffer = self._buffers[key] = deque(maxlen=self._keep)
            buffer.append((seq, item))
            self.last = seq
        if threading.get_ident() == self._loop_thread:
            self._wake()
        elif self._call_soon is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self._call_soon(self._wake)
        return seq

    def _wake(self) -> None:
        """Wake the readers waiting for an item (on the event loop's thread)."""
        appended, self._appended = self._appended, anyio.Event()
        appended.set()

    def since(
        self,
        seq: int,
        keep: Callable[[T], bool] | None = None,
        *,
        key: Hashable | None = None,
        only_key: bool = False,
    ) -> list[tuple[int, T]]:
        """The items after ``seq`` still kept, oldest first, that ``keep`` accepts.

        ``only_key``: from buffer ``key`` only.
        """
        with self._lock:
            buffers = (
                [self._buffers.get(key) or deque()] if only_key else list(self._buffers.values())
            )
            items = [entry for buffer in buffers for entry in buffer if entry[0] > seq]
        items.sort(key=lambda entry: entry[0])
        return [(n, item) for n, item in items if keep is None or keep(item)]

    async def after(
        self,
        seq: int,
        wait: float,
        keep: Callable[[T], bool] | None = None,
        **where: Any,
    ) -> list[tuple[int, T]]:
        """``since``, waiting up to ``wait`` seconds for the first such item."""
        self._loop_thread = threading.get_ident()
        if self._call_soon is None:
            self._call_soon = _thread_safe_caller()
        with anyio.move_on_after(wait):
            while True:
                appended = self._appended  # before looking: no append slips in between
                found = self.since(seq, keep, **where)
                if found:
                    return found
                await appended.wait()
        return []


def _thread_safe_caller() -> Callable[[Callable[[], None]], object]:
    """The running event loop's way to run a function soon, callable from any thread."""
    try:
        return asyncio.get_running_loop().call_soon_threadsafe
    except RuntimeError:  # no asyncio loop runs here: trio's
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon


@dataclass(frozen=True)
class Event:
    """Something that happened to the fleet, an agent or a job."""

    at: float
    """Wall-clock seconds."""
    type: Literal["Normal", "Warning"]
    reason: str
    """CamelCase: Applied, ApplyFailed, AgentAdded, AgentRemoved, StateChanged, Registered,
    Restarted, Drained, Undrained, JobAssigned, JobStarted, JobSucceeded, JobFailed,
    MemoryKill."""
    message: str
    agent: str | None = None
    job_id: str | None = None
    room: str | None = None
    """The job's room (job events)."""
    worker_id: str | None = None
    """The worker given the job (job events), or the one registered (Registered)."""

    def document(self, seq: int) -> dict[str, Any]:
        """The event on the wire: its fields, ``seq``, and ``time`` in RFC 3339."""
        data = asdict(self)
        at = data.pop("at")
        return {
            "seq": seq,
            "time": datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds"),
            **data,
        }


@dataclass(frozen=True)
class RunningJob:
    """A running job, as the event recorder sees it."""

    room: str
    entered: bool  # its entrypoint was called
    worker_id: str | None  # the worker given the job


@dataclass(frozen=True)
class Snapshot:
    """What ``EventRecorder`` compares from one observation of an agent to the next."""

    state: str
    message: str
    worker_id: str | None
    restarts: int
    drained: bool
    running: dict[str, RunningJob]
    """Running jobs by id."""
    ended: dict[str, EndedJob]
    """Recently ended jobs by id."""


class EventRecorder:
    """Turns successive snapshots of the agents into events (``DaemonApp.observe`` feeds it)."""

    def __init__(self, journal: Journal[Event], clock: Callable[[], float] = time.time) -> None:
        self.journal = journal
        self._clock = clock
        self._seen: dict[str, Snapshot] = {}

    def record(
        self,
        reason: str,
        message: str,
        *,
        agent: str | None = None,
        job_id: str | None = None,
        room: str | None = None,
        worker_id: str | None = None,
        warning: bool = False,
    ) -> None:
        """Record one event now."""
        kind: Literal["Normal", "Warning"] = "Warning" if warning else "Normal"
        event = Event(self._clock(), kind, reason, message, agent, job_id, room, worker_id)
        self.journal.append(event)

    def observe(self, snapshots: dict[str, Snapshot]) -> None:
        """Record what changed since the last observation."""
        for name in sorted(set(self._seen) - set(snapshots)):
            self.record("AgentRemoved", f"agent {name} removed", agent=name)
            del self._seen[name]
        for name, now in sorted(snapshots.items()):
            before = self._seen.get(name)
            self._seen[name] = now
            if before is None:
                self.record("AgentAdded", f"agent {name} added ({now.state})", agent=name)
                before = Snapshot("", "", None, now.restarts, False, {}, dict(now.ended))
            self._compare(name, before, now)

    def _compare(self, name: str, before: Snapshot, now: Snapshot) -> None:
        if now.state != before.state and before.state:
            why = f": {now.message}" if now.message else ""
            warning = now.state in ("backoff", "failed")
            self.record(
                "StateChanged",
                f"{before.state} -> {now.state}{why}",
                agent=name,
                warning=warning,
            )
        if now.worker_id and now.worker_id != before.worker_id:
            self.record(
                "Registered", f"registered as {now.worker_id}", agent=name, worker_id=now.worker_id
            )
        if now.restarts > before.restarts:
            self.record(
                "Restarted",
                f"worker restarted ({now.restarts} so far)"
                + (f": {now.message}" * bool(now.message)),
                agent=name,
                warning=True,
            )
        if now.drained != before.drained:
            self.record("Drained" if now.drained else "Undrained", "by an operator", agent=name)
        for job_id, job in sorted(now.running.items()):
            was = before.running.get(job_id)
            if was is None:
                self._job("JobAssigned", f"job assigned (room {job.room})", name, job_id, job)
            if job.entered and not (was and was.entered):
                self._job("JobStarted", f"job started (room {job.room})", name, job_id, job)
        for job_id in sorted(now.ended.keys() - before.ended.keys()):
            ended = now.ended[job_id]
            if ended.error is None:
                message = f"job succeeded (room {ended.room})"
                message += f": {ended.reason}" if ended.reason else ""
                self._job("JobSucceeded", message, name, job_id, ended)
            else:
                reason = "MemoryKill" if ended.kind == "memory" else "JobFailed"
                message = f"job failed (room {ended.room}): {ended.error}"
                self._job(reason, message, name, job_id, ended, warning=True)

    def _job(
        self,
        reason: str,
        message: str,
        agent: str,
        job_id: str,
        job: RunningJob | EndedJob,
        *,
        warning: bool = False,
    ) -> None:
        self.record(
            reason,
            message,
            agent=agent,
            job_id=job_id,
            room=job.room,
            worker_id=job.worker_id,
            warning=warning,
        )


class LogBuffer(logging.Handler):
    """Keeps recent log records as JSON-ready dicts, per agent (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.journal: Journal[dict[str, Any]] = Journal(
            PER_AGENT, key=lambda record: record.get("agent")
        )

    def emit(self, record: logging.LogRecord) -> None:
        """Keep ``record`` (never raises: logging must not fail the daemon)."""
        try:
            self.journal.append(record_fields(record))
        except Exception:
            self.handleError(record)

    async def read(
        self,
        after: int,
        *,
        wait: float = 0.0,
        agent: str | None = None,
        job_id: str | None = None,
        since: float | None = None,
    ) -> list[tuple[int, dict[str, Any]]]:
        """Records after ``after`` about ``agent`` (and ``job_id``).

        Only those created at or after ``since`` (wall-clock seconds); waits up to ``wait``
        seconds for the first.
        """

        def keep(record: dict[str, Any]) -> bool:
            if job_id is not None and record.get("job_id") != job_id:
                return False
            return since is None or record["created"] >= since

        return await self.journal.after(after, wait, keep, key=agent, only_key=agent is not None)
