"""The offline GitOps verbs: ``validate``, ``render``, ``schema`` and ``diff``."""

from __future__ import annotations

import math
from typing import Any

import click
import yaml

from lksup.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    DurationType,
    _colour,
    _control,
    _emit,
    _output_option,
    _print_diagnostics,
    _socket_option,
    _template_options,
    _values,
    main,
)
from lksup.errors import FleetError
from lksup.fleet.budget import stop_budget as fleet_stop_budget
from lksup.fleet.checks import ValidationResult, validate_file
from lksup.fleet.loading import LoadedFleet, load_fleet
from lksup.fleet.schema import API_VERSION, Fleet, json_schema
from lksup.reconcile import render as plan_render
from lksup.reconcile.diff import FieldChange, value_changes
from lksup.reconcile.diff import diff as plan_diff


@main.command()
@click.argument("fleets", nargs=-1, required=True, metavar="FLEET...")
@_template_options
@click.option("--strict", is_flag=True, help="Treat warnings as errors; secrets must resolve.")
@click.option(
    "--check-imports",
    is_flag=True,
    help="Import every entrypoint/prewarm/request_fnc in a subprocess with the agent's "
    "environment (the CLI never imports them itself); secrets must resolve.",
)
@click.option(
    "--stop-timeout",
    type=DurationType(),
    metavar="DURATION",
    help="The platform's stop timeout (terminationGracePeriodSeconds, TimeoutStopSec): "
    "fail when the fleet's stop budget (see `lksup stop-budget`) is longer.",
)
@_output_option(["text", "json"], "text")
def validate(
    fleets: tuple[str, ...],
    values_files: tuple[str, ...],
    assignments: tuple[str, ...],
    strict: bool,
    check_imports: bool,
    stop_timeout: float | None,
    output: str,
) -> None:
    """Check fleet files offline: template, YAML, schema, cross-field rules.

    Every problem is reported as FILE:LINE:COL: MESSAGE on stderr. Exit status: 0 when every
    file is valid, 1 when any is invalid, 2 on a usage error.

    \b
    Examples:
      lksup validate fleets/*.yaml
      lksup validate fleets/prod.yaml --values values/eu.yaml --set replicas=2 --strict
      LIVEKIT_API_SECRET=... lksup validate fleets/prod.yaml --check-imports
      lksup validate fleets/prod.yaml --stop-timeout 637   # the pod's grace period
    """
    values = _values(values_files, assignments)
    results = [
        validate_file(
            path,
            values=values,
            strict=strict,
            check_imports=check_imports,
            stop_timeout=stop_timeout,
        )
        for path in fleets
    ]
    if output == "json":
        _emit(
            {
                "apiVersion": API_VERSION,
                "kind": "ValidationReport",
                "valid": all(r.valid for r in results),
                "files": [_result_json(r) for r in results],
            }
        )
        for result in results:
            _print_diagnostics(result.diagnostics)
    else:
        for result in results:
            _print_diagnostics(result.diagnostics)
            if result.valid and result.loaded is not None:
                agents = list(result.loaded.fleet.agents)
                names = f": {', '.join(agents)}" if agents else ""
                click.echo(f"{result.path}: valid ({len(agents)} agents{names})")
            for agent, version in sorted(result.sdk_versions.items()):
                click.echo(f"  {agent}: livekit-agents {version}")
    raise SystemExit(EXIT_OK if all(r.valid for r in results) else EXIT_FAILED)


def _result_json(result: ValidationResult) -> dict[str, Any]:
    budget = fleet_stop_budget(result.loaded.fleet) if result.loaded else None
    return {
        "file": result.path,
        "valid": result.valid,
        "agents": list(result.loaded.fleet.agents) if result.loaded else [],
        "stopBudgetSeconds": budget.total if budget else None,
        "sdkVersions": result.sdk_versions,
        "diagnostics": [
            {
                "file": d.file,
                "line": d.line,
                "col": d.col,
                "severity": d.severity.value,
                "message": d.message,
            }
            for d in result.diagnostics
        ],
    }


def _load_or_exit(path: str, values: dict[str, Any], *, code: int) -> LoadedFleet:
    try:
        loaded = load_fleet(path, values=values)
    except FleetError as exc:
        _print_diagnostics(exc.diagnostics)
        raise SystemExit(code) from None
    _print_diagnostics(loaded.warnings)
    return loaded


def rendered_document(fleet: Fleet) -> dict[str, Any]:
    """The normalized fleet as a plain document (secrets as references, never values)."""
    data = fleet.model_dump(
        mode="json", by_alias=True, exclude={"livekit", "defaults"}, exclude_none=True
    )
    for name, agent in data.get("agents", {}).items():  # entrypoint first: it names the agent
        data["agents"][name] = {"entrypoint": agent.pop("entrypoint"), **agent}
    return _tidy(data)  # type: ignore[no-any-return]


def _tidy(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _tidy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tidy(v) for v in value]
    return value


