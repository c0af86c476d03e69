from __future__ import annotations

import pytest

from lksup.fleet.loadexpr import LoadExprError
from lksup.monitors.load import MovingAverage, agent_load, at_capacity, is_full, jobs_share


@pytest.mark.parametrize(
    ("expr", "signals", "expected"),
    [
        ("cpu", {"cpu": 0.3}, 0.3),
        ("memory", {"memory": 0.42}, 0.42),
        ("jobs", {"running_jobs": 1, "reserved_jobs": 1, "max_jobs": 4}, 0.5),
        ("jobs", {"running_jobs": 3, "reserved_jobs": 0, "max_jobs": None}, 0.0),
        ("max(cpu, jobs)", {"cpu": 0.2, "running_jobs": 3, "max_jobs": 4}, 0.75),
        ("max(cpu, jobs)", {"cpu": 0.9, "running_jobs": 3, "max_jobs": 4}, 0.9),
        ("min(cpu, memory)", {"cpu": 0.9, "memory": 0.1}, 0.1),
        ("max(cpu, jobs, 0.5 * memory)", {"cpu": 0.1, "memory": 0.8}, 0.4),
        # The result is clamped to [0, 1], what the server accepts.
        ("cpu + jobs", {"cpu": 0.8, "running_jobs": 2, "max_jobs": 2}, 1.0),
        # ``jobs`` itself is not clamped: an agent over its maximum still reads above 1.
        ("0.5 * jobs", {"running_jobs": 3, "max_jobs": 2}, 0.75),
        ("0", {"cpu": 1.0}, 0.0),
    ],
)
def test_agent_load(expr: str, signals: dict[str, float | None], expected: float) -> None:
    """An agent's load is its expression over the shared signals and its own jobs, in [0, 1]."""
    values: dict[str, float | None] = {
        "cpu": 0.0,
        "memory": 0.0,
        "running_jobs": 0,
        "reserved_jobs": 0,
        "max_jobs": None,
    }
    values.update(signals)
    load = agent_load(
        expr,
        cpu=float(values["cpu"] or 0.0),
        memory=float(values["memory"] or 0.0),
        running_jobs=int(values["running_jobs"] or 0),
        reserved_jobs=int(values["reserved_jobs"] or 0),
        max_jobs=None if values["max_jobs"] is None else int(values["max_jobs"]),
    )
    assert load == pytest.approx(expected)


def test_reserved_offers_count_as_running() -> None:
    """Offers accepted but not yet assigned count, so a burst cannot overshoot capacity."""
    assert jobs_share(running_jobs=1, reserved_jobs=2, max_jobs=4) == 0.75
    assert at_capacity(running_jobs=2, reserved_jobs=2, max_jobs=4)
    assert not at_capacity(running_jobs=2, reserved_jobs=1, max_jobs=4)
    assert not at_capacity(running_jobs=100, reserved_jobs=100, max_jobs=None)


def test_max_jobs_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_jobs"):
        jobs_share(running_jobs=0, reserved_jobs=0, max_jobs=0)


def test_invalid_expression_raises_the_fleet_error() -> None:
    with pytest.raises(LoadExprError):
        agent_load("cpu -", cpu=0, memory=0, running_jobs=0, reserved_jobs=0, max_jobs=None)


@pytest.mark.parametrize(
    ("load", "threshold", "over_budget", "capacity", "full"),
    [
        (0.69, 0.7, False, False, False),
        (0.7, 0.7, False, False, True),  # reaching the threshold is full, as the SDK
        (0.9, 0.7, False, False, True),
        (0.0, 0.7, True, False, True),  # over the memory budget: every agent is full
        (0.0, 0.7, False, True, True),  # max_jobs reached, whatever the expression says
        (1.0, 1.0, False, False, True),
        (0.99, 1.0, False, False, False),
    ],
)
def test_is_full(
    load: float, threshold: float, over_budget: bool, capacity: bool, full: bool
) -> None:
    assert is_full(load, threshold, over_budget=over_budget, at_capacity=capacity) is full


def test_moving_average_over_a_window() -> None:
    """The mean of the last ``window`` values; of those there are before the window fills."""
    average = MovingAverage(5)
    assert average.value == 0.0
    assert average.window == 5
    assert [average.add(v) for v in (0.2, 0.4, 0.6, 0.8, 1.0)] == pytest.approx(
        [0.2, 0.3, 0.4, 0.5, 0.6]
    )
    assert average.add(0.0) == pytest.approx(0.56)  # 0.2 left the window
    assert len(average) == 5


def test_moving_average_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window"):
        MovingAverage(0)
