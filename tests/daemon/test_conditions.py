"""Kubernetes-style conditions: what each fact set means, and when lastTransitionTime moves."""

from __future__ import annotations

import dataclasses
from typing import get_args

from hypothesis import given
from hypothesis import strategies as st

from lksup.control import api
from lksup.daemon.conditions import ConditionTracker
from lksup.daemon.status import TYPES, AgentState, Facts, FullReason, Sync, evaluate, is_ready

RUNNING = Facts(
    state=AgentState.RUNNING,
    registered=True,
    draining=False,
    full_reason="",
    full_message="load 0.10 < threshold 0.75",
    idle=1,
    idle_target=1,
    pool_failure="",
    sync=Sync.SYNCED,
    message="",
)


def table(facts: Facts) -> dict[str, tuple[bool, str]]:
    return {kind: (status, reason) for kind, status, reason, _ in evaluate(facts)}


def test_a_running_agent_is_true_everywhere() -> None:
    assert [c[0] for c in evaluate(RUNNING)] == list(TYPES)
    assert table(RUNNING) == {
        "Registered": (True, "Registered"),
        "Ready": (True, "Ready"),
        "Accepting": (True, "BelowThreshold"),
        "PoolWarm": (True, "Warm"),
        "Synced": (True, "Synced"),
    }


def test_full_is_ready_but_not_accepting_with_the_reason() -> None:
    full = dataclasses.replace(
        RUNNING, state=AgentState.FULL, full_reason="AtMaxJobs", full_message="2/2 jobs"
    )
    conditions = {c[0]: c for c in evaluate(full)}
    assert conditions["Ready"][1] is True
    assert conditions["Accepting"][1:] == (False, "AtMaxJobs", "2/2 jobs")


def test_draining_by_an_operator() -> None:
    drained = dataclasses.replace(
        RUNNING, state=AgentState.DRAINING, draining=True, sync=Sync.OVERRIDE
    )
    result = table(drained)
    assert result["Ready"] == (False, "Draining")
    assert result["Accepting"] == (False, "NotReady")
    assert result["Synced"] == (False, "Override")
    assert result["Registered"] == (True, "Registered")


def test_a_failed_connection_carries_its_message() -> None:
    failed = dataclasses.replace(
        RUNNING,
        state=AgentState.BACKOFF,
        registered=False,
        sync=Sync.PENDING,
        idle=0,
        message="connection gave up after 3 attempt(s): HTTP 401; restarting in 20s",
    )
    conditions = {c[0]: c for c in evaluate(failed)}
    assert conditions["Registered"][1:3] == (False, "ConnectionFailed")
    assert "HTTP 401" in conditions["Registered"][3]
    assert conditions["Ready"][1:3] == (False, "NotRegistered")
    assert conditions["PoolWarm"][1:] == (False, "Warming", "0/1 idle processes")
    assert conditions["Synced"][1:3] == (False, "Pending")


def test_pool_backoff_and_connecting() -> None:
    crashed = dataclasses.replace(RUNNING, pool_failure="prewarm raised ValueError", idle=0)
    assert table(crashed)["PoolWarm"] == (False, "Backoff")
    starting = dataclasses.replace(RUNNING, state=AgentState.CONNECTING, registered=False)
    assert table(starting)["Registered"] == (False, "Connecting")
    stopped = dataclasses.replace(
        RUNNING, state=AgentState.DRAINED, registered=False, draining=True
    )
    assert table(stopped)["Registered"] == (False, "Stopped")


def test_last_transition_moves_only_when_the_status_changes() -> None:
    tracker = ConditionTracker()
    first = {c.type: c for c in tracker.observe(RUNNING, now=100.0)}
    assert {c.last_transition for c in first.values()} == {100.0}
    # a new message (the load moved) is not a transition
    busier = dataclasses.replace(RUNNING, full_message="load 0.50 < threshold 0.75")
    second = {c.type: c for c in tracker.observe(busier, now=105.0)}
    assert second["Accepting"].last_transition == 100.0
    assert second["Accepting"].message == "load 0.50 < threshold 0.75"
    # a new reason with the same status is not a transition either
    full = dataclasses.replace(RUNNING, full_reason="AtMaxJobs", full_message="2/2 jobs")
    third = {c.type: c for c in tracker.observe(full, now=110.0)}
    assert third["Accepting"].status is False
    assert third["Accepting"].last_transition == 110.0
    over = dataclasses.replace(full, full_reason="OverMemoryBudget")
    fourth = {c.type: c for c in tracker.observe(over, now=120.0)}
    assert fourth["Accepting"].last_transition == 110.0
    assert fourth["Accepting"].reason == "OverMemoryBudget"
    assert fourth["Ready"].last_transition == 100.0


def test_the_api_documents_every_state_and_sync_value() -> None:
    assert set(get_args(api.AgentState)) == {state.value for state in AgentState}
    assert set(get_args(api.SyncState)) == {sync.value for sync in Sync}


@given(
    state=st.sampled_from(AgentState),
    registered=st.booleans(),
    draining=st.booleans(),
    full_reason=st.sampled_from(["", "LoadAboveThreshold", "AtMaxJobs", "OverMemoryBudget"]),
    idle=st.integers(0, 4),
    idle_target=st.integers(0, 4),
    pool_failure=st.sampled_from(["", "ImportError: no module named agent"]),
    sync=st.sampled_from(Sync),
)
def test_conditions_never_contradict_the_state(
    state: AgentState,
    registered: bool,
    draining: bool,
    full_reason: FullReason,
    idle: int,
    idle_target: int,
    pool_failure: str,
    sync: Sync,
) -> None:
    """Regression: an agent in backoff (READY 0/1, /readyz 503) showed Registered, Ready and
    Accepting all True. READY, /readyz and the Ready condition are one definition."""
    facts = Facts(
        state, registered, draining, full_reason, "", idle, idle_target, pool_failure, sync, ""
    )
    result = {kind: status for kind, status, _, _ in evaluate(facts)}
    assert result["Ready"] == is_ready(state, registered) == facts.ready  # READY and /readyz
    assert result["Ready"] == (registered and state in ("running", "full"))
    if result["Accepting"]:
        assert result["Ready"]
        assert not full_reason
    if result["Ready"]:
        assert result["Registered"]
    if state not in ("running", "full"):
        assert not result["Ready"]
        assert not result["Accepting"]