@main.command()
@click.argument("fleet", required=False, metavar="FLEET")
@_template_options
@click.option(
    "--applied",
    is_flag=True,
    help="Print the fleet the running supervisor applied instead of FLEET (same form, so the "
    "two can be compared with diff).",
)
@_socket_option
@_output_option(["yaml", "json"], "yaml")
def render(
    fleet: str | None,
    values_files: tuple[str, ...],
    assignments: tuple[str, ...],
    applied: bool,
    socket_path: str | None,
    output: str,
) -> None:
    """Print the normalized fleet: template rendered, defaults merged, durations in seconds.

    Secrets are printed as references ({env: NAME}, {file: PATH}); a literal secret is printed
    as a digest, never its value. Rendering the output again gives the same output. With
    --applied, the fleet the running supervisor has (its revision and source file in a YAML
    comment; exit 4 without a daemon or an applied fleet).

    \b
    Examples:
      lksup render fleets/prod.yaml
      lksup render fleets/prod.yaml --values values/eu.yaml -o json | jq .agents
      lksup render --applied > running.yaml
    """
    header = ""
    if applied:
        if fleet is not None or values_files or assignments:
            raise click.UsageError("--applied takes no FLEET, --values or --set")

        async def call(client: Any) -> Any:
            return await client.applied()

        result = _control(socket_path, call)
        if result is None:
            click.echo("lksup: error: the running supervisor has applied no fleet", err=True)
            raise SystemExit(4)
        written = Fleet.model_validate(result["fleet"])
        header = f"# applied revision {result.get('revision')} from {result.get('source')}\n"
    elif fleet is None:
        raise click.UsageError("give a FLEET file, or --applied")
    else:
        written = _load_or_exit(fleet, _values(values_files, assignments), code=EXIT_FAILED).fleet
    document = rendered_document(written)
    if output == "json":
        _emit(document)
    else:
        text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
        click.echo(header + text, nl=False)


@main.command("stop-budget")
@click.argument("fleet", metavar="FLEET")
@_template_options
@_output_option(["text", "seconds", "json"], "text")
def stop_budget(
    fleet: str, values_files: tuple[str, ...], assignments: tuple[str, ...], output: str
) -> None:
    """Print the worst-case time from SIGTERM to exit for FLEET, and what it is made of.

    On SIGTERM the fleet drains against supervisor.drain_timeout; the jobs still running then
    get the stop sequence (shutdown_process_timeout of the slowest agent, then SIGTERM and a
    grace); a margin covers the rest. Give at least this much to whatever stops lksup:
    terminationGracePeriodSeconds, TimeoutStopSec, `docker stop --time`. A drain_timeout of 0
    waits for every job and has no budget: exit 1.

    \b
    Examples:
      lksup stop-budget fleets/prod.yaml
      lksup stop-budget fleets/prod.yaml -o seconds     # 1837: for a manifest or a unit
      lksup validate fleets/prod.yaml --stop-timeout 30m   # fail when it does not fit
    """
    loaded = _load_or_exit(fleet, _values(values_files, assignments), code=EXIT_FAILED)
    budget = fleet_stop_budget(loaded.fleet)
    total = budget.total
    if output == "json":
        _emit(
            {
                "apiVersion": API_VERSION,
                "kind": "StopBudget",
                "file": fleet,
                "seconds": total,
                "drainTimeoutSeconds": budget.drain,
                "shutdownProcessTimeoutSeconds": budget.shutdown,
                "slowestAgent": budget.shutdown_agent,
                "termGraceSeconds": budget.term_grace,
                "marginSeconds": budget.margin,
            }
        )
    elif output == "seconds":
        if total is not None:
            click.echo(f"{math.ceil(total)}")
    else:
        click.echo(f"{fleet}: stop budget {budget.explain()}")
    if total is None:
        if output != "text":
            click.echo(f"{fleet}: stop budget {budget.explain()}", err=True)
        raise SystemExit(EXIT_FAILED)


@main.command()
@_output_option(["json"], "json")
def schema(output: str) -> None:
    """Print the JSON Schema of fleet files (for editors and CI).

    \b
    Use it from a fleet file's first line:
      # yaml-language-server: $schema=../schemas/fleet.schema.json
    Example:
      lksup schema > schemas/fleet.schema.json
    """
    del output  # JSON is the only format of a JSON Schema
    _emit(json_schema())


@main.command()
@click.argument("new", metavar="NEW")
@click.option(
    "--against",
    "old",
    metavar="OLD",
    help="The fleet file to compare with (e.g. the version on the main branch); without it, "
    "the fleet applied to the running supervisor.",
)
@_template_options
@_socket_option
@_output_option(["text", "json"], "text")
def diff(
    new: str,
    old: str | None,
    values_files: tuple[str, ...],
    assignments: tuple[str, ...],
    socket_path: str | None,
    output: str,
) -> None:
    """Show the plan that takes fleet OLD (or the running supervisor's) to NEW, agent by agent.

    Actions: create, update-in-place (no process restarted), replace (new worker registers
    and warms up, then the old one drains), drain-and-remove, unchanged; each with its field
    changes. Both sides are normalized first, so reordering, comments and spelled-out defaults
    are not changes. Template values apply to both files.

    Exit status: 0 when there is nothing to do, 1 when there are changes, 2 on an error
    (4: no supervisor to compare with).

    \b
    Examples:
      lksup diff fleets/prod.yaml --against <(git show origin/main:fleets/prod.yaml)
      lksup diff fleets/prod.yaml          # against what the running supervisor applied
    """
    values = _values(values_files, assignments)
    after = _load_or_exit(new, values, code=EXIT_USAGE)
    values_changed: tuple[FieldChange, ...] = ()
    applied: dict[str, Any] | None = None
    if old is not None:
        before: Fleet | None = _load_or_exit(old, values, code=EXIT_USAGE).fleet
    else:

        async def call(client: Any) -> Any:
            return await client.applied()

        applied = _control(socket_path, call)
        before = Fleet.model_validate(applied["fleet"]) if applied else None
        if applied:  # against the running supervisor: the values it rendered the file with
            values_changed = value_changes(applied.get("values") or {}, values)
    plan = plan_diff(before, after.fleet)
    if output == "json":
        document = plan_render.to_json(plan)
        if old is None and applied:
            document["values"] = [plan_render.change_to_json(c) for c in values_changed]
        _emit(document)
    else:
        click.echo(plan_render.to_text(plan, colour=_colour(), values=values_changed))
    raise SystemExit(EXIT_FAILED if plan.has_changes else EXIT_OK)
