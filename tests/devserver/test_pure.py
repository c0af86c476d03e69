"""The pure parts: deployment validation, job-state transitions, selection, tokens."""

from __future__ import annotations

import random
from typing import Any

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lksup.devserver import auth, dispatch, model
from lksup.devserver.dispatch import Budget, Candidate, Verdict

from .helpers import KEY, SECRET

AVAILABLE = model.WorkerStatus.AVAILABLE
FULL = model.WorkerStatus.FULL


@pytest.mark.parametrize(
    ("deployment", "valid"),
    [
        ("", True),
        ("production", True),
        ("prod-us.v2", True),
        ("prod:us", True),
        ("a/b", True),
        ("prodüction", True),
        ("a" * 64, True),
        ("prod_us", False),
        ("prod us", False),
        ("prod\tus", False),
        ("prod\nus", False),
        ("prod\x7fus", False),
        ("prod\x00us", False),
        ("a" * 65, False),
        ("ü" * 33, False),  # 66 bytes
    ],
)
def test_valid_deployment_matches_go_table(deployment: str, valid: bool) -> None:
    assert model.valid_deployment(deployment) is valid


def _job(status: int = model.StatusCode.PENDING) -> model.Job:
    return model.Job(id="AJ_1", type=0, room=None, state=model.JobState(status=status))


def test_offered_job_is_already_running_on_the_worker() -> None:
    job = model.offered(_job(), worker_id="AW_1", now_ns=5)
    assert job.state == model.JobState(
        status=model.StatusCode.RUNNING, worker_id="AW_1", started_at=5, updated_at=5
    )


@pytest.mark.parametrize(
    ("before", "after", "started", "ended"),
    [
        (model.StatusCode.PENDING, model.StatusCode.RUNNING, 9, 0),
        (model.StatusCode.RUNNING, model.StatusCode.RUNNING, 1, 0),
        (model.StatusCode.RUNNING, model.StatusCode.SUCCESS, 1, 9),
        (model.StatusCode.RUNNING, model.StatusCode.FAILED, 1, 9),
        (model.StatusCode.RUNNING, 4, 1, 0),  # JS_CANCELLED (wheel only) does not end a job
        (model.StatusCode.PENDING, model.StatusCode.PENDING, 1, 0),
    ],
)
def test_status_update_follows_update_job_status(
    before: int, after: int, started: int, ended: int
) -> None:
    job = model.Job("AJ_1", 0, None, state=model.JobState(status=before, started_at=1))
    state = model.status_updated(job, status=after, error="e", now_ns=9).state
    assert (state.status, state.error, state.started_at, state.ended_at, state.updated_at) == (
        after,
        "e",
        started,
        ended,
        9,
    )


def test_affinity_gate_uses_float32_and_only_available_workers() -> None:
    assert dispatch.affinity([Candidate("a", AVAILABLE, 0.7)], 0.7) == 0
    assert dispatch.affinity([Candidate("a", AVAILABLE, 0.8), Candidate("b", FULL, 0.0)], 0.7) == 0
    assert dispatch.affinity([Candidate("a", AVAILABLE, 0.69)], 0.7) > 0
    assert dispatch.affinity([], 0.7) == 0
    both = [Candidate("a", AVAILABLE, 0.5), Candidate("b", AVAILABLE, 0.6)]
    assert dispatch.affinity(both, 0.7) == pytest.approx(0.3)


def test_pick_skips_tried_full_and_saturated_workers() -> None:
    pool = [
        Candidate("full", FULL, 0.0),
        Candidate("tried", AVAILABLE, 0.0),
        Candidate("saturated", AVAILABLE, 1.0),
        Candidate("ok", AVAILABLE, 0.9),
    ]
    assert {dispatch.pick(pool, {"tried"}, d / 10) for d in range(10)} == {"ok"}
    assert dispatch.pick(pool, {"tried", "ok"}, 0.5) is None


@given(st.lists(st.floats(0, 1.5), min_size=1, max_size=6), st.floats(0, 1, exclude_max=True))
def test_pick_returns_an_eligible_worker(loads: list[float], draw: float) -> None:
    pool = [Candidate(str(i), AVAILABLE, load) for i, load in enumerate(loads)]
    chosen = dispatch.pick(pool, (), draw)
    weights = {c.worker_id: 1 - dispatch.float32(c.load) for c in pool}
    if all(w <= 0 for w in weights.values()):
        assert chosen is None
    else:
        assert chosen is not None
        assert weights[chosen] > 0


def test_pick_is_weighted_by_spare_capacity() -> None:
    pool = [Candidate("idle", AVAILABLE, 0.0), Candidate("busy", AVAILABLE, 0.75)]
    rng = random.Random(7)
    picks = [dispatch.pick(pool, (), rng.random()) for _ in range(2000)]
    assert 0.75 < picks.count("idle") / len(picks) < 0.85  # 1.0 / (1.0 + 0.25) = 0.8


