"""What status says of an agent, derived in one place from one immutable snapshot.

``lksup status``, ``/readyz``, the metrics, the events and systemd's STATUS= all answer the
same questions about an agent: its STATE, whether it is READY, its MESSAGE, its SYNC, and its
conditions. They are all answered here, by pure functions of an ``AgentSnapshot``: what the
supervisor knows of the agent (a restart scheduled, an operator's drain, a replacement under
way) and what its current runtime reports of itself (``RuntimeSnapshot``: connection, pool,
load). The snapshot is taken at one moment, so the answers never disagree with each other;
``tests/daemon/test_status.py`` checks that they never do, over every snapshot.

Times in a snapshot are relative (``restart_in``, ``pool_retry_in``, seconds from the moment
it was taken), so nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from lksup.pool.ended import EndedJob
from lksup.protocol.machine import State

__all__ = [
    "READY_STATES",
    "TYPES",
    "AgentSnapshot",
    "AgentState",
    "Derived",
    "Facts",
    "FullReason",
    "JobView",
    "RuntimeSnapshot",
    "Sync",
    "derive",
    "evaluate",
    "is_ready",
    "message",
    "state",
    "sync",
]


class AgentState(StrEnum):
    """The STATE column (the values ``control.api.AgentState`` lists)."""

    PENDING = "pending"  # waiting for its turn to start (the initialisation cap)
    STARTING = "starting"
    CONNECTING = "connecting"
    RUNNING = "running"
    FULL = "full"
    DRAINING = "draining"
    DRAINED = "drained"
    STOPPED = "stopped"
    BACKOFF = "backoff"
    FAILED = "failed"


class Sync(StrEnum):
    """The SYNC column: is the applied configuration in effect?"""

    SYNCED = "synced"
    PENDING = "pending"  # not registered since it started, a restart scheduled, old workers
    OVERRIDE = "override"  # drained by an operator


TYPES = ("Registered", "Ready", "Accepting", "PoolWarm", "Synced")
#: The states in which a registered agent is ready (takes jobs).
READY_STATES = (AgentState.RUNNING, AgentState.FULL)


def is_ready(state: AgentState, registered: bool) -> bool:
    """The one definition of ready: the READY column, ``/readyz`` and the Ready condition."""
    return registered and state in READY_STATES


FullReason = Literal["", "LoadAboveThreshold", "AtMaxJobs", "OverMemoryBudget"]


@dataclass(frozen=True)
class Facts:
    """What is observed of one agent at one moment."""

    state: AgentState  # the STATE column
    registered: bool
    draining: bool
    full_reason: FullReason  # "" when not full
    full_message: str
    idle: int
    idle_target: int
    pool_failure: str  # non-empty while the pool backs off after crashes
    sync: Sync
    message: str  # the MESSAGE column

    @property
    def ready(self) -> bool:
        """``is_ready`` of these facts."""
        return is_ready(self.state, self.registered)


def evaluate(facts: Facts) -> list[tuple[str, bool, str, str]]:
    """``(type, status, reason, message)`` for every type in ``TYPES``, in that order."""
    if facts.registered:
        registered = (True, "Registered", "")
    elif facts.state in ("failed", "backoff"):
        registered = (False, "ConnectionFailed", facts.message)
    elif facts.state in ("drained", "stopped"):
        registered = (False, "Stopped", facts.message)
    else:
        registered = (False, "Connecting", facts.message)

    if facts.ready:
        ready = (True, "Ready", "")
    elif facts.draining:
        ready = (False, "Draining", "not taking new jobs; running jobs finish")
    elif facts.registered:  # registered, yet its state keeps it from taking jobs
        ready = (False, facts.state.capitalize(), facts.message)
    else:
        ready = (False, "NotRegistered", "")

    if not facts.ready:
        accepting = (False, "NotReady", "")
    elif facts.full_reason:
        accepting = (False, str(facts.full_reason), facts.full_message)
    else:
        accepting = (True, "BelowThreshold", facts.full_message)

    counts = f"{facts.idle}/{facts.idle_target} idle processes"
    if facts.pool_failure:
        warm = (False, "Backoff", facts.pool_failure)
    elif facts.idle >= facts.idle_target:
        warm = (True, "Warm", counts)
    else:
        warm = (False, "Warming", counts)

    if facts.sync == "override":
        synced = (False, "Override", "drained by an operator; `lksup undrain` clears it")
    elif facts.sync == "pending":
        synced = (False, "Pending", "the applied configuration is not registered yet")
    else:
        synced = (True, "Synced", "")

    values = (registered, ready, accepting, warm, synced)
    return [(kind, *value) for kind, value in zip(TYPES, values, strict=True)]


@dataclass(frozen=True)
class JobView:
    """One job a runtime's pool is running."""

    job_id: str
    room: str
    pid: int | None
    process_state: str
    started_at: float | None  # ``anyio.current_time()`` its entrypoint was called
    entered: bool  # its entrypoint was called


