"""What happened in the fleet: ``events`` and ``logs``, read from the daemon's journal.

Both read bounded buffers in the daemon after a sequence number; ``-w``/``-f`` keep reading with
long polls (the daemon answers as soon as there is something new, or after up to 5 s), so new
items are printed as they come without the control API streaming.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from lksup.cli import present
from lksup.cli.common import (
    DURATION,
    F,
    _control,
    _emit,
    _output_option,
    _socket_option,
    complete_agents,
    main,
)

if TYPE_CHECKING:
    from lksup.control.api import JournalQuery
    from lksup.control.client import ControlClient


def _filters(what: str) -> Callable[[F], F]:
    """``[AGENT]``, ``--job ID`` and ``--since DURATION``: which of the journal's ``what``."""

    def decorate(func: F) -> F:
        func = click.option(
            "--since", type=DURATION, metavar="DURATION", help="Only the last DURATION."
        )(func)
        func = click.option("--job", "job_id", metavar="ID", help=f"Only the {what} of this job.")(
            func
        )
        return click.argument(
            "agent", required=False, metavar="[AGENT]", shell_complete=complete_agents
        )(func)

    return decorate


def _journal_query(agent: str | None, job_id: str | None, since: float | None) -> JournalQuery:
    from lksup.control.api import JournalQuery

    return JournalQuery(
        agent=agent, job=job_id, since=time.time() - since if since is not None else None
    )


def _follow(
    socket_path: str | None,
    what: str,
    query: JournalQuery,
    follow: bool,
    emit: Callable[[list[dict[str, Any]]], None],
) -> None:
    """Read ``what`` (events or logs) from the daemon.

    With ``follow``, keep reading (long polls of up to 5 s) until Ctrl+C or a closed pipe.
    """
    from lksup.control.api import MAX_WAIT

    async def call(client: ControlClient) -> None:
        result = await client.journal(what, query)
        emit(result["items"])
        after = result["last"]
        while follow:
            page = dataclasses.replace(query, after=after, wait=MAX_WAIT, tail=None)
            result = await client.journal(what, page)
            emit(result["items"])
            after = result["last"]

    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        _control(socket_path, call)


@main.command()
@_filters("events")
@click.option("-w", "--watch", is_flag=True, help="Then print new events as they happen.")
@_socket_option
@_output_option(["text", "json"], "text")
def events(
    agent: str | None,
    job_id: str | None,
    since: float | None,
    watch: bool,
    socket_path: str | None,
    output: str,
) -> None:
    """Print what happened in the fleet, oldest first.

    Applies, agent state changes and registrations, restarts, drains, jobs started, succeeded
    and failed (memory kills apart). The daemon keeps the last 2000 events. Warnings are what
    needs a look: failed jobs, agents in backoff, re-applies that changed nothing. -o json
    prints an EventList, or with -w one event per line.

    \b
    Examples:
      lksup events
      lksup events sales --since 10m
      lksup events -w -o json | jq -c 'select(.type == "Warning")'
    """

    def emit(items: list[dict[str, Any]]) -> None:
        if output == "json" and not watch:
            _emit({"apiVersion": "lksup/v1", "kind": "EventList", "items": items})
            return
        for item in items:
            if output == "json":
                click.echo(json.dumps(item, separators=(",", ":")))
            else:
                click.echo(present.event_line(item))
        sys.stdout.flush()

    _follow(socket_path, "events", _journal_query(agent, job_id, since), watch, emit)


@main.command()
@_filters("records")
@click.option("--tail", type=click.IntRange(min=0), metavar="N", help="Only the last N records.")
@click.option("-f", "--follow", is_flag=True, help="Then print new records as they come.")
@_socket_option
@_output_option(["text", "json"], "text")
def logs(
    agent: str | None,
    job_id: str | None,
    since: float | None,
    tail: int | None,
    follow: bool,
    socket_path: str | None,
    output: str,
) -> None:
    """Print the supervisor's recent log records: an agent's, a job's, or all of them.

    An agent's records include its job processes'. The daemon keeps the last 2000 records of
    each agent and as many of its own; -o json prints them as the daemon's JSON log lines (a
    job's own fields and its traceback included). For older records, read the daemon's stdout
    (journald, the container runtime).

    \b
    Examples:
      lksup logs sales --tail 50
      lksup logs --job AJ_x8Jw2 -o json | jq .msg
      lksup logs customer-service -f --since 5m
    """
    query = dataclasses.replace(_journal_query(agent, job_id, since), tail=tail)

    def emit(items: list[dict[str, Any]]) -> None:
        for item in items:
            if output == "json":
                click.echo(json.dumps(item, ensure_ascii=False, separators=(",", ":")))
                continue
            for line in present.log_lines(item):
                click.echo(line)
        sys.stdout.flush()

    _follow(socket_path, "logs", query, follow, emit)
