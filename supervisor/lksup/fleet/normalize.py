"""From a fleet as written to the normalized fleet lksup runs, plus cross-field findings.

Normalization merges ``defaults`` under every agent (the mappings ``request``,
``permissions``, ``env`` and ``livekit`` key by key, everything else replaced), merges the
fleet-wide ``livekit`` block under each agent's override, fills an agent's unset
``drain_timeout`` from the supervisor's, and canonicalizes (load expressions are already
canonical after validation). The result is a ``Fleet`` whose ``defaults`` and top-level
``livekit`` are empty: rendering it and normalizing again gives the same fleet (idempotence).

Findings carry the *path* where the offending value was written (in the agent, in
``defaults``, or in the fleet-wide ``livekit``), so errors point at the line the user must edit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lksup.errors import Severity
from lksup.fleet import loadexpr
from lksup.fleet.schema import (
    Agent,
    EnvRef,
    FileRef,
    Fleet,
    LiteralSecret,
    RedactedRef,
)
from lksup.fleet.yamlsrc import Path

REVEAL = {"reveal_secrets": True}
_SECRET_NAME = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|API_KEY|PRIVATE_KEY|CREDENTIAL)", re.I)


@dataclass(frozen=True)
class Finding:
    """A problem found across fields; ``key`` asks for the key's position, not the value's."""

    path: Path
    message: str
    severity: Severity = Severity.ERROR
    key: bool = False


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge mappings key by key; for anything else the override wins."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


#: Option mappings merged key by key (one level: a key's value, e.g. a secret reference or
#: the request policy's attributes, is replaced whole, never merged into).
MERGED_OPTIONS = frozenset({"request", "permissions", "env", "livekit"})


def merge_options(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Agent options over defaults: ``MERGED_OPTIONS`` key by key, anything else replaced."""
    merged = dict(base)
    for key, value in override.items():
        if key in MERGED_OPTIONS and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def normalize(fleet: Fleet) -> tuple[Fleet, list[Finding]]:
    """Normalize a validated fleet and report cross-field problems (errors and warnings)."""
    findings: list[Finding] = []
    defaults = fleet.defaults.model_dump(exclude_unset=True, context=REVEAL)
    shared_livekit = fleet.livekit.model_dump(exclude_unset=True, context=REVEAL)
    agents: dict[str, Agent] = {}
    for name, agent in fleet.agents.items():
        own = agent.model_dump(exclude_unset=True, context=REVEAL)
        merged = merge_options(defaults, own)
        merged["livekit"] = {**shared_livekit, **merged.get("livekit", {})}
        if merged.get("drain_timeout") is None:  # unset, or written as null
            merged["drain_timeout"] = fleet.supervisor.drain_timeout
        effective = Agent.model_validate(merged)
        agents[name] = effective
        findings.extend(_check_agent(fleet, name, effective))
    if not fleet.agents:
        findings.append(Finding(("agents",), "the fleet declares no agents", Severity.WARNING))
    normalized = Fleet.model_validate(
        {
            "apiVersion": fleet.api_version,
            "kind": fleet.kind,
            "metadata": fleet.metadata.model_dump(),
            "supervisor": fleet.supervisor.model_dump(),
            "agents": {n: a.model_dump(context=REVEAL) for n, a in agents.items()},
        }
    )
    return normalized, findings


def origin(fleet: Fleet, agent: str, *fields: str) -> Path:
    """Where the effective value of ``agents.<agent>.<fields...>`` was written."""
    written = fleet.agents[agent]
    if _is_set(written, fields):
        return ("agents", agent, *fields)
    if _is_set(fleet.defaults, fields):
        return ("defaults", *fields)
    if fields and fields[0] == "livekit" and _is_set(fleet.livekit, fields[1:]):
        return fields
    return ("agents", agent)


def _is_set(model: object, fields: tuple[str, ...]) -> bool:
    current = model
    for field in fields:
        fields_set = getattr(current, "model_fields_set", None)
        if fields_set is None:
            return isinstance(current, Mapping) and field in current
        if field not in fields_set:
            return False
        current = getattr(current, field)
    return True


