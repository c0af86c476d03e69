"""The signal table: what each signal asks of the daemon in each phase (pure, no signals sent)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lksup.daemon.intents import SIGNALS, TABLE, Intent, Phase, intent_for, phase_after

R, D = Phase.RUNNING, Phase.DRAINING


@pytest.mark.parametrize(
    ("signal", "phase", "intent"),
    [
        ("SIGTERM", R, Intent.DRAIN),
        ("SIGINT", R, Intent.DRAIN),
        ("SIGTERM", D, Intent.STOP_NOW),  # a second stop signal forces the stop
        ("SIGINT", D, Intent.STOP_NOW),
        ("SIGQUIT", R, Intent.STOP_NOW),  # no drain at all
        ("SIGQUIT", D, Intent.STOP_NOW),
        ("SIGHUP", R, Intent.REAPPLY),
        ("SIGHUP", D, Intent.REAPPLY),  # the re-apply says it is ignored while shutting down
        ("SIGUSR1", R, Intent.DUMP_STACKS),
        ("SIGUSR1", D, Intent.DUMP_STACKS),
    ],
)
def test_the_table(signal: str, phase: Phase, intent: Intent) -> None:
    assert intent_for(signal, phase) is intent


def test_the_table_is_total_and_has_nothing_else() -> None:
    assert set(TABLE) == set(itertools.product(SIGNALS, Phase))


def test_an_unhandled_signal_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        intent_for("SIGUSR2", R)


def test_only_drain_and_stop_now_stop() -> None:
    assert {i for i in Intent if i.stops} == {Intent.DRAIN, Intent.STOP_NOW}


signals = st.lists(st.sampled_from(SIGNALS), max_size=12)


def _run(sequence: list[str]) -> list[Intent]:
    phase, intents = R, []
    for signal in sequence:
        intent = intent_for(signal, phase)
        intents.append(intent)
        phase = phase_after(intent, phase)
    return intents


@given(signals)
def test_at_most_one_drain_and_a_stop_signal_after_it_forces(sequence: list[str]) -> None:
    intents = _run(sequence)
    assert intents.count(Intent.DRAIN) <= 1
    if Intent.DRAIN in intents:
        start = intents.index(Intent.DRAIN) + 1
        after = [
            intent
            for signal, intent in zip(sequence[start:], intents[start:], strict=True)
            if signal in ("SIGTERM", "SIGINT", "SIGQUIT")
        ]
        assert all(intent is Intent.STOP_NOW for intent in after)


@given(signals)
def test_the_first_stop_signal_always_stops(sequence: list[str]) -> None:
    intents = _run(sequence)
    for signal, intent in zip(sequence, intents, strict=True):
        if signal in ("SIGTERM", "SIGINT", "SIGQUIT"):
            assert intent.stops
            break
        assert not intent.stops  # SIGHUP and SIGUSR1 never stop anything


@given(st.sampled_from(SIGNALS), st.sampled_from(Phase))
def test_only_a_drain_changes_the_phase_and_never_back(signal: str, phase: Phase) -> None:
    intent = intent_for(signal, phase)
    after = phase_after(intent, phase)
    assert after is (D if intent is Intent.DRAIN else phase)
    assert not (phase is D and after is R)
