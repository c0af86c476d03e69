from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lksup.fleet import loadexpr


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("cpu", "cpu"),
        ("  jobs ", "jobs"),
        ("max(cpu,jobs)", "max(cpu, jobs)"),
        ("max( cpu , jobs , 0.5*memory )", "max(cpu, jobs, 0.5 * memory)"),
        ("(cpu)", "cpu"),
        ("cpu + jobs * 2", "cpu + jobs * 2"),
        ("(cpu + jobs) * 2", "(cpu + jobs) * 2"),
        ("0.50 * cpu", "0.5 * cpu"),
        (".5*cpu", "0.5 * cpu"),
        ("min(1, cpu + memory)", "min(1, cpu + memory)"),
    ],
)
def test_canonical_form(text: str, canonical: str) -> None:
    assert loadexpr.canonical(text) == canonical
    assert loadexpr.canonical(canonical) == canonical


@pytest.mark.parametrize(
    ("text", "offset", "message"),
    [
        ("", 0, "empty load expression"),
        ("cpux", 0, "unknown name 'cpux'"),
        ("max(cpu, jbs)", 9, "unknown name 'jbs'"),
        ("max(cpu", 7, "expected ')'"),
        ("cpu +", 5, "expected a number, a signal or a function"),
        ("cpu jobs", 4, "unexpected 'jobs'"),
        ("cpu - jobs", 4, "unexpected '-'"),
        ("-cpu", 0, "negative numbers and subtraction are not supported"),
        ("__import__('os')", 0, "unknown name '__import__'"),
        ("cpu ** 2", 5, "expected a number, a signal or a function"),
    ],
)
def test_errors_point_at_the_problem(text: str, offset: int, message: str) -> None:
    with pytest.raises(loadexpr.LoadExprError) as info:
        loadexpr.parse(text)
    assert info.value.offset == offset
    assert message in str(info.value)


def test_evaluate_clamps_to_unit_interval() -> None:
    signals = {"cpu": 0.4, "memory": 0.9, "jobs": 0.25}
    assert loadexpr.evaluate(loadexpr.parse("max(cpu, jobs, 0.5 * memory)"), signals) == 0.45
    assert loadexpr.evaluate(loadexpr.parse("cpu + memory"), signals) == 1.0
    assert loadexpr.evaluate(loadexpr.parse("min(cpu, jobs)"), signals) == 0.25
    assert loadexpr.evaluate(loadexpr.parse("0"), signals) == 0.0


def test_signals_used() -> None:
    expr = loadexpr.parse("max(cpu, 0.5 * jobs)")
    assert loadexpr.signals_used(expr) == {"cpu", "jobs"}


_atoms = st.sampled_from(["cpu", "memory", "jobs", "0", "1", "0.25", "2.5"])


def _exprs() -> st.SearchStrategy[str]:
    return st.recursive(
        _atoms,
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["+", "*"]), inner).map(
                lambda t: f"({t[0]}{t[1]}{t[2]})"
            ),
            st.tuples(st.sampled_from(["max", "min"]), st.lists(inner, min_size=1, max_size=3)).map(
                lambda t: f"{t[0]}( {' ,'.join(t[1])} )"
            ),
        ),
        max_leaves=12,
    )


@given(_exprs(), st.fixed_dictionaries({s: st.floats(0, 1) for s in loadexpr.SIGNALS}))
def test_canonical_form_is_stable_and_means_the_same(text: str, signals: dict[str, float]) -> None:
    canonical = loadexpr.canonical(text)
    assert loadexpr.canonical(canonical) == canonical
    original = loadexpr.evaluate(loadexpr.parse(text), signals)
    assert loadexpr.evaluate(loadexpr.parse(canonical), signals) == pytest.approx(original)
    assert 0.0 <= original <= 1.0


@given(st.text(max_size=30))
def test_parser_never_crashes(text: str) -> None:
    offset = 0
    try:
        loadexpr.parse(text)
    except loadexpr.LoadExprError as exc:
        offset = exc.offset
    assert 0 <= offset <= len(text)


def test_tiny_numbers_print_without_an_exponent() -> None:
    """Regression: 0.00001 printed as 1e-05, which the grammar (no exponents) then refused."""
    assert loadexpr.canonical("0.00001") == "0.00001"
    assert loadexpr.canonical("cpu + 0.000000123") == "cpu + 0.000000123"
    assert loadexpr.canonical(loadexpr.canonical("max(0.00001)")) == "max(0.00001)"
