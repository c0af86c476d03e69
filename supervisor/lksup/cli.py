"""The ``lksup`` command line.

Commands are thin: parse, call one library function, print, and map the outcome to an exit
code.

Exit codes (shared by every command): 0 success / valid / no changes; 1 invalid or (for
``diff``) changes found; 2 usage error or, for ``diff``, an error; 3 and 4 are reserved for
``status`` (not ready / unknown), following LSB.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import anyio
import click
import yaml

from lksup import __version__
from lksup.errors import Diagnostic, FleetError
from lksup.fleet.checks import ValidationResult, validate_file
from lksup.fleet.loading import LoadedFleet, load_fleet, load_values
from lksup.fleet.schema import API_VERSION, Fleet, json_schema
from lksup.reconcile import render as plan_render
from lksup.reconcile.diff import diff as plan_diff

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
F = TypeVar("F", bound=Callable[..., Any])


def _colour() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def _print_diagnostics(diagnostics: list[Diagnostic]) -> None:
    for diagnostic in diagnostics:
        click.echo(diagnostic.format(), err=True)


def _values(values_files: tuple[str, ...], assignments: tuple[str, ...]) -> dict[str, Any]:
    try:
        return load_values(list(values_files), list(assignments))
    except FleetError as exc:
        _print_diagnostics(exc.diagnostics)
        raise SystemExit(EXIT_USAGE) from None


def _template_options(func: F) -> F:
    func = click.option(
        "--set",
        "assignments",
        multiple=True,
        metavar="KEY=VALUE",
        help="Set a template value (dotted keys: --set region.name=eu). Repeatable.",
    )(func)
    return click.option(
        "--values",
        "values_files",
        multiple=True,
        type=click.Path(dir_okay=False),
        metavar="FILE",
        help="YAML file of template values, merged in order. Repeatable.",
    )(func)


def _output_option(choices: list[str], default: str) -> Callable[[F], F]:
    return click.option(
        "-o",
        "--output",
        type=click.Choice(choices),
        default=default,
        show_default=True,
        help="Output format.",
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="lksup")
def main() -> None:
    """lksup: a declarative supervisor for fleets of LiveKit agent workers.

    A fleet file (YAML, optionally a jinja2 template) declares named agents; lksup checks it,
    shows what applying it would change, and runs the fleet in one supervisor process.

    \b
    Offline commands (for pull requests and CI):
      lksup validate fleets/prod.yaml --strict
      lksup render fleets/prod.yaml --values values/eu.yaml
      lksup diff fleets/prod.yaml --against previous.yaml
      lksup schema > schemas/fleet.schema.json
    """


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
@_output_option(["text", "json"], "text")
def validate(
    fleets: tuple[str, ...],
    values_files: tuple[str, ...],
    assignments: tuple[str, ...],
    strict: bool,
    check_imports: bool,
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
    """
    values = _values(values_files, assignments)
    results = [
        validate_file(path, values=values, strict=strict, check_imports=check_imports)
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
    raise SystemExit(EXIT_OK if all(r.valid for r in results) else EXIT_FAILED)


def _result_json(result: ValidationResult) -> dict[str, Any]:
    return {
        "file": result.path,
        "valid": result.valid,
        "agents": list(result.loaded.fleet.agents) if result.loaded else [],
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
@click.argument("fleet", metavar="FLEET")
@_template_options
@_output_option(["yaml", "json"], "yaml")
def render(
    fleet: str, values_files: tuple[str, ...], assignments: tuple[str, ...], output: str
) -> None:
    """Print the normalized fleet: template rendered, defaults merged, durations in seconds.

    Secrets are printed as references ({env: NAME}, {file: PATH}); a literal secret is printed
    as a digest, never its value. Rendering the output again gives the same output.

    \b
    Examples:
      lksup render fleets/prod.yaml
      lksup render fleets/prod.yaml --values values/eu.yaml -o json | jq .agents
    """
    loaded = _load_or_exit(fleet, _values(values_files, assignments), code=EXIT_FAILED)
    document = rendered_document(loaded.fleet)
    if output == "json":
        _emit(document)
    else:
        click.echo(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), nl=False)


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
    required=True,
    metavar="OLD",
    help="The fleet file to compare with (e.g. the version on the main branch).",
)
@_template_options
@_output_option(["text", "json"], "text")
def diff(
    new: str, old: str, values_files: tuple[str, ...], assignments: tuple[str, ...], output: str
) -> None:
    """Show the plan that takes fleet OLD to fleet NEW, agent by agent.

    Actions: create, update-in-place (no process restarted), replace (new worker registers
    and warms up, then the old one drains), drain-and-remove, unchanged; each with its field
    changes. Both sides are normalized first, so reordering, comments and spelled-out defaults
    are not changes. Template values apply to both files.

    Exit status: 0 when there is nothing to do, 1 when there are changes, 2 on an error.

    \b
    Example (in CI, against the main branch):
      lksup diff fleets/prod.yaml --against <(git show origin/main:fleets/prod.yaml)
    """
    values = _values(values_files, assignments)
    before = _load_or_exit(old, values, code=EXIT_USAGE)
    after = _load_or_exit(new, values, code=EXIT_USAGE)
    plan = plan_diff(before.fleet, after.fleet)
    if output == "json":
        _emit(plan_render.to_json(plan))
    else:
        click.echo(plan_render.to_text(plan, colour=_colour()))
    raise SystemExit(EXIT_FAILED if plan.has_changes else EXIT_OK)


