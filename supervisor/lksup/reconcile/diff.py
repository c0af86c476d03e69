"""The plan: what applying a fleet does to each agent. A pure function of two normalized fleets.

Per agent the action is one of:

- ``create``: a new agent (worker connection and warm pool);
- ``update-in-place``: only settings the running agent can take without new processes or a
  new registration (thresholds, load policy, limits, pool size, timeouts, declarative request
  policy, retry budget);
- ``replace``: a change that needs new job processes or a new registration (entrypoint,
  prewarm, request function, environment, working directory, permissions, worker type,
  connection): start the new worker, wait until it is registered and warm, drain the old one;
- ``drain-and-remove``: the agent is gone from the file;
- ``unchanged``.

Both sides are compared in normalized form, so key order, comments, formatting and defaults
spelled out explicitly never show as changes. Secrets are compared through their displayed
form: a reference that changed shows as ``{env: A} -> {env: B}``, a literal as a digest.
``diff(x, x)`` is always empty, and the daemon reuses this function for ``apply``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lksup.fleet.schema import Agent, Fleet

#: Top-level agent fields whose change needs new processes or a new registration.
REPLACE_FIELDS = frozenset(
    {
        "entrypoint",
        "prewarm",
        "prewarm_in",
        "request_fnc",
        "session_end_fnc",
        "env",
        "working_dir",
        "permissions",
        "worker_type",
        "livekit",
        "runtime",
        "python",
        "process_start",
        "job_executor",
        "max_jobs_per_process",
        "preload",
    }
)
#: Fields whose children are compared as whole values (names of variables, connection fields).
_LEAF_PARENTS = frozenset({("env",), ("livekit",)})


class Action(enum.Enum):
    """What applying the plan does to one agent."""

    CREATE = "create"
    UPDATE_IN_PLACE = "update-in-place"
    REPLACE = "replace"
    DRAIN_AND_REMOVE = "drain-and-remove"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class FieldChange:
    """One field that differs; values are display values (secrets never revealed)."""

    path: str
    old: Any
    new: Any


@dataclass(frozen=True)
class AgentPlan:
    """The action for one agent and the field changes behind it."""

    name: str
    action: Action
    changes: tuple[FieldChange, ...] = ()


@dataclass(frozen=True)
class Plan:
    """Per-agent actions (sorted by name) and fleet-level changes (metadata, supervisor)."""

    agents: tuple[AgentPlan, ...]
    fleet: tuple[FieldChange, ...] = ()

    @property
    def has_changes(self) -> bool:
        """Whether applying the plan would change anything."""
        return bool(self.fleet) or any(a.action is not Action.UNCHANGED for a in self.agents)

    def count(self, action: Action) -> int:
        """How many agents get ``action``."""
        return sum(1 for a in self.agents if a.action is action)


def diff(old: Fleet | None, new: Fleet) -> Plan:
    """The plan that takes normalized fleet ``old`` (None: nothing running) to ``new``."""
    old_agents: Mapping[str, Agent] = old.agents if old is not None else {}
    plans: list[AgentPlan] = []
    for name in sorted(set(old_agents) | set(new.agents)):
        if name not in old_agents:
            plans.append(AgentPlan(name, Action.CREATE))
        elif name not in new.agents:
            plans.append(AgentPlan(name, Action.DRAIN_AND_REMOVE))
        else:
            changes = _changes(_display(old_agents[name]), _display(new.agents[name]))
            if not changes:
                plans.append(AgentPlan(name, Action.UNCHANGED))
                continue
            needs_replace = any(c.path.split(".")[0] in REPLACE_FIELDS for c in changes)
            action = Action.REPLACE if needs_replace else Action.UPDATE_IN_PLACE
            plans.append(AgentPlan(name, action, changes))
    fleet_changes: tuple[FieldChange, ...] = ()
    if old is not None:
        fleet_changes = _changes(_fleet_display(old), _fleet_display(new))
    return Plan(tuple(plans), fleet_changes)


def value_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[FieldChange, ...]:
    """The template values (``--set``, ``--values``) that differ, by dotted name."""
    return _changes(dict(old), dict(new))


def _display(agent: Agent) -> dict[str, Any]:
    return agent.model_dump(mode="json")


def _fleet_display(fleet: Fleet) -> dict[str, Any]:
    return {
        "metadata": fleet.metadata.model_dump(mode="json"),
        "supervisor": fleet.supervisor.model_dump(mode="json"),
    }


def _flatten(value: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(value, dict) and prefix not in _LEAF_PARENTS:
        flat: dict[tuple[str, ...], Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, (*prefix, str(key))))
        return flat
    if isinstance(value, dict):  # a leaf parent: each child is one value
        return {(*prefix, str(k)): v for k, v in value.items()}
    return {prefix: value}


def _changes(old: dict[str, Any], new: dict[str, Any]) -> tuple[FieldChange, ...]:
    flat_old, flat_new = _flatten(old), _flatten(new)
    changes = []
    for path in sorted(set(flat_old) | set(flat_new)):
        before, after = flat_old.get(path), flat_new.get(path)
        if before != after:
            changes.append(FieldChange(".".join(path), before, after))
    return tuple(changes)