def test_budget_is_shared_and_capped_per_worker() -> None:
    budget = Budget.starting(100.0, 3.0)
    assert budget.wait(100.0) == 3.0
    assert budget.wait(102.5) == pytest.approx(0.5)
    assert budget.wait(103.0) <= 0
    assert Budget(deadline=200.0).wait(100.0) == dispatch.ASSIGN_TIMEOUT


@pytest.mark.parametrize(
    ("available", "terminate", "expected"),
    [
        (True, False, Verdict.ACCEPTED),
        (False, False, Verdict.RETRY),
        (False, True, Verdict.TERMINATED),
        (True, True, Verdict.TERMINATED),
    ],
)
def test_terminate_is_checked_first(available: bool, terminate: bool, expected: Verdict) -> None:
    assert dispatch.verdict(available=available, terminate=terminate) is expected


def test_server_overwrites_lk_agent_name() -> None:
    attrs = dispatch.token_attributes({"lk.agent_name": "spoof", "x": "1"}, "real")
    assert attrs == {"lk.agent_name": "real", "x": "1"}


# --- tokens ----------------------------------------------------------------------------------

NOW = 1_700_000_000.0


def _verify(raw: str) -> auth.Grants:
    return auth.verify(raw, {KEY: SECRET}, now=NOW)


def _tok(**claims: Any) -> str:
    base: dict[str, Any] = {"iss": KEY, "nbf": int(NOW), "exp": int(NOW) + 60, "video": {}}
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, SECRET, algorithm="HS256")


def test_verify_reads_grants() -> None:
    grants = _verify(_tok(sub="me", video={"roomAdmin": True, "room": "r", "agent": True}))
    assert grants == auth.Grants(KEY, identity="me", room_admin=True, room="r", agent=True)


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": None},
        {"exp": int(NOW) - 61},
        {"nbf": int(NOW) + 61},
        {"iat": int(NOW) + 61},
        {"exp": "soon"},
        {"iss": "unknown"},
        {"iss": None},
        {"video": ["agent"]},
    ],
)
def test_verify_rejects(claims: dict[str, Any]) -> None:
    with pytest.raises(auth.AuthError):
        _verify(_tok(**claims))


@pytest.mark.parametrize("claims", [{"exp": int(NOW) - 59}, {"nbf": int(NOW) + 59}])
def test_verify_allows_one_minute_of_leeway(claims: dict[str, Any]) -> None:
    _verify(_tok(**claims))


def test_verify_rejects_other_algorithms_and_bad_signatures() -> None:
    wrong = jwt.encode({"iss": KEY, "exp": int(NOW) + 60}, SECRET + "x", algorithm="HS256")
    hs512 = jwt.encode({"iss": KEY, "exp": int(NOW) + 60}, SECRET * 2, algorithm="HS512")
    for raw in (wrong, hs512, "not a token", ""):
        with pytest.raises(auth.AuthError):
            _verify(raw)


def test_short_secrets_are_accepted_without_warnings() -> None:
    """The real server's --dev secret is "secret"; PyJWT's warning must not escape."""
    raw = auth.sign({"iss": KEY, "exp": int(NOW) + 60, "video": {"agent": True}}, "secret")
    assert auth.verify(raw, {KEY: "secret"}, now=NOW).agent


@pytest.mark.parametrize(
    ("header", "query", "expected"),
    [
        ("Bearer abc", "", "abc"),
        (None, "access_token=xyz&protocol=1", "xyz"),
        ("Bearer abc", "access_token=xyz", "abc"),
        (None, "", ""),
    ],
)
def test_token_from_request(header: str | None, query: str, expected: str) -> None:
    assert auth.token_from_request(header, query) == expected


def test_authorization_must_be_bearer() -> None:
    with pytest.raises(auth.AuthError):
        auth.token_from_request("Basic abc", "access_token=xyz")


def test_job_token_claims_match_build_agent_token() -> None:
    request = auth.JobTokenRequest(
        room="r1",
        identity="agent-1",
        name="Agent",
        metadata="md",
        attributes={"lk.agent_name": "a"},
        permissions=model.Permissions(can_publish=True, hidden=True),
    )
    claims = auth.job_token_claims(KEY, request, now=NOW)
    assert claims == {
        "iss": KEY,
        "nbf": int(NOW),
        "exp": int(NOW) + 3600,
        "sub": "agent-1",
        "name": "Agent",
        "kind": "agent",
        "video": {
            "roomJoin": True,
            "room": "r1",
            "canPublish": True,
            "canSubscribe": False,
            "canPublishData": False,
            "canUpdateOwnMetadata": False,
            "hidden": True,
            "agent": True,
            "canSubscribeMetrics": False,
        },
        "metadata": "md",
        "attributes": {"lk.agent_name": "a"},
    }
    signed = auth.job_token(KEY, SECRET, request, now=NOW)
    assert jwt.get_unverified_header(signed) == {"alg": "HS256", "typ": "JWT"}
    assert (
        jwt.decode(
            signed, SECRET, algorithms=["HS256"], options={"verify_exp": False, "verify_nbf": False}
        )
        == claims
    )
