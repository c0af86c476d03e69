"""The supervisor itself: ``run`` it, ``apply`` a fleet to it, ask its ``version``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import click

from lksup.cli import converge, present
from lksup.cli.common import (
    DURATION,
    EXIT_FAILED,
    EXIT_UNKNOWN,
    _colour,
    _control,
    _emit,
    _output_option,
    _print_diagnostics,
    _socket,
    _socket_option,
    _template_options,
    _values,
    fail,
    main,
)
from lksup.errors import FleetError, LksupError
from lksup.fleet.checks import validate_file
from lksup.fleet.loading import fleet_path
from lksup.fleet.schema import check_host_port


def _host_port(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A HOST:PORT option, checked before anything starts."""
    if value is None:
        return None
    try:
        return check_host_port(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None


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
    help="Development defaults: no load threshold, no idle processes, debug logs, and a fresh "
    "interpreter for every job (an edit to an agent's code applies to its next job).",
)
@click.option(
    "--dev-server",
    is_flag=False,
    flag_value="127.0.0.1:7880",
    default=None,
    metavar="[HOST:PORT]",
    callback=_host_port,
    help="Start the embedded dev server in this process (default 127.0.0.1:7880); agents "
    "without a LiveKit URL use it.",
)
@click.option(
    "--http",
    metavar="HOST:PORT",
    callback=_host_port,
    help="Read-only listener for /livez, /readyz, /status and /metrics (else supervisor.http).",
)
@click.option(
    "--watch",
    is_flag=True,
    help="Re-apply the fleet file whenever its content changes (GitOps: a git checkout or a "
    "Kubernetes ConfigMap), with apply's checks; a broken file changes nothing and status "
    "shows why.",
)
@click.option(
    "--log-format",
    type=click.Choice(["json", "console"]),
    help="Log format on stdout (default: console on a terminal, else JSON lines).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="The least severe records logged (default: info; debug with --dev). Job processes "
    "log at their agent's log_level.",
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
    watch: bool,
    log_format: str | None,
    log_level: str | None,
) -> None:
    """Run the supervisor in the foreground (for containers and systemd).

    With FLEET it applies that file at start; without, it resumes the last applied fleet from
    the state directory. The first SIGTERM or SIGINT drains every agent against the fleet's
    drain_timeout (exit 0 when every job finished, 1 otherwise); a second one stops at once.
    SIGHUP re-applies the fleet file (--watch: so does a change of its content, seen as it
    happens and applied once it has held still for half a second); SIGQUIT stops at once;
    SIGUSR1 dumps stacks. `lksup stop-budget FLEET` tells how long a stop can take.

    \b
    Examples:
      lksup run fleets/prod.yaml
      lksup run /etc/lksup/fleet.yaml --watch         # a mounted ConfigMap, kept in git
      lksup run fleets/dev.yaml --dev-server          # no LiveKit deployment needed
    """
    from lksup.daemon.main import DaemonSettings, run_daemon
    from lksup.daemon.state import default_state_dir
    from lksup.logs import setup_logging

    setup_logging(fmt=log_format, level=(log_level or ("debug" if dev else "info")).upper())
    values = _values(values_files, assignments)
    settings = DaemonSettings(
        socket=_socket(socket_path),
        state_dir=Path(state_dir) if state_dir else default_state_dir(),
        fleet=fleet,
        values=values,
        dev=dev,
        dev_server=dev_server,
        http=http,
        watch=watch,
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
    "--replace-fleet",
    is_flag=True,
    help="Allow a fleet whose metadata.name differs from the running one (it replaces it).",
)
@click.option(
    "--wait",
    is_flag=True,
    help="Show progress until converged: every agent ready (or drained by an operator) and "
    "every removed agent gone.",
)
@click.option(
    "--timeout",
    type=DURATION,
    default="5m",
    show_default=True,
    help="With --wait: give up after this long (30s, 5m, 1h).",
)
@click.option(
    "--skip-import-check",
    is_flag=True,
    help="Do not have the supervisor import-check entrypoints and resolve references first.",
)
@_output_option(["text", "json"], "text")
def apply(
    fleet: str,
    values_files: tuple[str, ...],
    assignments: tuple[str, ...],
    socket_path: str | None,
    dry_run: bool,
    prune_all: bool,
    replace_fleet: bool,
    wait: bool,
    timeout: float,
    skip_import_check: bool,
    output: str,
) -> None:
    """Validate FLEET, send it to the running supervisor and print the plan.

    The file is validated here first (template, YAML, schema); then the supervisor runs the
    checks of `validate --check-imports` on it where the agents will run, in its own
    environment and directory: imports, and secret references ({env: NAME}, {file: PATH}). A
    fleet that fails any of them changes nothing.

    \b
    Examples:
      lksup apply fleets/prod.yaml --dry-run
      lksup apply fleets/prod.yaml --wait --timeout 2m
    """
    from lksup.fleet.normalize import REVEAL

    values = _values(values_files, assignments)
    result = validate_file(fleet, values=values)
    _print_diagnostics(result.diagnostics)
    if not result.valid or result.loaded is None:
        raise SystemExit(EXIT_FAILED)
    document = result.loaded.fleet.model_dump(mode="json", by_alias=True, context=REVEAL)
    source = str(fleet_path(fleet))

    async def call(client: Any) -> Any:
        return await client.apply(
            document,
            source=source,
            dry_run=dry_run,
            prune_all=prune_all,
            values=values,
            replace_fleet=replace_fleet,
            check=not skip_import_check,
        )

    plan = _control(socket_path, call)
    if output == "json":
        _emit(plan)
    else:
        click.echo(present.plan_text(plan, colour=_colour()))
    if wait and not dry_run:
        removed = [a["name"] for a in plan["agents"] if a["action"] == "drain-and-remove"]
        converge.wait_converged(socket_path, timeout, removed)