@main.command()
@click.argument("agent", required=False, metavar="[AGENT]")
@click.option("--room", required=True, help="Room name (created when missing).")
@click.option("--metadata", default="", help="Job metadata handed to the agent (create only).")
@click.option("--list", "list_", is_flag=True, help="List the room's dispatches instead.")
@click.option("--delete", "delete_id", metavar="ID", help="Delete this dispatch (ends its jobs).")
@click.option("--url", envvar="LIVEKIT_URL", help="Server URL [env: LIVEKIT_URL].")
@click.option("--api-key", envvar="LIVEKIT_API_KEY", help="API key [env: LIVEKIT_API_KEY].")
@click.option(
    "--api-secret",
    envvar="LIVEKIT_API_SECRET",
    help="API secret [env: LIVEKIT_API_SECRET; prefer the variable: flags show in ps].",
)
@_output_option(["text", "json"], "text")
def dispatch(
    agent: str | None,
    room: str,
    metadata: str,
    list_: bool,
    delete_id: str | None,
    url: str | None,
    api_key: str | None,
    api_secret: str | None,
    output: str,
) -> None:
    """Create, list or delete explicit agent dispatches (LiveKit's AgentDispatchService).

    Works against any LiveKit server, including `lksup dev-server`. The job goes to a worker
    registered under AGENT; there is no queue: with no such worker, nothing happens.

    \b
    Examples:
      lksup dispatch customer-service --room support-42 --metadata '{"lang": "fr"}'
      lksup dispatch --list --room support-42 -o json
      lksup dispatch --delete AD_x8Jw2 --room support-42
    """
    from lksup.transport import dispatch as api  # lazily: offline commands stay fast

    modes = sum([bool(agent), list_, delete_id is not None])
    if modes != 1:
        fail("give exactly one of AGENT, --list or --delete ID", EXIT_USAGE)
    try:
        settings = api.ApiSettings.resolve(url=url, api_key=api_key, api_secret=api_secret)
        if list_:
            found = asyncio.run(api.list_dispatches(settings, room=room))
            _print_dispatches(found, output)
            return
        if delete_id is not None:
            deleted = asyncio.run(api.delete_dispatch(settings, dispatch_id=delete_id, room=room))
            _print_dispatches([deleted], output, verb="deleted")
            return
        assert agent is not None
        created = asyncio.run(
            api.create_dispatch(settings, agent_name=agent, room=room, metadata=metadata)
        )
        _print_dispatches([created], output, verb="created")
    except api.DispatchError as exc:
        fail(str(exc))