@dataclass(frozen=True)
class RuntimeSnapshot:
    """One ``AgentRuntime`` at one moment (``AgentRuntime.snapshot``)."""

    connection: State
    worker_id: str | None  # None while not registered
    draining: bool
    connected: bool
    last_error: str  # why the connection last failed or closed ("" if it never did)
    attempts: int  # consecutive failed connection attempts
    registrations: int  # times it registered (0: the configuration is not in effect yet)
    processes: int  # live job processes: idle, reserved, running, ending
    pids: tuple[int, ...]
    sdk_versions: frozenset[str]
    idle: int
    idle_target: int
    jobs: int  # jobs the connection counts as running
    running: tuple[JobView, ...]
    ended: tuple[EndedJob, ...]  # the latest ended jobs, newest last
    last_init_failure: tuple[str, float] | None
    pool_backoff: bool  # starting processes is paused after crashes
    pool_failure: str | None  # why, while it is
    pool_retry_in: float
    load: float
    full: bool
    full_reason: FullReason  # "" when not full
    full_message: str  # the numbers behind it
    done: bool  # its run ended

    @property
    def registered(self) -> bool:
        """Registered with the server now."""
        return self.worker_id is not None


@dataclass(frozen=True)
class AgentSnapshot:
    """One agent at one moment: the supervisor's record and its current runtime."""

    name: str
    recorded: AgentState
    """The supervisor's last word: what it started, or how it ended (pending, starting,
    failed, draining, drained or stopped)."""
    reason: str  # why it failed, when it did
    restart_in: float | None  # a restart is scheduled in this many seconds
    overridden: bool  # drained by an operator
    replacing: bool  # a new runtime is not ready yet while an old one serves
    draining_runtimes: int  # old runtimes finishing their jobs
    runtime: RuntimeSnapshot | None


@dataclass(frozen=True)
class Derived:
    """Everything status says of one snapshot."""

    state: AgentState
    ready: bool
    message: str
    sync: Sync
    facts: Facts  # what the conditions are evaluated from (``conditions.evaluate``)


def state(agent: AgentSnapshot) -> AgentState:
    """The STATE column."""
    if agent.restart_in is not None:
        return AgentState.BACKOFF
    runtime = agent.runtime
    if runtime is None:
        return AgentState.DRAINING if agent.draining_runtimes else agent.recorded
    connection = runtime.connection
    if connection is State.FAILED:
        return AgentState.FAILED
    if connection is State.CLOSED:
        return AgentState.DRAINED if runtime.draining else AgentState.STOPPED
    if runtime.draining:
        return AgentState.DRAINING
    if runtime.pool_backoff:
        return AgentState.BACKOFF
    if connection is State.READY:
        return AgentState.FULL if runtime.full else AgentState.RUNNING
    if connection is State.BACKOFF:
        return AgentState.BACKOFF  # waiting to reconnect (the message says why and how long)
    if connection in (State.CONNECTING, State.REGISTERING):
        return AgentState.CONNECTING
    if connection is State.IDLE and not runtime.processes:
        return AgentState.PENDING
    return AgentState.STARTING


def message(agent: AgentSnapshot) -> str:
    """The MESSAGE column: why the agent is not simply running, else empty."""
    runtime = agent.runtime
    text = agent.reason
    if agent.restart_in is not None:
        countdown = f"restarting in {agent.restart_in:.0f}s"
        text = f"{agent.reason}; {countdown}" if agent.reason else countdown
    elif runtime is not None:
        if runtime.pool_backoff and runtime.pool_failure:
            text = f"{runtime.pool_failure}; retry in {runtime.pool_retry_in:.0f}s"
        elif runtime.last_error and not runtime.connected:
            text = runtime.last_error
    if agent.replacing:
        waiting = "the new worker is not ready yet; the old one keeps taking jobs"
        text = f"{text}; {waiting}" if text else waiting
    if agent.draining_runtimes and not text:
        text = f"{agent.draining_runtimes} old worker(s) draining"
    return text


def sync(agent: AgentSnapshot) -> Sync:
    """The SYNC column."""
    if agent.overridden:
        return Sync.OVERRIDE
    runtime = agent.runtime
    if (
        agent.restart_in is not None
        or agent.draining_runtimes
        or agent.replacing
        or runtime is None
        or runtime.registrations == 0
    ):
        return Sync.PENDING
    return Sync.SYNCED


def derive(agent: AgentSnapshot) -> Derived:
    """STATE, READY, MESSAGE, SYNC and the conditions' facts of one snapshot."""
    state_, message_, sync_ = state(agent), message(agent), sync(agent)
    runtime = agent.runtime
    if runtime is None or agent.restart_in is not None:
        facts = Facts(state_, False, False, "", "", 0, 0, "", sync_, message_)
    else:
        facts = Facts(
            state=state_,
            registered=runtime.registered,
            draining=runtime.draining,
            full_reason=runtime.full_reason,
            full_message=runtime.full_message,
            idle=runtime.idle,
            idle_target=runtime.idle_target,
            pool_failure=(runtime.pool_failure or "crashed") if runtime.pool_backoff else "",
            sync=sync_,
            message=message_,
        )
    return Derived(state=state_, ready=facts.ready, message=message_, sync=sync_, facts=facts)
