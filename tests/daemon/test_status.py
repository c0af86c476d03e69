"""Status derived from one snapshot: STATE, READY, MESSAGE, SYNC and the conditions never
disagree, whatever the snapshot."""

from __future__ import annotations

import dataclasses
from typing import get_args

from hypothesis import given
from hypothesis import strategies as st

from lksup.daemon.status import (
    READY_STATES,
    AgentSnapshot,
    AgentState,
    FullReason,
    RuntimeSnapshot,
    Sync,
    derive,
    evaluate,
)
from lksup.protocol.machine import State

RUNNING = RuntimeSnapshot(
    connection=State.READY,
    worker_id="AW_1",
    draining=False,
    connected=True,
    last_error="",
    attempts=0,
    registrations=1,
    processes=1,
    pids=(100,),
    sdk_versions=frozenset(),
    idle=1,
    idle_target=1,
    jobs=0,
    running=(),
    ended=(),
    last_init_failure=None,
    pool_backoff=False,
    pool_failure=None,
    pool_retry_in=0.0,
    load=0.1,
    full=False,
    full_reason="",
    full_message="load 0.10 < threshold 0.75",
    done=False,
)
AGENT = AgentSnapshot(
    name="sales",
    recorded=AgentState.STARTING,
    reason="",
    restart_in=None,
    overridden=False,
    replacing=False,
    draining_runtimes=0,
    runtime=RUNNING,
)


def conditions(agent: AgentSnapshot) -> dict[str, tuple[bool, str]]:
    return {kind: (status, reason) for kind, status, reason, _ in evaluate(derive(agent).facts)}


def test_a_registered_warm_agent_is_running_ready_and_synced() -> None:
    derived = derive(AGENT)
    assert (derived.state, derived.ready, derived.message, derived.sync) == (
        AgentState.RUNNING,
        True,
        "",
        Sync.SYNCED,
    )
    assert all(status for status, _ in conditions(AGENT).values())


def test_a_scheduled_restart_is_backoff_with_its_countdown() -> None:
    agent = dataclasses.replace(
        AGENT, recorded=AgentState.FAILED, reason="the worker stopped", restart_in=4.6
    )
    derived = derive(agent)
    assert derived.state is AgentState.BACKOFF
    assert derived.message == "the worker stopped; restarting in 5s"
    assert derived.sync is Sync.PENDING
    assert conditions(agent)["Registered"] == (False, "ConnectionFailed")


def test_a_replacement_not_ready_yet_says_the_old_worker_serves() -> None:
    agent = dataclasses.replace(AGENT, replacing=True)
    derived = derive(agent)
    assert derived.message == "the new worker is not ready yet; the old one keeps taking jobs"
    assert derived.sync is Sync.PENDING


def test_a_pool_in_backoff_keeps_a_registered_agent_from_being_ready() -> None:
    runtime = dataclasses.replace(
        RUNNING, pool_backoff=True, pool_failure="ImportError: agent", pool_retry_in=9.2, idle=0
    )
    agent = dataclasses.replace(AGENT, runtime=runtime)
    derived = derive(agent)
    assert derived.state is AgentState.BACKOFF
    assert not derived.ready
    assert derived.message == "ImportError: agent; retry in 9s"
    assert conditions(agent)["PoolWarm"] == (False, "Backoff")


def test_no_runtime_and_old_ones_draining_is_draining() -> None:
    agent = dataclasses.replace(AGENT, runtime=None, draining_runtimes=2)
    derived = derive(agent)
    assert derived.state is AgentState.DRAINING
    assert derived.message == "2 old worker(s) draining"


CONNECTIONS = {
    State.IDLE: (None, False),
    State.CONNECTING: (None, False),
    State.REGISTERING: (None, True),
    State.READY: ("AW_1", True),
    State.BACKOFF: (None, False),
    State.CLOSED: (None, False),
    State.FAILED: (None, False),
}