def _check_agent(fleet: Fleet, name: str, agent: Agent) -> list[Finding]:
    found: list[Finding] = []
    used = loadexpr.signals_used(loadexpr.parse(agent.load))
    if "jobs" in used and agent.max_jobs is None:
        found.append(
            Finding(
                origin(fleet, name, "load"),
                f"agent {name!r}: load uses `jobs` but max_jobs is not set "
                "(jobs = running jobs / max_jobs)",
            )
        )
    if agent.session_end_fnc and agent.runtime != "livekit-agents":
        found.append(
            Finding(
                origin(fleet, name, "session_end_fnc"),
                f"agent {name!r}: session_end_fnc needs runtime: livekit-agents (it receives "
                "the SDK's JobContext once the AgentSession closed)",
            )
        )
    limit, warn = agent.job_memory_limit_mb, agent.job_memory_warn_mb
    if limit and warn and warn >= limit:
        found.append(
            Finding(
                origin(fleet, name, "job_memory_warn_mb"),
                f"agent {name!r}: job_memory_warn_mb ({warn}) must be below "
                f"job_memory_limit_mb ({limit})",
            )
        )
    budget = fleet.supervisor.drain_timeout
    if agent.drain_timeout and budget and agent.drain_timeout > budget:
        found.append(
            Finding(
                origin(fleet, name, "drain_timeout"),
                f"agent {name!r}: drain_timeout ({agent.drain_timeout:g}s) is longer than "
                f"supervisor.drain_timeout ({budget:g}s); a fleet-wide drain (SIGTERM) stops "
                "its jobs at the shorter deadline",
                Severity.WARNING,
            )
        )
    livekit = agent.livekit
    if (livekit.api_key is None) != (livekit.api_secret is None):
        missing = "api_secret" if livekit.api_secret is None else "api_key"
        found.append(
            Finding(
                origin(fleet, name, "livekit"),
                f"agent {name!r}: livekit.{missing} is missing (api_key and api_secret go "
                "together)",
            )
        )
    for field in ("api_key", "api_secret"):
        value = getattr(livekit, field)
        path = origin(fleet, name, "livekit", field)
        if isinstance(value, LiteralSecret) and field == "api_secret":
            found.append(
                Finding(
                    path,
                    "livekit.api_secret is a literal value; use {env: NAME} or {file: PATH} so "
                    "the secret stays out of the fleet file",
                    Severity.WARNING,
                )
            )
        if isinstance(value, RedactedRef):
            found.append(Finding(path, _REDACTED, Severity.WARNING))
    for key, value in agent.env.items():
        path = origin(fleet, name, "env", key)
        if isinstance(value, str) and value and _SECRET_NAME.search(key):
            found.append(
                Finding(
                    path,
                    f"env.{key} looks like a secret but is a literal value; use "
                    "{env: NAME} or {file: PATH}",
                    Severity.WARNING,
                )
            )
        if isinstance(value, RedactedRef):
            found.append(Finding(path, _REDACTED, Severity.WARNING))
    return found


_REDACTED = (
    "this secret was redacted by `lksup render` and cannot be resolved; "
    "use {env: NAME} or {file: PATH}"
)


def secret_refs(fleet: Fleet) -> list[tuple[str, tuple[str, ...], EnvRef | FileRef | RedactedRef]]:
    """Every secret reference of a normalized fleet: (agent, field path, reference)."""
    refs: list[tuple[str, tuple[str, ...], EnvRef | FileRef | RedactedRef]] = []
    for name, agent in fleet.agents.items():
        for field in ("api_key", "api_secret"):
            value = getattr(agent.livekit, field)
            if isinstance(value, EnvRef | FileRef | RedactedRef):
                refs.append((name, ("livekit", field), value))
        for key, env_value in agent.env.items():
            if isinstance(env_value, EnvRef | FileRef | RedactedRef):
                refs.append((name, ("env", key), env_value))
    return refs
