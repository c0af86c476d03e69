"""``lksup validate`` as a library function: every check of a fleet file, as diagnostics.

Levels, each including the ones before:

1. always: template, YAML, schema, cross-field rules (``loading``);
2. ``strict``: warnings become errors, and every secret reference must resolve;
3. ``check_imports``: secret references must resolve, and every agent's entrypoint, prewarm and
   request function is imported in a subprocess with the agent's environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lksup.errors import Diagnostic, FleetError, SecretError, Severity
from lksup.fleet import imports
from lksup.fleet.budget import stop_budget
from lksup.fleet.loading import LoadedFleet, load_fleet
from lksup.fleet.normalize import origin, secret_refs
from lksup.fleet.secrets import Redactor, resolve


@dataclass
class ValidationResult:
    """The outcome for one file: the loaded fleet when it loaded, and every diagnostic."""

    path: str
    loaded: LoadedFleet | None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    sdk_versions: dict[str, str] = field(default_factory=dict)
    """livekit-agents version of each ``runtime: livekit-agents`` agent (``check_imports``)."""

    @property
    def valid(self) -> bool:
        """No errors (warnings allowed)."""
        return not any(d.severity is Severity.ERROR for d in self.diagnostics)


def validate_file(
    path: str,
    *,
    values: Mapping[str, Any] | None = None,
    strict: bool = False,
    check_imports: bool = False,
    environ: Mapping[str, str] | None = None,
    redactor: Redactor | None = None,
    stop_timeout: float | None = None,
) -> ValidationResult:
    """Run every check the options ask for on one fleet file.

    ``stop_timeout``: the seconds a platform allows from SIGTERM to exit (Kubernetes'
    ``terminationGracePeriodSeconds``, systemd's ``TimeoutStopSec``); the fleet's stop budget
    (``lksup.fleet.budget``) must fit in it.
    """
    env = os.environ if environ is None else environ
    try:
        loaded = load_fleet(path, values=values, environ=env, strict=strict)
    except FleetError as exc:
        return ValidationResult(path, None, list(exc.diagnostics))
    result = ValidationResult(path, loaded, list(loaded.warnings))
    scrub = redactor if redactor is not None else Redactor()
    if strict or check_imports:
        result.diagnostics.extend(_check_secrets(loaded, env, scrub))
    if stop_timeout is not None:
        result.diagnostics.extend(_check_stop_timeout(loaded, stop_timeout))
    if check_imports and result.valid:
        report = imports.check_agents(
            loaded.fleet.agents, base_dir=loaded.base_dir, environ=env, redactor=scrub
        )
        result.sdk_versions = report.sdk_versions
        for problem in report.problems:
            where = origin(loaded.written, problem.agent, problem.field)
            result.diagnostics.append(_at(loaded, where, problem.message))
    result.diagnostics.sort(key=lambda d: (d.line, d.col))
    return result


def _check_stop_timeout(loaded: LoadedFleet, stop_timeout: float) -> list[Diagnostic]:
    budget = stop_budget(loaded.fleet)
    total = budget.total
    if total is not None and total <= stop_timeout:
        return []
    if total is None:
        problem = "supervisor.drain_timeout is 0 (a drain waits for every job, however long)"
    else:
        problem = f"stopping this fleet can take {budget.explain()}"
    message = (
        f"{problem}, longer than the stop timeout of {stop_timeout:g} s: the platform would "
        f"SIGKILL the supervisor and its running jobs mid-drain; lower drain_timeout or raise "
        f"the stop timeout (terminationGracePeriodSeconds, TimeoutStopSec) to at least "
        f"{(total or 0):g} s"
    )
    if total is None:
        message = (
            f"{problem}, so no stop timeout ({stop_timeout:g} s given) covers a drain: set "
            f"supervisor.drain_timeout to at most "
            f"{max(0.0, stop_timeout - (budget.shutdown + budget.term_grace + budget.margin)):g} s"
        )
    return [_at(loaded, ("supervisor", "drain_timeout"), message)]


def _check_secrets(
    loaded: LoadedFleet, environ: Mapping[str, str], redactor: Redactor
) -> list[Diagnostic]:
    found: list[Diagnostic] = []
    for agent, fields, ref in secret_refs(loaded.fleet):
        try:
            redactor.add(resolve(ref, environ=environ, base_dir=loaded.base_dir))
        except SecretError as exc:
            where = origin(loaded.written, agent, *fields)
            message = f"agent {agent!r}: {'.'.join(fields)}: {exc}"
            found.append(_at(loaded, where, message))
    return sorted(set(found), key=lambda d: (d.line, d.col))


def _at(loaded: LoadedFleet, path: tuple[str | int, ...], message: str) -> Diagnostic:
    spot = loaded.locate(path)
    return Diagnostic(spot.file, spot.line, spot.col, message)
