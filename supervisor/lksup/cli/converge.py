"""Following the daemon until something holds: ``apply --wait``, ``drain --wait``, ``status -w``.

The control API is request/response, so the CLI's only view of progress is ``status``, asked
again at an interval: 0.2 s while an apply converges, 0.5 s while a drain empties, 1 s for a
``status -w -o json|yaml`` stream, 2 s for the redrawn table. Progress is printed only when it
changes (the redrawn table apart), so a log of a pipeline shows each step once.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import click
import yaml

from lksup.cli import present
from lksup.cli.common import _control, fail

if TYPE_CHECKING:
    from lksup.control.api import AgentStatus, StatusList
    from lksup.control.client import ControlClient

T = TypeVar("T")


class _OnChange:
    """Echoes a text only when it differs from the one echoed last."""

    def __init__(self) -> None:
        self.last: str | None = None

    def echo(self, text: str, *, nl: bool = True) -> None:
        if text != self.last:
            click.echo(text, nl=nl)
            sys.stdout.flush()
            self.last = text


async def _each_status(
    client: ControlClient,
    agent: str | None,
    interval: float,
    step: Callable[[StatusList], T | None],
) -> T:
    """Ask for the status every ``interval`` seconds until ``step`` returns something."""
    while True:
        done = step(await client.status(agent))
        if done is not None:
            return done
        await anyio.sleep(interval)  # polling the daemon's status, the CLI's only view


def converged(item: AgentStatus, removed: Collection[str]) -> bool:
    """Whether an agent is where the apply takes it: ready and synced, or drained by an operator.

    An agent the apply removes has not converged while the daemon still lists it.
    """
    if item.name in removed:
        return False  # still draining away
    return bool(item.sync == "override" or (item.ready and item.sync == "synced"))


def waiting_line(waiting: Sequence[AgentStatus], removed: Collection[str]) -> str:
    """``waiting for 2 agent(s): a starting; b draining away`` (with each one's message)."""
    line = "; ".join(
        f"{item.name} {'draining away' if item.name in removed else item.state}"
        + (f" ({item.message})" if item.message else "")
        for item in waiting
    )
    return f"waiting for {len(waiting)} agent(s): {line}"


def converged_line(items: Sequence[AgentStatus]) -> str:
    """``converged: 3 agent(s) ready, 1 drained by an operator``."""
    drained = sum(1 for item in items if item.sync == "override")
    ready = len(items) - drained
    return f"converged: {ready} agent(s) ready" + (
        f", {drained} drained by an operator" if drained else ""
    )


def wait_converged(socket_path: str | None, timeout: float, removed: Collection[str]) -> None:
    """Print what is still converging whenever it changes, until nothing is (or timeout)."""
    progress = _OnChange()

    def step(status: StatusList) -> list[AgentStatus] | None:
        waiting = [item for item in status.items if not converged(item, removed)]
        if not waiting:
            return status.items
        progress.echo(waiting_line(waiting, removed))
        return None

    async def call(client: ControlClient) -> list[AgentStatus] | None:
        with anyio.move_on_after(timeout):
            return await _each_status(client, None, 0.2, step)
        return None

    items = _control(socket_path, call)
    if items is None:
        fail(f"not converged within {timeout:g}s (see lksup status)")
    click.echo(converged_line(items))


def wait_drained(socket_path: str | None, names: Collection[str], timeout: float) -> None:
    """Print how many jobs the agents ``names`` still run whenever it changes, until none."""
    from lksup.fleet.durations import format_duration

    progress = _OnChange()

    def step(status: StatusList) -> bool | None:
        left = sum(item.jobs for item in status.items if item.name in names)
        if left == 0:
            return True
        progress.echo(f"  {left} job(s) left")
        return None

    async def call(client: ControlClient) -> bool:
        with anyio.move_on_after(timeout):
            return await _each_status(client, None, 0.5, step)
        return False

    if not _control(socket_path, call):
        fail(f"jobs were still running after {format_duration(timeout)}")
    click.echo("drained")


def stream_status(socket_path: str | None, agent: str | None, output: str) -> None:
    """``status -w -o json|yaml``: the status document each time it changes.

    Checked every second; JSON as one line each, YAML as ``---``-separated documents; Ctrl+C
    ends it.
    """
    documents = _OnChange()

    def step(status: StatusList) -> None:
        document = status.model_dump(mode="json", by_alias=True)
        if output == "json":
            documents.echo(json.dumps(document, separators=(",", ":")))
        else:
            documents.echo("---\n" + yaml.safe_dump(document, sort_keys=False), nl=False)

    async def call(client: ControlClient) -> Any:
        return await _each_status(client, agent, 1.0, step)

    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        _control(socket_path, call)


def watch_status(
    socket_path: str | None, agent: str | None, *, wide: bool, show_jobs: bool
) -> None:
    """``status -w``: the table redrawn every 2 seconds (appended when not a terminal)."""

    def step(status: StatusList) -> None:
        now = datetime.now(UTC)
        table = present.status_view(
            status, wide=wide, show_jobs=show_jobs, show_templates=False, now=now
        )
        if sys.stdout.isatty():
            click.clear()
        click.echo(table + ("\n" if not sys.stdout.isatty() else ""))

    async def call(client: ControlClient) -> Any:
        return await _each_status(client, agent, 2.0, step)

    with contextlib.suppress(KeyboardInterrupt):
        _control(socket_path, call)
