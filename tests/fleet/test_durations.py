from __future__ import annotations

import pytest

from lksup.fleet.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (30, 30.0),
        (2.5, 2.5),
        ("45", 45.0),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("30m", 1800.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1m 30s", 90.0),
        ("1d", 86400.0),
        (0, 0.0),
    ],
)
def test_parse(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["30 minutes", "1x", "", "m", "-5", -1, True, None, "nan", [1]])
def test_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.5, "500ms"), (45, "45s"), (1800, "30m"), (5400, "1h30m"), (90061, "1d1h1m1s")],
)
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "seconds"), [("9ms", 0.009), ("2.01h", 7236.0), ("0.1s", 0.1)])
def test_decimal_durations_are_exact(text: str, seconds: float) -> None:
    """Regression: 9ms was 0.009000000000000001, so render and diff saw a change."""
    assert parse_duration(text) == seconds
