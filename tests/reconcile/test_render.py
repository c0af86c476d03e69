"""The plan's text and JSON forms: ``lksup apply`` prints the daemon's JSON plan in the words
``lksup diff`` uses."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from lksup.reconcile import render
from lksup.reconcile.diff import Action, AgentPlan, FieldChange, Plan

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
)
changes = st.lists(
    st.builds(FieldChange, st.text(min_size=1, max_size=12), values, values), max_size=3
).map(tuple)
plans = st.builds(
    Plan,
    st.lists(
        st.builds(AgentPlan, st.text(min_size=1, max_size=12), st.sampled_from(Action), changes),
        max_size=4,
    ).map(tuple),
    changes,
)


@given(plans)
def test_a_plan_survives_its_json_form(plan: Plan) -> None:
    document = json.loads(json.dumps(render.to_json(plan)))  # as the control socket carries it
    assert render.from_json(document) == plan
    assert render.to_text(render.from_json(document)) == render.to_text(plan)


def test_counts_read_as_the_summary_does() -> None:
    plan = Plan(
        (
            AgentPlan("a", Action.CREATE),
            AgentPlan("b", Action.UPDATE_IN_PLACE),
            AgentPlan("c", Action.UPDATE_IN_PLACE),
        )
    )
    line = "1 to create, 2 to update in place, 0 to replace, 0 to drain and remove, 0 unchanged"
    assert render.summary(plan) == f"Plan: {line}."
    assert render.counts(render.to_json(plan)["summary"]) == line


def test_template_value_changes_come_last_in_the_words_of_a_change() -> None:
    plan = Plan((AgentPlan("a", Action.UPDATE_IN_PLACE, (FieldChange("max_jobs", 1, 2),)),))
    values = (FieldChange("region", "eu", "us"), FieldChange("replicas", None, 3.0))
    assert render.to_text(plan, values=values).splitlines()[-3:] == [
        "      max_jobs: 1 -> 2",
        "  template value region: eu -> us",
        "  template value replicas: (unset) -> 3",
    ]


@given(changes)
def test_value_changes_survive_their_json_form(items: tuple[FieldChange, ...]) -> None:
    document = json.loads(json.dumps([render.change_to_json(c) for c in items]))
    assert render.changes_from_json(document) == items
    assert render.changes_from_json(None) == ()
