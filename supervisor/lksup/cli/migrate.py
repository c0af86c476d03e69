"""``lksup init --from MODULE:ATTR``: a fleet file from a livekit-agents agent's options.

The CLI never imports user code (DESIGN.md §3.1): the module is read by
``python -m lksup.jobs.sdk.introspect`` in a child process (its own session, killed with its
group at the timeout), in the agent's working directory, which prints one JSON document. The
pure ``lksup.fleet.migrate`` turns it into the fleet printed here.

Exit status: 0 the fleet was printed (options with no equivalent are warnings); 1 the module
cannot be read (import error, timeout) or cannot become a fleet (a closure as entrypoint);
2 usage: a malformed reference, a missing attribute, an object that is not a WorkerOptions or
AgentServer, no agent name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pydantic
import yaml

from lksup.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, _emit, _output_option, fail, main
from lksup.fleet.migrate import MigrationError, header, stderr_lines, to_fleet
from lksup.fleet.schema import ImportRef

INTROSPECT = "lksup.jobs.sdk.introspect"
DEFAULT_TIMEOUT = 60.0
_REF = pydantic.TypeAdapter(ImportRef)


def _source(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return str(_REF.validate_python(value))
    except pydantic.ValidationError as exc:
        message = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise click.BadParameter(message, ctx=ctx, param=param) from None


def _interpreter(python: str | None) -> str:
    """An absolute path (not resolved: a venv's python is a symlink that must stay one)."""
    if python is None:
        return sys.executable
    if os.sep not in python:
        found = shutil.which(python)
        if found is None:
            fail(f"--python: {python!r} is not on PATH", EXIT_USAGE)
        return found
    return os.path.abspath(python)


def read_module(source: str, *, python: str, cwd: Path, timeout: float) -> dict[str, Any]:
    """Run the introspection child and return its document (``ok`` true); exit on failure."""
    command = [python, "-m", INTROSPECT, source]
    try:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    except OSError as exc:
        fail(f"cannot run {python}: {exc.strerror}", EXIT_USAGE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # it ended between timeout and kill
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        fail(f"reading {source} took over {timeout:g}s (does the module block at import?)")
    try:
        document: dict[str, Any] = json.loads(out)
    except ValueError:
        lines = err.strip().splitlines()
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        if "No module named lksup" in err:
            reason = f"lksup is not installed for {python}"
        fail(f"cannot read {source}: {reason}")
    if not document.get("ok"):
        error = document.get("error", {})
        where = f"{error['file']}:{error['line']}: " if error.get("line") else ""
        if not where and error.get("file"):
            where = f"{error['file']}: "
        code = EXIT_USAGE if error.get("kind") == "reference" else EXIT_FAILED
        fail(f"{where}{error.get('message', 'unknown error')}", code)
    return document


@main.command("init")
@click.option(
    "--from",
    "source",
    required=True,
    metavar="MODULE:ATTR",
    callback=_source,
    help="The module-level WorkerOptions or AgentServer to read, e.g. agent:server.",
)
@click.option(
    "--name", metavar="AGENT", help="Agent name (the fleet's key); default: its agent_name."
)
@click.option(
    "--working-dir",
    type=click.Path(exists=True, file_okay=False),
    metavar="DIR",
    help="Where the agent's modules are imported from (default: the current directory); "
    "written as the agent's working_dir.",
)
@click.option(
    "--python",
    metavar="PATH",
    help="Interpreter to read the module with (the agent's virtual environment, with lksup "
    "installed); written as the agent's python.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="Give up reading the module after this long.",
)
@_output_option(["yaml", "json"], "yaml")
def init(
    source: str,
    name: str | None,
    working_dir: str | None,
    python: str | None,
    timeout: float,
    output: str,
) -> None:
    """Print a fleet file for an agent written with livekit-agents' WorkerOptions or AgentServer.

    The module is imported in a child process (never in lksup itself), with the working
    directory first on sys.path, and its options are mapped to fleet fields (runtime:
    livekit-agents). Options at the SDK's default are left out. Options with no fleet
    equivalent are listed, with what to use instead, at the top of the file and on stderr.
    Secrets are never printed: the fleet reads $LIVEKIT_API_KEY and $LIVEKIT_API_SECRET.

    Exit status: 0 printed; 1 the module cannot be read or migrated; 2 usage (bad reference,
    no agent name).

    \b
    Examples:
      lksup init --from agent:server > fleet.yaml && lksup validate fleet.yaml
      lksup init --from myapp.worker:opts --name support --working-dir src -o json
    """
    interpreter = _interpreter(python)
    cwd = Path(working_dir) if working_dir else Path.cwd()
    read = read_module(source, python=interpreter, cwd=cwd, timeout=timeout)
    try:
        migration = to_fleet(read, name=name, working_dir=working_dir, python=python)
    except MigrationError as exc:
        for problem in exc.problems:
            click.echo(f"lksup: error: {problem}", err=True)
        raise SystemExit(EXIT_USAGE if exc.usage else EXIT_FAILED) from None
    for line in stderr_lines(migration):
        click.echo(f"lksup: {line}", err=True)
    if output == "json":
        _emit(migration.document)
    else:
        text = header(migration, source=source, kind=read["kind"], sdk_version=read["sdk_version"])
        body = yaml.safe_dump(migration.document, sort_keys=False, allow_unicode=True)
        click.echo(text + body, nl=False)
    raise SystemExit(EXIT_OK)
