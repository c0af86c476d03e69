from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lksup.monitors.memory_policy import (
    MIB,
    NOTHING,
    Decision,
    Kill,
    MemoryPolicy,
    MemoryState,
    Warn,
    limit_reason,
    over_budget,
    to_mb,
)

#: (time, memory in MB) samples, each with the decision it must give.
Step = tuple[float, float, Decision]


def run(policy: MemoryPolicy, steps: list[Step]) -> None:
    state = MemoryState()
    for index, (now, mb, expected) in enumerate(steps):
        decision, state = policy.evaluate(state, int(mb * MIB), now)
        assert decision == expected, f"step {index}: {mb} MB at t={now}"


POLICY = MemoryPolicy(warn_mb=800, limit_mb=1000)


@pytest.mark.parametrize(
    ("policy", "steps"),
    [
        pytest.param(
            POLICY,
            [(0, 500, NOTHING), (5, 800, NOTHING), (10, 811.5, Warn(812, 800))],
            id="under-and-at-the-threshold-are-quiet-above-warns",
        ),
        pytest.param(
            POLICY,
            [(0, 812, Warn(812, 800)), (5, 812, NOTHING), (10, 840, NOTHING), (119, 849, NOTHING)],
            id="warns-once-then-quiet-within-cooldown-and-growth",
        ),
        pytest.param(
            POLICY,
            [(0, 812, Warn(812, 800)), (120, 812, Warn(812, 800)), (125, 812, NOTHING)],
            id="re-warns-after-the-cooldown",
        ),
        pytest.param(
            POLICY,
            [
                (0, 812, Warn(812, 800)),
                (5, 861, NOTHING),
                (10, 862, Warn(862, 800)),
                (15, 870, NOTHING),
            ],
            id="re-warns-after-growing-50-mb-since-the-last-warning",
        ),
        pytest.param(
            POLICY,
            [
                (0, 812, Warn(812, 800)),
                (5, 700, NOTHING),
                (10, 812, NOTHING),
                (130, 812, Warn(812, 800)),
            ],
            id="falling-under-does-not-reset-the-cooldown",
        ),
        pytest.param(
            POLICY,
            [
                (0, 812, Warn(812, 800)),
                (5, 1000, Warn(1000, 800)),  # grew 188 MB
                (10, 1000.5, Kill(1001, 1000, "memory limit exceeded (1001 MB > 1000 MB)")),
                (15, 1200, NOTHING),
                (500, 900, NOTHING),
            ],
            id="kill-above-the-limit-once-then-quiet",
        ),
        pytest.param(
            POLICY,
            [(0, 1500, Kill(1500, 1000, "memory limit exceeded (1500 MB > 1000 MB)"))],
            id="kill-wins-over-warn",
        ),
        pytest.param(
            MemoryPolicy(warn_mb=0, limit_mb=0),
            [(0, 10_000, NOTHING), (500, 20_000, NOTHING)],
            id="zero-disables-both",
        ),
        pytest.param(
            MemoryPolicy(warn_mb=0, limit_mb=150),
            [
                (0, 149, NOTHING),
                (5, 151, Kill(151, 150, "memory limit exceeded (151 MB > 150 MB)")),
            ],
            id="limit-without-warning",
        ),
        pytest.param(
            MemoryPolicy(warn_mb=50, limit_mb=0),
            [(0, 51, Warn(51, 50)), (5, 5_000, Warn(5_000, 50)), (10, 50_000, Warn(50_000, 50))],
            id="warning-without-limit-never-kills",
        ),
        pytest.param(
            MemoryPolicy(warn_mb=100, limit_mb=0, warn_cooldown=10.0, regrow_mb=5),
            [
                (0, 101, Warn(101, 100)),
                (9, 105, NOTHING),
                (9.5, 106, Warn(106, 100)),
                (19.5, 106, Warn(106, 100)),
            ],
            id="cooldown-and-regrowth-are-parameters",
        ),
    ],
)
def test_memory_policy(policy: MemoryPolicy, steps: list[Step]) -> None:
    """Warnings are rate-limited by cooldown or regrowth; a kill is decided once, above the limit."""
    run(policy, steps)


def test_kill_reason_text_is_exact() -> None:
    """The reason the job fails with names whole MB, the figure rounded up."""
    decision, _ = MemoryPolicy(0, 150).evaluate(MemoryState(), 150 * MIB + 1, 0.0)
    assert decision == Kill(151, 150, "memory limit exceeded (151 MB > 150 MB)")
    assert limit_reason(812, 800) == "memory limit exceeded (812 MB > 800 MB)"


@pytest.mark.parametrize(
    ("nbytes", "mb"), [(0, 0), (1, 1), (MIB, 1), (MIB + 1, 2), (812 * MIB - 5, 812)]
)
def test_to_mb_rounds_up(nbytes: int, mb: int) -> None:
    assert to_mb(nbytes) == mb


@pytest.mark.parametrize(
    "kwargs",
    [
        {"warn_mb": -1, "limit_mb": 0},
        {"warn_mb": 0, "limit_mb": -1},
        {"warn_mb": 1, "limit_mb": 1, "warn_cooldown": -1},
    ],
)
def test_negative_thresholds_are_misuse(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        MemoryPolicy(**kwargs)


def test_enabled() -> None:
    assert MemoryPolicy(1, 0).enabled
    assert MemoryPolicy(0, 1).enabled
    assert not MemoryPolicy(0, 0).enabled


@pytest.mark.parametrize(
    ("totals_mb", "expected"),
    [
        ([900, 1000, 1001], [False, False, True]),
        # Once over, it stays over down to 95 % of the budget, and is back under below it.
        (
            [1001, 990, 951, 950, 949.9, 990, 1000, 1000.1],
            [True, True, True, True, False, False, False, True],
        ),
        ([2000, 0], [True, False]),
    ],
)
def test_budget_hysteresis(totals_mb: list[float], expected: list[bool]) -> None:
    """Over when the total exceeds the budget; back under only below 95 % of it."""
    over = False
    answers = []
    for total in totals_mb:
        over = over_budget(int(total * MIB), 1000, was_over=over)
        answers.append(over)
    assert answers == expected


@pytest.mark.parametrize("budget", [None, 0])
def test_no_budget_is_never_over(budget: int | None) -> None:
    assert not over_budget(10**12, budget, was_over=True)


@given(st.lists(st.tuples(st.floats(0, 200), st.integers(0, 2_000 * MIB)), min_size=1, max_size=60))
def test_warnings_respect_cooldown_or_growth_and_kill_at_most_once(
    deltas: list[tuple[float, int]],
) -> None:
    """Between two warnings the cooldown elapsed or memory grew 50 MB; at most one kill, last."""
    policy = MemoryPolicy(warn_mb=500, limit_mb=1500)
    state = MemoryState()
    now = 0.0
    last_warning: tuple[float, int] | None = None
    decisions: list[Decision] = []
    for delta, nbytes in deltas:
        now += delta
        decision, state = policy.evaluate(state, nbytes, now)
        decisions.append(decision)
        if isinstance(decision, Warn):
            assert 500 * MIB < nbytes <= 1500 * MIB
            if last_warning is not None:
                assert now - last_warning[0] >= 120 or nbytes - last_warning[1] >= 50 * MIB
            last_warning = (now, nbytes)
        elif isinstance(decision, Kill):
            assert nbytes > 1500 * MIB
    kills = [i for i, d in enumerate(decisions) if isinstance(d, Kill)]
    assert len(kills) <= 1
    if kills:
        assert all(d == NOTHING for d in decisions[kills[0] + 1 :])