@main.command()
@_socket_option
@_output_option(["text", "json"], "text")
def version(socket_path: str | None, output: str) -> None:
    """Print the versions of this client, of the running daemon and of each agent's SDK.

    The client's line is printed even without a daemon (then exit 4). Agents that run
    livekit-agents show the SDK version their job processes import.

    \b
    Examples:
      lksup version
      lksup version -o json | jq .daemon.livekitProtocol
    """
    from lksup.control.server import runtime_versions

    lksup, protocol, python = runtime_versions()
    client_versions = {"lksup": lksup, "livekitProtocol": protocol, "python": python}

    async def call(client: Any) -> Any:
        return await client.health(), await client.status(None)

    from lksup.control.client import ControlClient
    from lksup.control.errors import ControlError, DaemonUnreachable

    path = _socket(socket_path)

    async def run() -> Any:
        async with ControlClient(path) as client:
            return await call(client)

    problem = None
    try:
        health, status = anyio.run(run)
    except (DaemonUnreachable, ControlError) as exc:
        problem, health, status = str(exc), None, None
    daemon_versions = (
        None
        if health is None
        else {
            "lksup": health.version,
            "livekitProtocol": health.livekit_protocol or "unknown",
            "python": health.python or "unknown",
            "pid": health.pid,
            "socket": str(path),
        }
    )
    agents = {item.name: item.sdk_version for item in status.items} if status else {}
    if output == "json":
        _emit({"client": client_versions, "daemon": daemon_versions, "agents": agents})
    else:
        click.echo(f"client: lksup {lksup}, livekit-protocol {protocol}, Python {python}")
        if daemon_versions is not None:
            click.echo(
                f"daemon: lksup {daemon_versions['lksup']}, livekit-protocol "
                f"{daemon_versions['livekitProtocol']}, Python {daemon_versions['python']} "
                f"(pid {daemon_versions['pid']}, {path})"
            )
        for name, sdk in sorted(agents.items()):
            click.echo(f"agent {name}: " + (f"livekit-agents {sdk}" if sdk else "lksup runtime"))
    if problem is not None:
        click.echo(f"lksup: error: daemon: {problem}", err=True)
        raise SystemExit(EXIT_UNKNOWN)