@st.composite
def runtimes(draw: st.DrawFn) -> RuntimeSnapshot:
    connection = draw(st.sampled_from(list(CONNECTIONS)))
    worker_id, connected = CONNECTIONS[connection]
    backoff = draw(st.booleans())
    full_reason: FullReason = draw(st.sampled_from(get_args(FullReason)))
    return dataclasses.replace(
        RUNNING,
        connection=connection,
        worker_id=worker_id,
        connected=connected,
        draining=draw(st.booleans()),
        last_error=draw(st.sampled_from(["", "HTTP 401: the server refused the key"])),
        registrations=draw(st.integers(0, 2)),
        processes=draw(st.integers(0, 3)),
        idle=draw(st.integers(0, 3)),
        idle_target=draw(st.integers(0, 3)),
        pool_backoff=backoff,
        pool_failure=draw(st.sampled_from([None, "crashed at import"])) if backoff else None,
        full=bool(full_reason),
        full_reason=full_reason,
    )


#: What the supervisor records of an agent between runtimes (``AgentSlot.state``).
RECORDED = [
    AgentState.PENDING,
    AgentState.STARTING,
    AgentState.FAILED,
    AgentState.DRAINING,
    AgentState.DRAINED,
    AgentState.STOPPED,
]


@st.composite
def agents(draw: st.DrawFn) -> AgentSnapshot:
    return AgentSnapshot(
        name="sales",
        recorded=draw(st.sampled_from(RECORDED)),
        reason=draw(st.sampled_from(["", "the worker stopped"])),
        restart_in=draw(st.none() | st.floats(0, 300)),
        overridden=draw(st.booleans()),
        replacing=draw(st.booleans()),
        draining_runtimes=draw(st.integers(0, 2)),
        runtime=draw(st.none() | runtimes()),
    )


@given(agents())
def test_state_ready_message_sync_and_conditions_never_disagree(agent: AgentSnapshot) -> None:
    derived = derive(agent)
    result = conditions(agent)
    runtime = agent.runtime
    # READY, /readyz and the Ready condition are one answer
    assert derived.ready == derived.facts.ready == result["Ready"][0]
    if derived.ready:
        assert derived.state in READY_STATES
        assert runtime is not None
        assert runtime.registered
        assert not runtime.draining
        assert agent.restart_in is None
        assert result["Registered"][0]
    if derived.state not in READY_STATES:
        assert not derived.ready
        assert not result["Accepting"][0]
    if result["Accepting"][0]:
        assert derived.ready
        assert derived.state is AgentState.RUNNING
    if derived.state is AgentState.FULL:
        assert runtime is not None
        assert runtime.full
    # the Registered condition is the worker's registration, and only while no restart waits
    registered = runtime is not None and runtime.registered and agent.restart_in is None
    assert result["Registered"][0] == registered
    # a scheduled restart wins over everything the old runtime says
    if agent.restart_in is not None:
        assert derived.state is AgentState.BACKOFF
        assert "restarting in" in derived.message
    # SYNC and the Synced condition
    assert (derived.sync is Sync.OVERRIDE) == agent.overridden
    assert (
        result["Synced"]
        == {
            Sync.SYNCED: (True, "Synced"),
            Sync.PENDING: (False, "Pending"),
            Sync.OVERRIDE: (False, "Override"),
        }[derived.sync]
    )
    if derived.sync is Sync.SYNCED:
        assert runtime is not None
        assert runtime.registrations > 0
        assert not agent.replacing
        assert not agent.draining_runtimes
    # why it is not simply running is always said
    if agent.replacing:
        assert "the old one keeps taking jobs" in derived.message
    assert not derived.message.startswith(";")
    if agent.draining_runtimes and runtime is None and agent.restart_in is None:
        assert derived.state is AgentState.DRAINING
        assert derived.message
    # deterministic
    assert derive(agent) == derived
