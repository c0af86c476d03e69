"""The ``lksup`` command line.

Commands are thin: parse, call one library function, print, and map the outcome to an exit
code.

Exit codes (shared by every command): 0 success / valid / no changes; 1 invalid or (for
``diff``) changes found; 2 usage error or, for ``diff``, an error; 3 and 4 are reserved for
``status`` (not ready / unknown), following LSB.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import anyio
import click
import yaml

from lksup import __version__
from lksup.errors import Diagnostic, FleetError, LksupError
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


EXIT_NOT_READY, EXIT_UNKNOWN = 3, 4


def _socket_option(func: F) -> F:
    return click.option(
        "--socket",
        "socket_path",
        metavar="PATH",
        help="Control socket [env: LKSUP_SOCKET; default /run/lksup/lksup.sock as root, "
        "else $XDG_RUNTIME_DIR/lksup/lksup.sock].",
    )(func)


def _socket(explicit: str | None) -> Any:
    from lksup.control.errors import SocketPathError
    from lksup.control.paths import resolve_socket_path

    try:
        return resolve_socket_path(explicit, environ=os.environ, uid=os.getuid())
    except SocketPathError as exc:
        fail(str(exc), EXIT_USAGE)


def _control(explicit: str | None, call: Any) -> Any:
    """Run ``call(client)`` against the daemon; unreachable -> exit 4, errors -> exit 1/4."""
    from lksup.control.client import ControlClient
    from lksup.control.errors import ControlError, DaemonUnreachable

    path = _socket(explicit)

    async def run() -> Any:
        async with ControlClient(path) as client:
            return await call(client)

    try:
        return anyio.run(run)
    except DaemonUnreachable as exc:
        fail(str(exc), EXIT_UNKNOWN)
    except ControlError as exc:
        fail(exc.message, EXIT_UNKNOWN if exc.code == "not_found" else EXIT_FAILED)


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
    if old is not None:
        before: Fleet | None = _load_or_exit(old, values, code=EXIT_USAGE).fleet
    else:

        async def call(client: Any) -> Any:
            return await client.applied()

        applied = _control(socket_path, call)
        before = Fleet.model_validate(applied["fleet"]) if applied else None
    plan = plan_diff(before, after.fleet)
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


@main.command()
@click.argument("fleet", required=False, metavar="[FLEET]")
@_template_options
@_socket_option
@click.option(
    "--state-dir", type=click.Path(file_okay=False), help="State directory [env: LKSUP_STATE_DIR]."
)
@click.option(
    "--dev",
    is_flag=True,
    help="Development defaults: no load threshold, no idle processes, debug logs.",
)
@click.option(
    "--dev-server",
    is_flag=False,
    flag_value="127.0.0.1:7880",
    default=None,
    metavar="[HOST:PORT]",
    help="Start the embedded dev server in this process (default 127.0.0.1:7880); agents "
    "without a LiveKit URL use it.",
)
@click.option(
    "--http",
    metavar="HOST:PORT",
    help="Read-only listener for /livez, /readyz, /status and /metrics (else supervisor.http).",
)
@click.option(
    "--log-format",
    type=click.Choice(["json", "console"]),
    help="Log format on stdout (default: console on a terminal, else JSON lines).",
)
def run(
    fleet: str | None,
    values_files: tuple[str, ...],
    assignments: tuple[str, ...],
    socket_path: str | None,
    state_dir: str | None,
    dev: bool,
    dev_server: str | None,
    http: str | None,
    log_format: str | None,
) -> None:
    """Run the supervisor in the foreground (for containers and systemd).

    With FLEET it applies that file at start; without, it resumes the last applied fleet from
    the state directory. The first SIGTERM or SIGINT drains every agent against the fleet's
    drain_timeout (exit 0 when every job finished, 1 otherwise); a second one stops at once.
    SIGHUP re-applies the fleet file; SIGQUIT stops at once; SIGUSR1 dumps stacks.

    \b
    Examples:
      lksup run fleets/prod.yaml
      lksup run fleets/dev.yaml --dev-server          # no LiveKit deployment needed
    """
    from lksup.daemon.main import DaemonSettings, run_daemon
    from lksup.daemon.state import default_state_dir
    from lksup.logs import setup_logging

    setup_logging(fmt=log_format, level="DEBUG" if dev else "INFO")
    values = _values(values_files, assignments)
    settings = DaemonSettings(
        socket=_socket(socket_path),
        state_dir=Path(state_dir) if state_dir else default_state_dir(),
        fleet=fleet,
        values=values,
        dev=dev,
        dev_server=dev_server,
        http=http,
    )
    try:
        code = run_daemon(settings)
    except FleetError as exc:
        _print_diagnostics(exc.diagnostics)
        raise SystemExit(EXIT_FAILED) from None
    except LksupError as exc:
        fail(str(exc))
    except OSError as exc:  # e.g. the state directory cannot be created
        fail(f"cannot start: {exc}")
    raise SystemExit(code)


@main.command()
@click.argument("fleet", metavar="FLEET")
@_template_options
@_socket_option
@click.option("--dry-run", is_flag=True, help="Show the plan; change nothing.")
@click.option("--prune-all", is_flag=True, help="Allow a fleet that removes every agent.")
@click.option(
    "--wait",
    is_flag=True,
    help="Show progress until converged: every agent ready (or drained by an operator) and "
    "every removed agent gone.",
)
@click.option(
    "--timeout",
    "timeout_text",
    default="5m",
    show_default=True,
    help="With --wait: give up after this long.",
)
@click.option("--skip-import-check", is_flag=True, help="Do not import-check entrypoints first.")
@_output_option(["text", "json"], "text")
def apply(
    fleet: str,
    values_files: tuple[str, ...],
    assignments: tuple[str, ...],
    socket_path: str | None,
    dry_run: bool,
    prune_all: bool,
    wait: bool,
    timeout_text: str,
    skip_import_check: bool,
    output: str,
) -> None:
    """Validate FLEET, send it to the running supervisor and print the plan.

    The same checks as `validate --check-imports` run first; a fleet that fails any of them
    changes nothing. Secret references ({env: NAME}, {file: PATH}) are resolved by the
    supervisor, in its own environment.

    \b
    Examples:
      lksup apply fleets/prod.yaml --dry-run
      lksup apply fleets/prod.yaml --wait --timeout 2m
    """
    from lksup.fleet.durations import parse_duration
    from lksup.fleet.normalize import REVEAL

    values = _values(values_files, assignments)
    result = validate_file(fleet, values=values, check_imports=not skip_import_check)
    _print_diagnostics(result.diagnostics)
    if not result.valid or result.loaded is None:
        raise SystemExit(EXIT_FAILED)
    document = result.loaded.fleet.model_dump(mode="json", by_alias=True, context=REVEAL)
    source = str(Path(fleet).resolve())

    async def call(client: Any) -> Any:
        return await client.apply(
            document, source=source, dry_run=dry_run, prune_all=prune_all, values=values
        )

    plan = _control(socket_path, call)
    if output == "json":
        _emit(plan)
    else:
        click.echo(_plan_text(plan))
    if wait and not dry_run:
        removed = [a["name"] for a in plan["agents"] if a["action"] == "drain-and-remove"]
        _wait_converged(socket_path, parse_duration(timeout_text), removed)


def _plan_text(plan: dict[str, Any]) -> str:
    lines = []
    summary = plan.get("summary", {})
    lines.append(
        "Plan: "
        + ", ".join(
            f"{summary.get(k, 0)} {k}"
            for k in ("create", "update-in-place", "replace", "drain-and-remove", "unchanged")
        )
        + ("" if not plan.get("dryRun") else " (dry run: nothing changed)")
    )
    for agent in plan.get("agents", []):
        lines.append(f"  {agent['action']:<17} {agent['name']}")
        lines.extend(
            f"      {c['path']}: {plan_render.format_value(c['old'])} -> "
            f"{plan_render.format_value(c['new'])}"
            for c in agent.get("changes", [])
        )
    lines.extend(
        f"  {name}: the apply changes it, so its drain override is cleared"
        for name in plan.get("overridesCleared", [])
    )
    lines.extend(
        f"  {name}: a secret it references changed: replaced"
        for name in plan.get("secretsChanged", [])
    )
    if plan.get("revision"):
        lines.append(f"applied revision {plan['revision']}")
    return "\n".join(lines)


def _converged(item: Any, removed: list[str]) -> bool:
    if item.name in removed:
        return False  # still draining away
    return bool(item.sync == "override" or (item.ready and item.sync == "synced"))


def _wait_converged(socket_path: str | None, timeout: float, removed: list[str]) -> None:
    """Print what is still converging whenever it changes, until nothing is (or timeout)."""

    async def call(client: Any) -> Any:
        last = ""
        with anyio.move_on_after(timeout):
            while True:
                items = (await client.status()).items
                waiting = [item for item in items if not _converged(item, removed)]
                if not waiting:
                    return items
                line = "; ".join(
                    f"{item.name} {'draining away' if item.name in removed else item.state}"
                    + (f" ({item.message})" if item.message else "")
                    for item in waiting
                )
                if line != last:
                    click.echo(f"waiting for {len(waiting)} agent(s): {line}")
                    last = line
                await anyio.sleep(0.2)  # polling the daemon's status, the CLI's only view
        return None

    items = _control(socket_path, call)
    if items is None:
        fail(f"not converged within {timeout:g}s (see lksup status)")
    drained = sum(1 for item in items if item.sync == "override")
    ready = len(items) - drained
    click.echo(
        f"converged: {ready} agent(s) ready"
        + (f", {drained} drained by an operator" if drained else "")
    )


@main.command()
@click.argument("agent", required=False, metavar="[AGENT]")
@_socket_option
@click.option("--jobs", "show_jobs", is_flag=True, help="List each agent's running jobs.")
@click.option("--check", is_flag=True, help="Exit 3 when an agent is not ready.")
@click.option("-w", "--watch", is_flag=True, help="Redraw every 2 seconds until Ctrl+C.")
@_output_option(["table", "wide", "json"], "table")
def status(
    agent: str | None,
    socket_path: str | None,
    show_jobs: bool,
    check: bool,
    watch: bool,
    output: str,
) -> None:
    """Show the agents of the running supervisor.

    Exit status: 0; 3 with --check when an agent is not ready; 4 when the supervisor is
    unreachable or AGENT is unknown.

    \b
    Examples:
      lksup status
      lksup status customer-service --jobs
      lksup status -o json | jq '.items[] | select(.state != "running")'
    """

    async def call(client: Any) -> Any:
        return await client.status(agent)

    if watch:
        _watch_status(socket_path, agent, wide=output == "wide", show_jobs=show_jobs)
        return
    result = _control(socket_path, call)
    if output == "json":
        _emit(result.model_dump(mode="json", by_alias=True))
    else:
        click.echo(_status_table(result.items, wide=output == "wide", show_jobs=show_jobs))
    if check and not all(item.ready for item in result.items):
        raise SystemExit(EXIT_NOT_READY)


def _watch_status(
    socket_path: str | None, agent: str | None, *, wide: bool, show_jobs: bool
) -> None:
    async def call(client: Any) -> Any:
        while True:
            items = (await client.status(agent)).items
            table = _status_table(items, wide=wide, show_jobs=show_jobs)
            if sys.stdout.isatty():
                click.clear()
            click.echo(table + ("\n" if not sys.stdout.isatty() else ""))
            await anyio.sleep(2.0)  # the refresh interval of the view

    with contextlib.suppress(KeyboardInterrupt):
        _control(socket_path, call)


def _age(started_at: str | None) -> str:
    if not started_at:
        return "-"
    from datetime import UTC, datetime

    from lksup.fleet.durations import format_duration

    seconds = (datetime.now(UTC) - datetime.fromisoformat(started_at)).total_seconds()
    text = format_duration(max(0.0, seconds))
    return text[: text.find("m") + 1] if "h" in text or "d" in text else text


def _status_table(items: list[Any], *, wide: bool, show_jobs: bool) -> str:
    header = [
        "AGENT",
        "STATE",
        "READY",
        "JOBS",
        "IDLE",
        "LOAD/THR",
        "MEM",
        "RESTARTS",
        "AGE",
        "SYNC",
        "MESSAGE",
    ]
    if wide:
        header[-1:-1] = ["WORKER_ID"]
    rows = []
    for item in items:
        row = [
            item.name,
            item.state,
            "1/1" if item.ready else "0/1",
            str(item.jobs),
            f"{item.idle}/{item.idle_target}",
            f"{item.load:.2f}/{item.threshold:.2f}",
            f"{item.memory_mb:.0f}Mi",
            str(item.restarts),
            _age(item.started_at),
            item.sync,
            item.message or "-",
        ]
        if wide:
            row[-1:-1] = [item.worker_id or "-"]
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    if show_jobs:
        for item in items:
            lines.append("")
            lines.append(f"{item.name}: {len(item.jobs_detail)} job(s)")
            lines.extend(
                f"  {job.job_id}  room={job.room}  pid={job.pid}  {job.state}  "
                f"age={_age(job.started_at)}  mem={job.memory_mb:.0f}Mi"
                for job in item.jobs_detail
            )
    return "\n".join(lines)


@main.command()
@click.argument("agent", required=False, metavar="[AGENT]")
@click.option("--all", "all_agents", is_flag=True, help="Drain every agent.")
@click.option("--wait", is_flag=True, help="Wait until the drained agents have no job left.")
@click.option(
    "--timeout",
    "timeout_text",
    default="1h",
    show_default=True,
    help="With --wait: give up after this long (exit 1).",
)
@_socket_option
def drain(
    agent: str | None, all_agents: bool, wait: bool, timeout_text: str, socket_path: str | None
) -> None:
    """Stop AGENT (or --all) taking jobs; running jobs finish. Recorded as an override.

    \b
    Example:
      lksup drain sales && lksup status sales --jobs
    """
    if bool(agent) == all_agents:
        fail("give AGENT or --all", EXIT_USAGE)

    async def call(client: Any) -> Any:
        return await client.drain(agent)

    result = _control(socket_path, call)
    click.echo(f"draining {', '.join(result['draining'])} ({result['jobs']} job(s) running)")
    if wait:
        from lksup.fleet.durations import format_duration, parse_duration

        names = set(result["draining"])
        timeout = parse_duration(timeout_text)

        async def until_drained(client: Any) -> Any:
            last = None
            with anyio.move_on_after(timeout):
                while True:
                    items = [i for i in (await client.status()).items if i.name in names]
                    left = sum(i.jobs for i in items)
                    if left == 0:
                        return True
                    if left != last:
                        click.echo(f"  {left} job(s) left")
                        last = left
                    await anyio.sleep(0.5)  # polling the daemon's status, the CLI's only view
            return False

        if not _control(socket_path, until_drained):
            fail(f"jobs were still running after {format_duration(timeout)}")
        click.echo("drained")


@main.command()
@click.argument("agent", metavar="AGENT")
@_socket_option
def undrain(agent: str, socket_path: str | None) -> None:
    """Let AGENT take jobs again (clears the drain override).

    \b
    Example:
      lksup undrain sales
    """

    async def call(client: Any) -> Any:
        return await client.undrain(agent)

    _control(socket_path, call)
    click.echo(f"{agent} takes jobs again")


@main.command()
@click.argument("agent", required=False, metavar="[AGENT]")
@click.option("--all", "all_agents", is_flag=True, help="Reload every agent.")
@_socket_option
def reload(agent: str | None, all_agents: bool, socket_path: str | None) -> None:
    """Rolling replace of AGENT (or --all) with the same configuration.

    The new worker registers and warms up first, then the old one drains.

    \b
    Example:
      lksup reload customer-service
    """
    if bool(agent) == all_agents:
        fail("give AGENT or --all", EXIT_USAGE)

    async def call(client: Any) -> Any:
        return await client.reload(agent)

    result = _control(socket_path, call)
    if result["reloading"]:
        click.echo(f"reloading {', '.join(result['reloading'])}")
    for name in result.get("skipped_drained", []):
        click.echo(f"skipped {name}: drained by an operator (lksup undrain {name} first)")


@main.command()
@click.argument("agent", metavar="AGENT")
@click.option("--room", required=True, help="The room the simulated job is for.")
@click.option("--participant", metavar="IDENTITY", help="A participant: a publisher job.")
@_socket_option
def simulate(agent: str, room: str, participant: str | None, socket_path: str | None) -> None:
    """Ask the server for a job on AGENT's own connection (SimulateJobRequest).

    Works on a real server too, like the SDK's simulate_job: the job is offered to this agent
    only, and runs like any other.

    \b
    Example:
      lksup simulate customer-service --room support-test
    """

    async def call(client: Any) -> Any:
        return await client.simulate(agent, room, participant)

    _control(socket_path, call)
    click.echo(f"asked the server for a job on {agent} (room {room})")


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print ``lksup: error: message`` and exit."""
    click.echo(f"lksup: error: {message}", err=True)
    raise SystemExit(code)
