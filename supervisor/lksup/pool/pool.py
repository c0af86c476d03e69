"""The warm pool of one agent, and its answers to the worker connection (``Hooks``).

The pool keeps ``num_idle_processes`` job processes READY (module imported, prewarm run), so
an offer can be answered and a job started without waiting for Python to start. Offers are
decided here: the declarative request policy first (room glob, identity and name templates,
evaluated in the supervisor without touching user code), then, when the agent has a
``request_fnc``, the warm process that will take the job is asked. An accepted offer keeps
that process reserved for the job until the assignment arrives or the reservation is
released. One process serves one job, then exits; the pool refills itself. A process an offer
was accepted for is told so (``AwaitJob``) and, while the host has CPU to spare, polls for its
job instead of sleeping through the round trip to the server (``IpcLoop.poll``).

Failures stay inside the pool: a job that crashes fails that job only; a process that cannot
start (import or prewarm error, timeout) puts the agent in ``backoff`` (exponential with
jitter, capped, reset once a process starts again or after ``stable_period`` without
failures) with the reason kept for status. A fleet-wide ``CapacityLimiter`` bounds concurrent
initialisations across agents.
"""

from __future__ import annotations

import bisect
import dataclasses
import fnmatch
import functools
import logging
import os
import random
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import anyio.abc

from lksup.jobs import ipc
from lksup.monitors.events import BudgetChanged, MemoryLimitExceeded, MonitorEvent
from lksup.monitors.memory_policy import MemoryPolicy
from lksup.monitors.monitor import Monitor
from lksup.pool.ended import ENDED_FOR, ENDED_KEPT, EndedJob
from lksup.pool.inference import InferenceService
from lksup.pool.process import InitFailed, JobOutcome, JobProcessHandle, ProcessSpec, ProcessState
from lksup.pool.zygote import ZygoteLauncher
from lksup.protocol.backoff import Backoff
from lksup.protocol.events import Accept, Answer, Decline, Job, JobAssigned, OfferReceived

log = logging.getLogger("lksup.pool")

#: How long a job's early outcome may take to be written to the server before the job process
#: is let go on to leave its room.
OUTCOME_FLUSH_TIMEOUT = 1.0
#: Init failures this close together count as consecutive for the backoff.
STABLE_PERIOD = 60.0
#: How long a process an offer was accepted for polls for its job (``AwaitJob``). The
#: assignment follows the accept within one round trip to the server; when the recent ones
#: took longer than this (a distant server), the process sleeps instead.
ASSIGNMENT_POLL = 0.02
#: A process polls for its job only while the host's CPU share is below this.
POLL_BELOW_CPU = 0.5
#: Accept -> assignment delays kept to decide whether polling can catch the assignment.
ASSIGNMENT_DELAYS_KEPT = 16


def recent(ended: Iterable[EndedJob], now: float | None = None) -> list[EndedJob]:
    """The jobs of ``ended`` that ended in the last ``ENDED_FOR`` seconds, in order."""
    cutoff = (anyio.current_time() if now is None else now) - ENDED_FOR
    return [job for job in ended if job.ended_at >= cutoff]


def auto_idle_processes() -> int:
    """The SDK's ``num_idle_processes`` production default: min(CPU count, 4)."""
    return min(os.cpu_count() or 1, 4)


class JobReporter(Protocol):
    """Where a job's status goes (the agent's ``AgentSession``)."""

    @property
    def server_url(self) -> str:
        """The server the job's participant joins (when the assignment names none)."""
        ...

    @property
    def worker_id(self) -> str:
        """The worker id the server gave this agent's connection ("" before registration)."""
        ...

    def job_started(self, job_id: str) -> None:
        """The entrypoint is running."""
        ...

    def job_ended(self, job_id: str, *, error: str | None = None) -> None:
        """The job is over."""
        ...

    async def flushed(self) -> None:
        """Wait until what was reported is written to the server."""
        ...


@dataclass(frozen=True)
class _Accepted:
    """What an accepted offer promised the job: its participant, and when (wall clock)."""

    accept: Accept
    received_at: float
    accepted_at: float


