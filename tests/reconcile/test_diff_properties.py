"""Properties of the plan (``diff``) and of ``render`` over random valid fleet documents.

Every fleet goes through a real YAML file and ``load_fleet`` (with an empty environment), as a
user's would. Documents come from ``tests.strategies``.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from lksup.cli import rendered_document
from lksup.fleet.loading import LoadedFleet, load_fleet
from lksup.fleet.schema import Agent, Fleet
from lksup.reconcile.diff import Action, AgentPlan, Plan, diff
from tests import strategies as fs

PROPERTY = settings(
    max_examples=50,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # tmp_path only holds uniquely named files
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
_FILES = itertools.count()

#: Agent fields a running agent takes without new processes or a new registration.
IN_PLACE_FIELDS = (
    "load_threshold",
    "max_jobs",
    "num_idle_processes",
    "job_memory",
    "drain_timeout",
    "shutdown_process_timeout",
    "initialize_process_timeout",
    "max_retry",
    "load",
    "request",
)
#: Agent fields whose change needs a new worker.
REPLACE_FIELDS = (
    "entrypoint",
    "prewarm",
    "request_fnc",
    "env",
    "working_dir",
    "permissions",
    "worker_type",
    "livekit.url",
)


# --- helpers ------------------------------------------------------------------------------


def _write(directory: Path, text: str) -> str:
    path = directory / f"fleet-{next(_FILES)}.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def _dump(doc: Mapping[str, Any]) -> str:
    """YAML text as ``lksup render`` prints it."""
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def _load(directory: Path, doc: Mapping[str, Any]) -> LoadedFleet:
    return _load_text(directory, _dump(doc))


def _load_text(directory: Path, text: str) -> LoadedFleet:
    return load_fleet(_write(directory, text), environ={})


def _fleet(directory: Path, doc: Mapping[str, Any]) -> Fleet:
    return _load(directory, doc).fleet


def _dump_json(fleet: Fleet) -> dict[str, Any]:
    """The normalized fleet as JSON data; literal secrets are digests, as in render."""
    return fleet.model_dump(mode="json")


def _plans(plan: Plan) -> dict[str, AgentPlan]:
    return {p.name: p for p in plan.agents}


def _describe(plan: Plan) -> str:
    lines = [f"fleet: {c.path}: {c.old!r} -> {c.new!r}" for c in plan.fleet]
    for agent in plan.agents:
        lines.append(f"{agent.name!r}: {agent.action.value}")
        lines.extend(f"    {c.path}: {c.old!r} -> {c.new!r}" for c in agent.changes)
    return "\n".join(lines)


def _assert_no_changes(plan: Plan) -> None:
    assert not plan.has_changes, _describe(plan)
    assert plan.fleet == (), _describe(plan)
    assert all(a.action is Action.UNCHANGED and a.changes == () for a in plan.agents)


def _assert_only(plan: Plan, name: str, action: Action) -> AgentPlan:
    """``name`` gets ``action``; every other agent is unchanged; no fleet setting changed."""
    plans = _plans(plan)
    assert plans[name].action is action, _describe(plan)
    others = {n: p.action for n, p in plans.items() if n != name}
    assert all(a is Action.UNCHANGED for a in others.values()), _describe(plan)
    assert plan.fleet == (), _describe(plan)
    return plans[name]


# --- no change ----------------------------------------------------------------------------


@PROPERTY
@given(doc=fs.fleet_documents())
def test_diff_of_a_fleet_with_itself_is_empty(tmp_path: Path, doc: dict[str, Any]) -> None:
    fleet = _fleet(tmp_path, doc)  # also: every generated document is valid
    assert set(fleet.agents) == set(doc.get("agents", {}))
    _assert_no_changes(diff(fleet, fleet))
    _assert_no_changes(diff(fleet, _fleet(tmp_path, doc)))  # a second, independent load
    assert set(_plans(diff(fleet, fleet))) == set(fleet.agents)


@PROPERTY
@given(data=st.data(), doc=fs.fleet_documents())
def test_cosmetic_rewrites_are_not_changes(
    tmp_path: Path, data: st.DataObject, doc: dict[str, Any]
) -> None:
    rewritten = data.draw(fs.cosmetic_rewrites(doc), label="rewritten")
    _assert_no_changes(diff(_fleet(tmp_path, doc), _fleet(tmp_path, rewritten)))


@PROPERTY
@given(data=st.data(), doc=fs.fleet_documents())
def test_cosmetic_rewrites_render_the_same(
    tmp_path: Path, data: st.DataObject, doc: dict[str, Any]
) -> None:
    rewritten = data.draw(fs.cosmetic_rewrites(doc), label="rewritten")
    before = rendered_document(_fleet(tmp_path, doc))
    after = rendered_document(_fleet(tmp_path, rewritten))
    assert after == before  # dict equality: agents may be listed in another order


@PROPERTY
@given(seconds=st.integers(0, 10**6), data=st.data())
def test_whole_second_durations_in_any_unit_are_equal(
    tmp_path: Path, seconds: int, data: st.DataObject
) -> None:
    first = data.draw(fs.duration_spellings(seconds), label="first")
    second = data.draw(fs.duration_spellings(seconds), label="second")
    old = _fleet(tmp_path, _one_agent_fleet({"drain_timeout": first}))
    new = _fleet(tmp_path, _one_agent_fleet({"drain_timeout": second}))
    _assert_no_changes(diff(old, new))
    assert new.agents["a"].drain_timeout == seconds


_UNIT_SECONDS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}


@PROPERTY
@given(
    digits=st.integers(0, 10**6),
    places=st.integers(0, 3),
    unit=st.sampled_from(sorted(_UNIT_SECONDS)),
)
def test_decimal_durations_in_any_unit_are_equal(
    tmp_path: Path, digits: int, places: int, unit: str
) -> None:
    """``1100ms``, ``1.1s`` and ``1.1`` are one duration; ``0.1m`` is exactly ``6``."""
    count = Decimal(digits).scaleb(-places)
    seconds = format((count * _UNIT_SECONDS[unit]).normalize(), "f")
    old = _fleet(tmp_path, _one_agent_fleet({"drain_timeout": seconds}))
    new = _fleet(tmp_path, _one_agent_fleet({"drain_timeout": f"{count:f}{unit}"}))
    assert old.agents["a"].drain_timeout == float(seconds)
    assert new.agents["a"].drain_timeout == float(seconds)
    _assert_no_changes(diff(old, new))


def _one_agent_fleet(options: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "lksup/v1",
        "kind": "Fleet",
        "metadata": {"name": "m"},
        "agents": {"a": {"entrypoint": "m:f", **options}},
    }


# --- render -------------------------------------------------------------------------------


@PROPERTY
@given(doc=fs.fleet_documents())
def test_render_is_idempotent(tmp_path: Path, doc: dict[str, Any]) -> None:
    first = rendered_document(_fleet(tmp_path, doc))
    first_text = _dump(first)
    second = rendered_document(_load_text(tmp_path, first_text).fleet)
    assert second == first
    assert _dump(second) == first_text


@PROPERTY
@given(text=fs.load_texts())
def test_every_load_expression_survives_load_and_render(tmp_path: Path, text: str) -> None:
    fleet = _fleet(tmp_path, _one_agent_fleet({"load": text, "max_jobs": 4}))
    again = _load_text(tmp_path, _dump(rendered_document(fleet))).fleet
    assert again.agents["a"].load == fleet.agents["a"].load


@PROPERTY
@given(doc=fs.fleet_documents())
def test_render_round_trips_the_normalized_fleet(tmp_path: Path, doc: dict[str, Any]) -> None:
    fleet = _fleet(tmp_path, doc)
    again = _load_text(tmp_path, _dump(rendered_document(fleet))).fleet
    assert _dump_json(again) == _dump_json(fleet)
    _assert_no_changes(diff(fleet, again))


# --- one change ---------------------------------------------------------------------------


@st.composite
def _fleet_and_agent(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    doc = draw(fs.fleet_documents(min_agents=1))
    name = draw(st.sampled_from(sorted(doc["agents"])))
    return doc, name


def _different(draw: st.DrawFn, strategy: st.SearchStrategy[Any], old: Any) -> Any:
    return draw(strategy.filter(lambda value: value != old))


def _in_place_change(draw: st.DrawFn, field: str, agent: Agent) -> dict[str, Any]:
    """Options that change ``field`` of ``agent`` (its effective value) and nothing else."""
    if field == "load_threshold":
        return {field: _different(draw, st.floats(0, 1, exclude_min=True), agent.load_threshold)}
    if field == "max_jobs":
        return {field: _different(draw, st.integers(1, 1000), agent.max_jobs)}
    if field == "num_idle_processes":
        choices = st.one_of(st.integers(0, 20), st.just("auto"))
        return {field: _different(draw, choices, agent.num_idle_processes)}
    if field == "job_memory":
        old = (agent.job_memory_warn_mb, agent.job_memory_limit_mb)
        pairs = st.tuples(st.integers(0, 5000), st.integers(0, 5000)).filter(
            lambda p: not (p[0] and p[1] and p[0] >= p[1])
        )
        warn, limit = _different(draw, pairs, old)
        return {"job_memory_warn_mb": warn, "job_memory_limit_mb": limit}
    if field in ("drain_timeout", "shutdown_process_timeout", "initialize_process_timeout"):
        seconds = _different(draw, st.integers(0, 10**6), getattr(agent, field))
        return {field: draw(fs.duration_spellings(seconds))}
    if field == "max_retry":
        return {field: _different(draw, st.integers(0, 1000), agent.max_retry)}
    if field == "load":
        expr = draw(
            fs.expressions.filter(lambda e: agent.max_jobs or "jobs" not in fs.signals_of(e))
        )
        text = draw(fs.load_spellings(expr))
        return {field: text}
    assert field == "request"
    key = draw(st.sampled_from(["room", "identity", "name", "metadata", "attributes"]))
    strategy: st.SearchStrategy[Any] = {
        "room": fs.texts,
        "identity": fs.templates(min_size=1),
        "name": fs.templates(min_size=0),
        "metadata": fs.texts,
        "attributes": st.dictionaries(fs.texts, fs.texts, max_size=3),
    }[key]
    return {"request": {key: _different(draw, strategy, getattr(agent.request, key))}}


def _set_on_agent(doc: dict[str, Any], name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(doc)
    agent = changed["agents"][name]
    for key, value in options.items():
        if key in fs.MERGED_OPTIONS:
            agent[key] = {**agent.get(key, {}), **value}
        else:
            agent[key] = value
    return changed


@PROPERTY
@given(data=st.data(), picked=_fleet_and_agent(), field=st.sampled_from(IN_PLACE_FIELDS))
def test_one_in_place_field_updates_that_agent_in_place(
    tmp_path: Path, data: st.DataObject, picked: tuple[dict[str, Any], str], field: str
) -> None:
    doc, name = picked
    old = _fleet(tmp_path, doc)
    options = _draw_change(data, _in_place_change, field, old.agents[name])
    new = _fleet(tmp_path, _set_on_agent(doc, name, options))
    plan = diff(old, new)
    if field == "load" and new.agents[name].load == old.agents[name].load:
        _assert_no_changes(plan)  # the same expression spelt differently: checked elsewhere
        return
    changes = _assert_only(plan, name, Action.UPDATE_IN_PLACE).changes
    prefix = "job_memory_" if field == "job_memory" else field
    assert changes, _describe(plan)
    assert all(c.path.startswith(prefix) for c in changes), _describe(plan)


def _replace_change(draw: st.DrawFn, field: str, agent: Agent) -> dict[str, Any]:
    """Options that change ``field`` of ``agent`` (its effective value) and nothing else."""
    if field in ("entrypoint", "prewarm", "request_fnc"):
        return {field: _different(draw, fs.import_refs, getattr(agent, field))}
    if field == "working_dir":
        return {field: _different(draw, fs.texts, agent.working_dir)}
    if field == "worker_type":
        return {field: "publisher" if agent.worker_type == "room" else "room"}
    if field == "env":
        key = draw(fs.env_names)
        old = agent.env.get(key)
        value = _different(draw, fs.texts, old if isinstance(old, str) else None)
        return {"env": {key: value}}
    if field == "permissions":
        flag = draw(
            st.sampled_from(
                [
                    "can_publish",
                    "can_subscribe",
                    "can_publish_data",
                    "can_update_metadata",
                    "hidden",
                ]
            )
        )
        return {"permissions": {flag: not getattr(agent.permissions, flag)}}
    assert field == "livekit.url"
    return {"livekit": {"url": _different(draw, fs.urls(), agent.livekit.url)}}


_MakeChange = Callable[[st.DrawFn, str, Agent], dict[str, Any]]


def _draw_change(
    data: st.DataObject, make: _MakeChange, field: str, agent: Agent
) -> dict[str, Any]:
    @st.composite
    def change(draw: st.DrawFn) -> dict[str, Any]:
        return make(draw, field, agent)

    drawn: dict[str, Any] = data.draw(change(), label=f"change of {field}")
    return drawn


@PROPERTY
@given(data=st.data(), picked=_fleet_and_agent(), field=st.sampled_from(REPLACE_FIELDS))
def test_one_replace_field_replaces_that_agent(
    tmp_path: Path, data: st.DataObject, picked: tuple[dict[str, Any], str], field: str
) -> None:
    doc, name = picked
    old = _fleet(tmp_path, doc)
    options = _draw_change(data, _replace_change, field, old.agents[name])
    new = _fleet(tmp_path, _set_on_agent(doc, name, options))
    plan = diff(old, new)
    changes = _assert_only(plan, name, Action.REPLACE).changes
    top = field.split(".")[0]
    assert changes, _describe(plan)
    assert all(c.path.split(".")[0] == top for c in changes), _describe(plan)


@PROPERTY
@given(picked=_fleet_and_agent())
def test_removing_an_agent_drains_it(tmp_path: Path, picked: tuple[dict[str, Any], str]) -> None:
    doc, name = picked
    smaller = copy.deepcopy(doc)
    del smaller["agents"][name]
    old, new = _fleet(tmp_path, doc), _fleet(tmp_path, smaller)
    removed = _assert_only(diff(old, new), name, Action.DRAIN_AND_REMOVE)
    assert removed.changes == ()


@PROPERTY
@given(doc=fs.fleet_documents(max_agents=3), data=st.data())
def test_adding_an_agent_creates_it(
    tmp_path: Path, doc: dict[str, Any], data: st.DataObject
) -> None:
    present = set(doc.get("agents", {}))
    name = data.draw(fs.agent_names.filter(lambda n: n not in present), label="new agent")
    bigger = copy.deepcopy(doc)
    bigger.setdefault("agents", {})[name] = data.draw(fs.agents, label="its options")
    fs.repair(bigger)
    assert bigger["agents"].keys() - {name} == present
    old, new = _fleet(tmp_path, doc), _fleet(tmp_path, bigger)
    created = _assert_only(diff(old, new), name, Action.CREATE)
    assert created.changes == ()


@PROPERTY
@given(doc=fs.fleet_documents())
def test_from_nothing_every_agent_is_created(tmp_path: Path, doc: dict[str, Any]) -> None:
    fleet = _fleet(tmp_path, doc)
    plan = diff(None, fleet)
    assert [p.name for p in plan.agents] == sorted(fleet.agents)
    assert all(p.action is Action.CREATE for p in plan.agents)
    assert plan.fleet == ()
    assert plan.has_changes == bool(fleet.agents)


@pytest.mark.parametrize("name", fs.SPECIAL_AGENT_NAMES)
def test_special_agent_names_survive_yaml(tmp_path: Path, name: str) -> None:
    fleet = _fleet(tmp_path, _one_agent_fleet({}) | {"agents": {name: {"entrypoint": "m:f"}}})
    assert list(fleet.agents) == [name]