#: The dev server's default credentials: a documented development constant, not a secret.
DEV_KEYS = "devkey:secret-for-local-development-only"


def _parse_keys(value: str) -> dict[str, str]:
    keys: dict[str, str] = {}
    for item in value.split(","):
        key, sep, secret = item.strip().partition(":")
        if not sep or not key.strip() or not secret.strip():
            raise click.BadParameter("expected KEY:SECRET[,KEY:SECRET...]", param_hint="--keys")
        keys[key.strip()] = secret.strip()
    return keys


@main.command("dev-server")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=7880, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--keys",
    envvar="LKSUP_DEV_KEYS",
    default=DEV_KEYS,
    show_default=True,
    metavar="KEY:SECRET[,...]",
    help="API keys workers and API calls sign with [env: LKSUP_DEV_KEYS].",
)
@click.option(
    "--target-load",
    default=0.7,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="A worker reporting this load or more gets no jobs (the server's agents.target_load).",
)
@click.option(
    "--dispatch-timeout",
    default=3.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds all workers together get to accept a job (the real server's ~3 s).",
)
def dev_server(
    host: str, port: int, keys: str, target_load: float, dispatch_timeout: float
) -> None:
    """Run the embedded LiveKit dev server: the agent protocol and the dispatch API, no media.

    For development, demos and tests without a LiveKit deployment. Workers (lksup, or the
    livekit-agents SDK) connect to ws://HOST:PORT; `lksup dispatch` and livekit-api's
    AgentDispatchService / RoomService.CreateRoom work against it. It behaves like a single-node
    livekit-server for agents: load-based worker choice, the ~3 s answer budget, no queueing.
    It carries no audio or video: agents cannot actually join rooms. Stop it with Ctrl+C.

    \b
    Examples:
      lksup dev-server
      lksup dev-server --port 7881 --keys "devkey:$(openssl rand -hex 24)"
      LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=devkey \\
        LIVEKIT_API_SECRET=secret-for-local-development-only lksup dispatch my-agent --room r1
    """
    from lksup.devserver.main import serve  # lazily: offline commands stay fast

    parsed = _parse_keys(keys)

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                try:
                    await tg.start(
                        functools.partial(
                            serve,
                            host,
                            port,
                            parsed,
                            target_load=target_load,
                            dispatch_timeout=dispatch_timeout,
                            announce=click.echo,
                        )
                    )
                except OSError as exc:
                    fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
                async for _ in signals:
                    click.echo("stopping the dev server", err=True)
                    tg.cancel_scope.cancel()
                    break

    anyio.run(run)


def _print_dispatches(dispatches: list[Any], output: str, *, verb: str | None = None) -> None:
    from lksup.transport.dispatch import dispatch_to_dict

    if output == "json":
        items = [dispatch_to_dict(d) for d in dispatches]
        if verb is None:
            _emit({"apiVersion": API_VERSION, "kind": "AgentDispatchList", "items": items})
        else:
            _emit({"apiVersion": API_VERSION, "kind": "AgentDispatch", **items[0]})
        return
    if verb is not None:
        (item,) = dispatches
        click.echo(f"dispatch {item.id} {verb}: agent {item.agent_name!r}, room {item.room!r}")
        return
    if not dispatches:
        click.echo("no dispatches")
        return
    click.echo(f"{'ID':<20} {'AGENT':<24} {'ROOM':<24} JOBS")
    for item in dispatches:
        jobs = ", ".join(job.id for job in item.state.jobs) or "-"
        click.echo(f"{item.id:<20} {item.agent_name or '(automatic)':<24} {item.room:<24} {jobs}")


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print ``lksup: error: message`` and exit."""
    click.echo(f"lksup: error: {message}", err=True)
    raise SystemExit(code)