@dataclass(eq=False)
class _EarlyStart:
    """A process started for an offer accepted before the process was ready."""

    done: anyio.Event = field(default_factory=anyio.Event)


@dataclass(frozen=True)
class RequestPolicy:
    """The declarative request policy (see ``lksup.fleet.schema.RequestPolicy``)."""

    room: str = "*"
    identity: str = "agent-{job_id}"
    name: str = ""
    metadata: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)

    def matches(self, room: str) -> bool:
        """Whether offers for ``room`` may be taken."""
        return fnmatch.fnmatchcase(room, self.room)

    def fill(self, template: str, *, job_id: str, agent_name: str, room: str) -> str:
        """A template with {job_id}, {agent_name} and {room} filled in."""
        return template.format(job_id=job_id, agent_name=agent_name, room=room)


#: Job start latency buckets (seconds): assignment to entrypoint called.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class Histogram:
    """Counts per bucket, a count and a sum: constant memory however many values it saw."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    count: int = 0
    total: float = 0.0

    def observe(self, value: float) -> None:
        """Count one value (the last bucket is +Inf)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def add(self, other: Histogram) -> None:
        """Add another histogram's counts (same bounds) to this one."""
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.count += other.count
        self.total += other.total

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: ``(upper bound, values <= it)``, ending with ``+Inf``."""
        running, buckets = 0, []
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets


@dataclass
class PoolStats:
    """Counters for status and metrics (bounded: a pool may run for months)."""

    spawned: int = 0
    init_failures: int = 0
    jobs_started: int = 0
    jobs_succeeded: int = 0
    jobs_failed: int = 0
    start_latency: Histogram = field(default_factory=Histogram)
    failures: dict[str, int] = field(default_factory=dict)
    """Failed jobs by ``JobOutcome.kind``."""
    init_durations: deque[float] = field(default_factory=lambda: deque(maxlen=256))


class AgentPool:
    """Warm processes and the offer/job hooks of one agent."""

    def __init__(
        self,
        spec: ProcessSpec,
        *,
        num_idle: int,
        policy: RequestPolicy | None = None,
        init_limiter: anyio.CapacityLimiter | None = None,
        backoff: Backoff | None = None,
        rand: Callable[[], float] = random.random,
        on_change: Callable[[], None] | None = None,
        monitor: Monitor | None = None,
        memory: MemoryPolicy | None = None,
        inference: InferenceService | None = None,
        launcher: ZygoteLauncher | None = None,
        assignment_poll: float = ASSIGNMENT_POLL,
    ) -> None:
        self.spec = spec
        self.assignment_poll = assignment_poll
        """How long a process an offer was accepted for polls for its job (``poll_for``)."""
        self.target_idle = num_idle
        self.policy = policy or RequestPolicy()
        self.limiter = init_limiter or anyio.CapacityLimiter(auto_idle_processes())
        self.backoff = backoff or Backoff(initial_delay=1.0, factor=2.0, max_delay=60.0)
        self._rand = rand
        self._on_change = on_change
        self.monitor = monitor
        self.memory = memory or MemoryPolicy(warn_mb=0, limit_mb=0)
        self.inference = inference
        self.launcher = launcher
        if launcher is not None:
            launcher.on_failure = self._record_failure
            launcher.on_stale = self._recycle
        self.stats = PoolStats()
        self.idle: list[JobProcessHandle] = []
        self.starting = 0
        self.reserved: dict[str, JobProcessHandle] = {}
        self.running: dict[str, JobProcessHandle] = {}
        self._accepted: dict[str, _Accepted] = {}
        self.early: dict[str, _EarlyStart] = {}
        """Accepted offers whose process is still starting (``_start_early``), by job id."""
        self._assignment_delays: deque[float] = deque(maxlen=ASSIGNMENT_DELAYS_KEPT)
        self.ending: set[JobProcessHandle] = set()
        """Processes whose job reported its outcome and that are still shutting down (their
        callbacks run): closing the pool waits for them too."""
        self.consecutive_failures = 0
        self.last_failure: str | None = None
        self.last_init_failure: tuple[str, float] | None = None
        """The latest process that failed to start: why, and when (``anyio.current_time()``);
        kept after processes start again (``last_failure`` is cleared then)."""
        self.ended: deque[EndedJob] = deque(maxlen=ENDED_KEPT)
        """The latest ended jobs, newest last (``recently_ended`` drops the old ones)."""
        self._last_failure_at = 0.0
        self._backoff_until = 0.0
        self._wake = anyio.Event()
        self._changed_event = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = False
        self._stopped = anyio.Event()  # aclose ran the stop sequence

    # --- status -------------------------------------------------------------------------------

    @property
    def in_backoff(self) -> bool:
        """Whether starting processes is paused after failures."""
        return self._backoff_until > anyio.current_time()

    @property
    def backoff_remaining(self) -> float:
        """Seconds until the next start attempt (0 when not in backoff)."""
        return max(0.0, self._backoff_until - anyio.current_time())

    @property
    def processes(self) -> list[JobProcessHandle]:
        """Every live process: idle, reserved, running, and ending after its job."""
        found = [*self.idle, *self.reserved.values(), *self.running.values(), *self.ending]
        return list(dict.fromkeys(found))  # a thread host can hold several jobs

    def _changed(self) -> None:
        self._wake.set()
        changed, self._changed_event = self._changed_event, anyio.Event()
        changed.set()
        if self._on_change is not None:
            self._on_change()

    def wake(self) -> None:
        """Re-check the pool's targets now (after a change of settings)."""
        self._changed()

    def reconfigure(
        self,
        *,
        target_idle: int,
        memory: MemoryPolicy,
        policy: RequestPolicy,
        shutdown_timeout: float,
        initialize_timeout: float,
    ) -> None:
        """Take settings that need no new process (an update in place), and re-check now."""
        self.target_idle = target_idle
        self.memory = memory
        self.policy = policy
        self.spec = dataclasses.replace(
            self.spec, shutdown_timeout=shutdown_timeout, initialize_timeout=initialize_timeout
        )
        self._changed()

    async def wait_changed(self) -> None:
        """Wait for the pool's next change."""
        await self._changed_event.wait()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, re-checking on every change of the pool."""
        while not predicate():
            await self._changed_event.wait()

    # --- the refill loop ----------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep the warm pool filled until ``aclose``; processes live in this task group."""
        if self.monitor is not None:
            self.monitor.add_listener(self._on_monitor)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                while not self._closed:
                    self._wake = anyio.Event()
                    missing = self.target_idle - len(self.idle) - self.starting
                    wait: float | None = None
                    if missing > 0 and self.in_backoff:
                        wait = self.backoff_remaining
                    else:
                        for _ in range(max(0, missing)):
                            self.starting += 1
                            tg.start_soon(self._spawn_idle)
                    with anyio.move_on_after(wait):
                        await self._wake.wait()
                # closing: the processes live in this task group, so it stays open until
                # ``aclose`` ran their stop sequence (cancelling it would SIGKILL them at once)
                await self._stopped.wait()
                tg.cancel_scope.cancel()
        finally:
            if self.monitor is not None:
                self.monitor.remove_listener(self._on_monitor)
            if self.launcher is not None:  # every process is reaped: its template may go
                with anyio.CancelScope(shield=True):
                    await self.launcher.aclose()

    async def _spawn_idle(self) -> None:
        process = await self._start_process()
        if process is not None and not self._closed:
            self.idle.append(process)
            if self.launcher is not None:  # the base learned more while it was forked
                self._recycle(self.launcher.zygotes.generation)
            self._changed()

    async def _start_process(self) -> JobProcessHandle | None:
        """Start one process (bounded by the fleet-wide limiter); None when it failed."""
        assert self._tg is not None
        try:
            async with self.limiter:
                process: JobProcessHandle = await self._tg.start(
                    JobProcessHandle(self.spec, launcher=self.launcher).run
                )
        except InitFailed as exc:
            self._record_failure(str(exc))
            return None
        finally:
            self.starting -= 1  # every caller counted this start in
        self.stats.spawned += 1
        if process.ready_at is not None:
            self.stats.init_durations.append(process.ready_at - process.started_at)
        self.consecutive_failures = 0
        self._backoff_until = 0.0
        self.last_failure = None
        self._tg.start_soon(self._watch, process)
        self._watch_memory(process, job_id=None)
        if process.inference_runners and self.inference is not None:
            self.inference.attach(process, self.memory)
        return process

    def _recycle(self, generation: int) -> None:
        """Replace idle processes forked before ``generation`` (they share less memory)."""
        if self._tg is None or self._closed:
            return
        stale = [p for p in self.idle if 0 < p.generation < generation]
        for process in stale:
            self.idle.remove(process)
            self._tg.start_soon(process.stop, "replaced by a process that shares more")
        if stale:
            log.info(
                "Agent %s: replacing %d warm process(es) forked before the base preloaded more.",
                self.spec.agent_name,
                len(stale),
                extra={"agent": self.spec.agent_name},
            )
            self._changed()
            self.wake()

    def _watch_memory(self, process: JobProcessHandle, *, job_id: str | None) -> None:
        if self.monitor is not None and process.pid is not None:
            self.monitor.watch(
                process.pid, agent=self.spec.agent_name, job_id=job_id, policy=self.memory
            )

    def _on_monitor(self, event: MonitorEvent) -> None:
        if isinstance(event, BudgetChanged):
            self._changed()
            return
        if not isinstance(event, MemoryLimitExceeded) or event.agent != self.spec.agent_name:
            return
        if event.job_id is not None:
            self.fail_job(event.job_id, event.reason)
            return
        for process in list(self.idle):  # an idle process over its limit: replace it
            if process.pid == event.pid and self._tg is not None:
                self.idle.remove(process)
                if process.running_jobs():  # a host: its jobs fail with the reason
                    self._tg.start_soon(process.kill, event.reason)
                else:
                    self._tg.start_soon(process.stop, event.reason)
                self._changed()
                return
        for process in set(self.running.values()):  # a full host over its limit
            if process.pid == event.pid and self._tg is not None:
                self._tg.start_soon(process.kill, event.reason)

    def _record_failure(self, reason: str) -> None:
        now = anyio.current_time()
        if now - self._last_failure_at > STABLE_PERIOD:
            self.consecutive_failures = 0
        self.consecutive_failures += 1
        self._last_failure_at = now
        self.stats.init_failures += 1
        self.last_failure = reason
        self.last_init_failure = (reason, now)
        delay = self.backoff.delay(self.consecutive_failures - 1, self._rand())
        self._backoff_until = now + delay
        log.error(
            "Agent %s: a job process failed to start (%s); retrying in %.1fs.",
            self.spec.agent_name,
            reason,
            delay,
            extra={"agent": self.spec.agent_name},
        )
        self._changed()

    async def _watch(self, process: JobProcessHandle) -> None:
        """Drop a process from the pool's sets when it exits on its own."""
        try:
            await process.wait_exited()
        finally:  # also when the pool closes: a dead pid must not stay in the memory sweep
            if self.monitor is not None and process.pid is not None:
                self.monitor.unwatch(process.pid)
        if process in self.idle:
            self.idle.remove(process)
            if not (process.stopping or self._closed):  # not one the pool stopped itself
                log.warning(
                    "Agent %s: idle job process %s exited (%s).",
                    self.spec.agent_name,
                    process.pid,
                    process.exit_description,
                    extra={"agent": self.spec.agent_name, "pid": process.pid},
                )
        for table in (self.reserved, self.running):
            for job_id, owner in list(table.items()):
                if owner is process and table is self.reserved:
                    del table[job_id]
        self._changed()

    async def aclose(self, *, force: bool = False, reason: str = "supervisor stopping") -> None:
        """Stop every process with the stop sequence; ``force`` makes it short (about 1 s).

        ``reason`` is what idle processes are told and what their stop logs.
        """
        self._closed = True
        self._changed()
        timeouts = {"shutdown_timeout": 0.5, "term_grace": 0.5} if force else {}
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for process in self.processes:
                    tg.start_soon(functools.partial(process.stop, reason, **timeouts))
        self._stopped.set()

    # --- offers -------------------------------------------------------------------------------

    def _load(self, process: JobProcessHandle) -> int:
        """Jobs a process holds: reserved for it or running in it."""
        tables = (self.reserved, self.running)
        return sum(1 for table in tables for owner in table.values() if owner is process)

    def _has_room(self, process: JobProcessHandle) -> bool:
        return self._load(process) < self.spec.max_jobs

    def _may_start_early(self) -> bool:
        """Accept an offer at once and start its process meanwhile (``_start_early``)?

        Only when no warm process is ready, the agent's process starts have been succeeding
        (at least one, no failure since) and no request function must run in the process
        first: the start then overlaps the server's assignment round trip, as the SDK's
        worker, which answers at once and launches its process on assignment, overlaps it.
        One job per process only: a thread host packs jobs into the hosts it has.
        """
        if self.spec.request_fnc or self.spec.max_jobs > 1 or self._closed:
            return False
        if any(p.alive and p.state is ProcessState.READY for p in self.idle):
            return False
        return self.stats.spawned > 0 and self.consecutive_failures == 0 and not self.in_backoff

    def _start_early(self, job_id: str) -> None:
        """Start a process for the accepted ``job_id``; reserved for it once ready.

        ``run_job`` waits for it. If the offer is released first, the process joins the idle
        set; if it fails to start, the job gets another process or fails with the reason.
        """
        assert self._tg is not None
        early = self.early[job_id] = _EarlyStart()
        self.starting += 1

        async def start() -> None:
            process: JobProcessHandle | None = None
            try:
                process = await self._start_process()
            finally:
                if process is not None and self.early.get(job_id) is early:
                    self.reserved[job_id] = process
                    process.state = ProcessState.RESERVED
                elif process is not None and not self._closed:  # released meanwhile
                    self.idle.append(process)
                    self._changed()
                early.done.set()

        self._tg.start_soon(start, name=f"process for job {job_id}")

    async def _acquire(self) -> JobProcessHandle | None:
        """A READY process for an offer: an idle one, or a new one (the caller bounds the wait)."""
        if self.spec.max_jobs > 1:  # thread hosts stay in the idle set while they have room
            hosts = [
                host
                for host in self.idle
                if host.alive and host.state is ProcessState.READY and self._has_room(host)
            ]
            if hosts:  # the busiest with room: jobs pack, the others stay warm
                return max(hosts, key=self._load)
        while self.idle:
            process = self.idle.pop(0)
            if process.alive and process.state is ProcessState.READY:
                # no refill yet: spawning a process costs the event loop milliseconds, which
                # would delay this job's start; the pool refills once the job has started (or
                # the reservation is released)
                return process
        if self.in_backoff:
            return None
        self.starting += 1
        return await self._start_process()

    async def decide(self, offer: OfferReceived) -> Answer:
        """The agent's answer to an offer (``Hooks.decide``)."""
        received_at = time.time()  # display and tracing only (the job's dispatch timeline)
        answer = await self._decide(offer)
        if isinstance(answer, Accept):
            self._accepted[offer.job.id] = _Accepted(answer, received_at, time.time())
        return answer

    async def _decide(self, offer: OfferReceived) -> Answer:
        job = offer.job
        if not self.policy.matches(job.room_name):
            return Decline(
                reason=f"room {job.room_name!r} does not match {self.policy.room!r}", cause="room"
            )
        if self._closed:
            return Decline(reason="stopping", cause="stopping")
        if self.monitor is not None and self.monitor.over_budget:
            return Decline(reason="memory budget exceeded", cause="memory")
        values = {"job_id": job.id, "agent_name": self.spec.agent_name, "room": job.room_name}
        identity = self.policy.fill(self.policy.identity, **values)
        name = self.policy.fill(self.policy.name, **values)
        declarative = Accept(identity, name, self.policy.metadata, dict(self.policy.attributes))
        if self._may_start_early():
            self._start_early(job.id)
            return declarative
        process = await self._acquire()
        if process is None:
            return Decline(
                reason=self.last_failure or "no job process available", cause="no_process"
            )
        self.reserved[job.id] = process
        if process.host:
            if process in self.idle and not self._has_room(process):
                self.idle.remove(process)  # full: back in the idle set when a job ends
            elif process not in self.idle and self._has_room(process):
                self.idle.append(process)  # started for this offer: it takes the next ones too
        else:
            process.state = ProcessState.RESERVED
        if not self.spec.request_fnc:
            await self._await_job(process, job.id)
            return declarative
        answer = await process.offer(
            ipc.OfferRequest(
                job=job.wire,
                default_identity=identity,
                default_name=name,
                default_metadata=self.policy.metadata,
                default_attributes=dict(self.policy.attributes),
            ),
            job.id,
        )
        if answer is None or not answer.accept:
            self.release(job.id)
            if answer is not None and answer.error:
                return Decline(reason=f"request function failed: {answer.error}", cause="error")
            return Decline(
                terminate=bool(answer and answer.terminate),
                reason="request function",
                cause="request_fnc",
            )
        chosen = answer.identity or identity
        await self._await_job(process, job.id)
        return Accept(chosen, answer.name, answer.metadata, dict(answer.attributes))

    def poll_for(self) -> float:
        """How long a process an offer was accepted for polls for its job (0: it sleeps)."""
        if self.monitor is not None and self.monitor.cpu >= POLL_BELOW_CPU:
            return 0.0  # the host is busy: the CPU a poll burns is better spent on jobs
        delays = self._assignment_delays
        if delays and statistics.median(delays) > self.assignment_poll:
            return 0.0  # assignments come later than a poll lasts
        return self.assignment_poll

    async def _await_job(self, process: JobProcessHandle, job_id: str) -> None:
        poll = self.poll_for()
        if poll > 0:
            await process.send(ipc.AwaitJob(job_id=job_id, poll_s=poll))

    def release(self, job_id: str) -> None:
        """An accepted offer will not be assigned: its process goes back to the idle set."""
        self._accepted.pop(job_id, None)
        self.early.pop(job_id, None)  # a process still starting for it joins the idle set
        process = self.reserved.pop(job_id, None)
        if process is None:
            return
        if process.alive and not self._closed and process not in self.idle:
            process.state = ProcessState.READY
            self.idle.insert(0, process)
        self._changed()

    # --- jobs ---------------------------------------------------------------------------------

    def recently_ended(self, now: float | None = None) -> list[EndedJob]:
        """Jobs that ended in the last ``ENDED_FOR`` seconds (at most ``ENDED_KEPT``)."""
        return recent(self.ended, now)

    def last_job_failure(self, now: float | None = None) -> EndedJob | None:
        """The latest failed job among ``recently_ended``."""
        failed = [ended for ended in self.recently_ended(now) if ended.error is not None]
        return failed[-1] if failed else None

    def _log_end(
        self,
        job: Job,
        process: JobProcessHandle,
        outcome: JobOutcome,
        duration: float,
        worker_id: str,
    ) -> None:
        """One line per job end: where it ran, how it ended and why, and how long it took."""
        failed = outcome.error is not None
        now = anyio.current_time()
        self.ended.append(
            EndedJob(
                job_id=job.id,
                room=job.room_name,
                pid=process.pid,
                error=outcome.error,
                reason=outcome.reason,
                started_at=now - duration,
                ended_at=now,
                kind=outcome.kind or ("exception" if failed else None),
                worker_id=worker_id or None,
            )
        )
        log.log(
            logging.WARNING if failed else logging.INFO,
            "agent %s job %s (room %s) in process %s %s after %.1fs: %s",
            self.spec.agent_name,
            job.id,
            job.room_name,
            process.pid,
            "failed" if failed else "succeeded",
            duration,
            outcome.error if failed else (outcome.reason or "ended"),
            extra={
                "agent": self.spec.agent_name,
                "job_id": job.id,
                "pid": process.pid,
                "fields": {  # JSON fields of their own
                    "room": job.room_name,
                    "outcome": "failed" if failed else "succeeded",
                    "reason": outcome.reason,
                    "error": outcome.error,
                    "duration_s": round(duration, 3),
                },
            },
        )

    async def run_job(self, assignment: JobAssigned, session: JobReporter) -> None:
        """Run an assigned job in its reserved process (``Hooks.run_job``)."""
        job = assignment.job
        assigned_at = time.time()
        worker_id = session.worker_id  # the registration given the job (a reconnect changes it)
        accepted = self._accepted.pop(job.id, None)
        if accepted is not None:
            self._assignment_delays.append(assigned_at - accepted.accepted_at)
        early = self.early.get(job.id)
        if early is not None:  # accepted while its process was starting
            await early.done.wait()
            self.early.pop(job.id, None)
        process = self.reserved.pop(job.id, None)
        if process is None or not process.alive:
            process = await self._acquire()
        if process is None:
            reason = self.last_failure or "unavailable"
            session.job_ended(job.id, error=f"no job process: {reason}")
            self.stats.jobs_failed += 1
            self.stats.failures["no_process"] = self.stats.failures.get("no_process", 0) + 1
            return
        self.running[job.id] = process
        if not process.host:  # a host's memory is its own, whatever jobs it runs
            self._watch_memory(process, job_id=job.id)
        try:
            accept = accepted.accept if accepted is not None else None
            start = ipc.StartJob(
                job=job.wire,
                url=assignment.url or session.server_url,
                token=assignment.token,
                participant_identity=job.agent_identity or (accept.identity if accept else ""),
                participant_name=accept.name if accept else "",
                participant_metadata=accept.metadata if accept else "",
                participant_attributes=dict(accept.attributes) if accept else {},
                worker_id=worker_id,
                received_at=accepted.received_at if accepted else 0.0,
                accepted_at=accepted.accepted_at if accepted else 0.0,
                assigned_at=assigned_at,
                launched_at=time.time(),
            )
            began = anyio.current_time()
            started = await process.start_job(start, job.id, room=job.room_name)
            log.info(  # after the hand-over: the job's start never waits for this line
                "agent %s assigned job %s (room %s) to process %s",
                self.spec.agent_name,
                job.id,
                job.room_name,
                process.pid,
                extra={"agent": self.spec.agent_name, "job_id": job.id, "pid": process.pid},
            )
            if started:
                self.stats.start_latency.observe(anyio.current_time() - began)
                self.stats.jobs_started += 1
                session.job_started(job.id)
                self._changed()
            outcome: JobOutcome = await process.wait_job(job.id)
            if outcome.error is None:
                self.stats.jobs_succeeded += 1
            else:
                self.stats.jobs_failed += 1
                kind = outcome.kind or "exception"
                self.stats.failures[kind] = self.stats.failures.get(kind, 0) + 1
            session.job_ended(job.id, error=outcome.error)
            self._log_end(job, process, outcome, anyio.current_time() - began, worker_id)
            if process.awaits_outcome_ack(job.id):  # once the status is written, leave the room
                with anyio.move_on_after(OUTCOME_FLUSH_TIMEOUT):
                    await session.flushed()
                await process.send(ipc.OutcomeReported(job_id=job.id))
        finally:
            self.running.pop(job.id, None)
            if process.host:  # it serves the next jobs
                if process.alive and not self._closed and process not in self.idle:
                    self.idle.append(process)
            else:
                self.ending.add(process)
                try:
                    with anyio.CancelScope(shield=True):
                        await process.stop("job ended")
                finally:
                    self.ending.discard(process)
            self._changed()

    def terminate(self, job_id: str) -> None:
        """The server ended the job: run the stop sequence (``Hooks.terminate``)."""
        process = self.running.get(job_id)
        if process is not None and self._tg is not None:
            if process.host:
                self._tg.start_soon(process.stop_job, job_id, "terminated by the server")
            else:
                self._tg.start_soon(process.stop, "terminated by the server")

    def fail_job(self, job_id: str, reason: str) -> None:
        """End a running job now, as failed with ``reason`` (memory limit): kill its process."""
        process = self.running.get(job_id)
        if process is not None and self._tg is not None:
            self._tg.start_soon(process.kill, reason, "memory")
