"""What every ``lksup`` command shares.

The group, exit codes, options, output helpers and the call into the daemon's socket.

Exit codes (shared by every command): 0 success / valid / no changes; 1 invalid or (for
``diff``) changes found; 2 usage error or, for ``diff``, an error; 3 and 4 are reserved for
``status`` (not ready / unknown), following LSB.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import anyio
import click
from click.shell_completion import CompletionItem

from lksup import __version__
from lksup.errors import Diagnostic, FleetError
from lksup.fleet.loading import load_values

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
F = TypeVar("F", bound=Callable[..., Any])


class DurationType(click.ParamType[float]):
    """A duration option (``30``, ``500ms``, ``2m``, ``1h30m``), as seconds.

    Click checks it before the command does anything, so a typo is a usage error (exit 2),
    never a traceback after the work was done.
    """

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        """Seconds, or a usage error that says what a duration looks like."""
        if isinstance(value, float):
            return value
        from lksup.fleet.durations import parse_duration

        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(f"{value!r} is not a duration: {exc}", param, ctx)


DURATION = DurationType()


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
    from lksup.control.errors import ControlError, DaemonUnreachable, Unreachable

    path = _socket(explicit)

    async def run() -> Any:
        async with ControlClient(path) as client:
            return await call(client)

    try:
        return anyio.run(run)
    except DaemonUnreachable as exc:
        click.echo(f"lksup: error: {exc}", err=True)
        if exc.reason is Unreachable.NOT_LISTENING:
            click.echo(
                "hint: start one with `lksup run FLEET`, or point at another daemon's socket "
                "with --socket PATH or LKSUP_SOCKET=PATH",
                err=True,
            )
        raise SystemExit(EXIT_UNKNOWN) from None
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

    \b
    Running a fleet:
      lksup run fleets/dev.yaml --dev-server   # the supervisor, with a local LiveKit stand-in
      lksup apply fleets/prod.yaml --wait      # change what a running supervisor runs
      lksup status                             # agents, jobs, load, sync (exit 3 not ready)
      lksup drain customer-service --wait      # stop taking jobs, let running ones finish
    """


def complete_agents(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Shell completion of AGENT: the running supervisor's agents (none when unreachable)."""
    from lksup.control.client import ControlClient
    from lksup.control.paths import resolve_socket_path

    socket_path = ctx.params.get("socket_path")

    async def names() -> list[str]:
        path = resolve_socket_path(socket_path, environ=os.environ, uid=os.getuid())
        async with ControlClient(path, timeout=2.0) as client:
            return [item.name for item in (await client.status(None)).items]

    try:
        found = anyio.run(names)
    except Exception:  # completion never prints errors into the shell
        return []
    return [CompletionItem(name) for name in found if name.startswith(incomplete)]


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL.

    It completes commands, options, files, and the running supervisor's agent names.

    \b
    Examples:
      lksup completion bash > ~/.local/share/bash-completion/completions/lksup
      lksup completion zsh > "${fpath[1]}/_lksup"
      lksup completion fish > ~/.config/fish/completions/lksup.fish
      eval "$(lksup completion bash)"          # this shell only
    """
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)
    assert completer is not None
    script = completer(main, {}, "lksup", "_LKSUP_COMPLETE").source()
    click.echo(script)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print ``lksup: error: message`` and exit."""
    click.echo(f"lksup: error: {message}", err=True)
    raise SystemExit(code)
