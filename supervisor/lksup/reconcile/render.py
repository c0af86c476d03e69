"""Plans for people and for machines: a text rendering and a JSON document. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lksup.fleet.schema import API_VERSION
from lksup.reconcile.diff import REPLACE_FIELDS, Action, AgentPlan, FieldChange, Plan

_SYMBOL = {
    Action.CREATE: "+",
    Action.UPDATE_IN_PLACE: "~",
    Action.REPLACE: "~",
    Action.DRAIN_AND_REMOVE: "-",
    Action.UNCHANGED: "=",
}
_COLOUR = {
    Action.CREATE: "\x1b[32m",
    Action.UPDATE_IN_PLACE: "\x1b[33m",
    Action.REPLACE: "\x1b[33m",
    Action.DRAIN_AND_REMOVE: "\x1b[31m",
    Action.UNCHANGED: "\x1b[2m",
}
_RESET = "\x1b[0m"


def format_value(value: Any) -> str:
    """A compact, YAML-flavoured rendering of a display value."""
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return value if value and value.strip() == value else repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


_COUNTED = {
    Action.CREATE: "to create",
    Action.UPDATE_IN_PLACE: "to update in place",
    Action.REPLACE: "to replace",
    Action.DRAIN_AND_REMOVE: "to drain and remove",
    Action.UNCHANGED: "unchanged",
}


def counts(summary: Mapping[str, int]) -> str:
    """``1 to create, 2 to update in place, ...`` from a plan's ``summary`` (action -> count).

    The words of ``lksup diff``, ``apply`` and the re-apply log lines alike.
    """
    return ", ".join(f"{summary.get(a.value, 0)} {words}" for a, words in _COUNTED.items())


def summary(plan: Plan) -> str:
    """``Plan: 1 to create, 2 to update in place, ...``."""
    text = "Plan: " + counts({a.value: plan.count(a) for a in Action})
    if plan.fleet:
        text += f"; {len(plan.fleet)} fleet setting(s) changed"
    return text + "."


def _change_line(change: FieldChange, *, mark_replace: bool = False) -> str:
    line = f"      {change.path}: {format_value(change.old)} -> {format_value(change.new)}"
    if mark_replace and change.path.split(".")[0] in REPLACE_FIELDS:
        line += "  (needs replace)"
    return line


def to_text(
    plan: Plan,
    *,
    colour: bool = False,
    show_unchanged: bool = True,
    values: Iterable[FieldChange] = (),
) -> str:
    """The plan as lines a person reads, one block per agent.

    ``values`` are the template values that changed (``value_changes``), listed last.
    """
    lines = [summary(plan)]
    if plan.fleet:
        lines.append("")
        lines.append("  fleet settings (applied in place)")
        lines.extend(_change_line(c) for c in plan.fleet)
    if plan.agents:
        lines.append("")
    for agent in plan.agents:
        if agent.action is Action.UNCHANGED and not show_unchanged:
            continue
        head = f"{_SYMBOL[agent.action]} {agent.action.value:<17} {agent.name}"
        if colour:
            head = f"{_COLOUR[agent.action]}{head}{_RESET}"
        lines.append(f"  {head}")
        replace = agent.action is Action.REPLACE
        lines.extend(_change_line(c, mark_replace=replace) for c in agent.changes)
    lines.extend(
        f"  template value {c.path}: {format_value(c.old)} -> {format_value(c.new)}" for c in values
    )
    return "\n".join(lines)


def to_json(plan: Plan) -> dict[str, Any]:
    """The plan as a JSON document (``kind: Plan``)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "Plan",
        "changed": plan.has_changes,
        "summary": {a.value: plan.count(a) for a in Action},
        "fleet": [change_to_json(c) for c in plan.fleet],
        "agents": [
            {
                "name": a.name,
                "action": a.action.value,
                "changes": [change_to_json(c) for c in a.changes],
            }
            for a in plan.agents
        ],
    }


def from_json(document: Mapping[str, Any]) -> Plan:
    """The plan of a ``to_json`` document (``lksup apply`` prints the daemon's plan with it)."""
    return Plan(
        agents=tuple(
            AgentPlan(a["name"], Action(a["action"]), changes_from_json(a.get("changes")))
            for a in document.get("agents") or ()
        ),
        fleet=changes_from_json(document.get("fleet")),
    )


def change_to_json(change: FieldChange) -> dict[str, Any]:
    """One change as JSON: ``{"path", "old", "new"}`` (a plan's and a value change's form)."""
    return {"path": change.path, "old": change.old, "new": change.new}


def changes_from_json(items: Iterable[Mapping[str, Any]] | None) -> tuple[FieldChange, ...]:
    """The changes of a list of ``change_to_json`` documents (None: none)."""
    return tuple(FieldChange(c["path"], c.get("old"), c.get("new")) for c in items or ())
