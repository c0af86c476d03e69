"""The verbs on a running supervisor's agents: status, drain, undrain, reload, simulate.

Each asks the daemon once over the control socket and prints its answer; the tables come from
``cli.present``, and what follows a change over time (``status -w``, ``drain --wait``) from
``cli.converge``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click
import yaml

from lksup.cli import converge, present
from lksup.cli.common import (
    DURATION,
    EXIT_NOT_READY,
    EXIT_USAGE,
    _control,
    _emit,
    _output_option,
    _socket_option,
    complete_agents,
    fail,
    main,
)

if TYPE_CHECKING:
    from lksup.control.client import ControlClient


@main.command()
@click.argument("agent", required=False, metavar="[AGENT]", shell_complete=complete_agents)
@_socket_option
@click.option(
    "--jobs",
    "show_jobs",
    is_flag=True,
    help="List each agent's running jobs, and those that ended in the last 10 minutes.",
)
@click.option("--check", is_flag=True, help="Exit 3 when an agent is not ready.")
@click.option(
    "-w",
    "--watch",
    is_flag=True,
    help="Redraw every 2 seconds until Ctrl+C; with -o json or yaml, print a document each "
    "time the status changes (JSON: one per line).",
)
@_output_option(["table", "wide", "json", "yaml"], "table")
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
      lksup status -w -o json | jq -c '.items[] | [.name, .state]'   # a line per change
    """

    async def call(client: ControlClient) -> Any:
        return await client.status(agent)

    if watch and output in ("json", "yaml"):
        converge.stream_status(socket_path, agent, output)
        return
    if watch:
        converge.watch_status(socket_path, agent, wide=output == "wide", show_jobs=show_jobs)
        return
    result = _control(socket_path, call)
    if output == "json":
        _emit(result.model_dump(mode="json", by_alias=True))
    elif output == "yaml":
        document = result.model_dump(mode="json", by_alias=True)
        click.echo(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), nl=False)
    else:
        wide = output == "wide"
        view = present.status_view(
            result, wide=wide, show_jobs=show_jobs, show_templates=wide, now=datetime.now(UTC)
        )
        click.echo(view)
    if check and not all(item.ready for item in result.items):
        raise SystemExit(EXIT_NOT_READY)


@main.command()
@click.argument("agent", required=False, metavar="[AGENT]", shell_complete=complete_agents)
@click.option("--all", "all_agents", is_flag=True, help="Drain every agent.")
@click.option("--wait", is_flag=True, help="Wait until the drained agents have no job left.")
@click.option(
    "--timeout",
    type=DURATION,
    default="1h",
    show_default=True,
    help="With --wait: give up after this long (exit 1; 30s, 5m, 1h).",
)
@_socket_option
def drain(
    agent: str | None, all_agents: bool, wait: bool, timeout: float, socket_path: str | None
) -> None:
    """Stop AGENT (or --all) taking jobs; running jobs finish. Recorded as an override.

    \b
    Example:
      lksup drain sales && lksup status sales --jobs
    """
    if bool(agent) == all_agents:
        fail("give AGENT or --all", EXIT_USAGE)

    async def call(client: ControlClient) -> Any:
        return await client.drain(agent)

    result = _control(socket_path, call)
    click.echo(f"draining {', '.join(result['draining'])} ({result['jobs']} job(s) running)")
    if wait:
        converge.wait_drained(socket_path, result["draining"], timeout)


@main.command()
@click.argument("agent", metavar="AGENT", shell_complete=complete_agents)
@_socket_option
def undrain(agent: str, socket_path: str | None) -> None:
    """Let AGENT take jobs again (clears the drain override).

    \b
    Example:
      lksup undrain sales
    """

    async def call(client: ControlClient) -> Any:
        return await client.undrain(agent)

    _control(socket_path, call)
    click.echo(f"{agent} takes jobs again")


@main.command()
@click.argument("agent", required=False, metavar="[AGENT]", shell_complete=complete_agents)
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

    async def call(client: ControlClient) -> Any:
        return await client.reload(agent)

    result = _control(socket_path, call)
    if result["reloading"]:
        click.echo(f"reloading {', '.join(result['reloading'])}")
    for name in result.get("skipped_drained", []):
        click.echo(f"skipped {name}: drained by an operator (lksup undrain {name} first)")


@main.command()
@click.argument("agent", metavar="AGENT", shell_complete=complete_agents)
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

    async def call(client: ControlClient) -> Any:
        return await client.simulate(agent, room, participant)

    _control(socket_path, call)
    click.echo(f"asked the server for a job on {agent} (room {room})")
