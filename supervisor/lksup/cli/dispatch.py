"""``lksup dispatch``: explicit agent dispatches, against any LiveKit server."""

from __future__ import annotations

import asyncio
import difflib
from typing import Any

import anyio
import click

from lksup.cli.common import (
    DURATION,
    EXIT_USAGE,
    _emit,
    _output_option,
    _socket,
    _socket_option,
    complete_agents,
    fail,
    main,
)
from lksup.fleet.schema import API_VERSION


@main.command()
@click.argument("agent", required=False, metavar="[AGENT]", shell_complete=complete_agents)
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
@click.option(
    "--wait",
    is_flag=True,
    help="Wait until a worker took the job and say which (exit 1 when none did in time, "
    "with the likely reason).",
)
@click.option(
    "--timeout",
    type=DURATION,
    default=30.0,
    show_default=True,
    metavar="DURATION",
    help="How long --wait waits (a real server's dispatch list can lag the job by seconds).",
)
@_socket_option
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
    wait: bool,
    timeout: float,
    socket_path: str | None,
    output: str,
) -> None:
    """Create, list or delete explicit agent dispatches (LiveKit's AgentDispatchService).

    Works against any LiveKit server, including `lksup dev-server`. The job goes to a worker
    registered under AGENT; there is no queue: with no such worker, nothing happens, which
    --wait tells (it asks the local supervisor, when one runs, which agents it has).

    \b
    Examples:
      lksup dispatch customer-service --room support-42 --metadata '{"lang": "fr"}'
      lksup dispatch customer-service --room support-43 --wait     # which worker took it
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
        if not wait:
            created = asyncio.run(
                api.create_dispatch(settings, agent_name=agent, room=room, metadata=metadata)
            )
            _print_dispatches([created], output, verb="created")
            return
        here = _LocalJobs(_socket(socket_path), agent)
        created, taken = asyncio.run(
            _create_and_wait(api, settings, here, agent, room, metadata, timeout)
        )
        if isinstance(taken, dict):  # this host's supervisor ran it: what it says of the job
            _print_dispatches([created], output, verb="created", local=taken)
            if output == "text":
                click.echo(
                    f"job {taken['jobId']} assigned to worker {taken['workerId']} "
                    f"(agent {agent!r} on this host): {taken['status']}"
                )
            return
        _print_dispatches([taken or created], output, verb="created")
        if taken is _GONE:
            fail(
                f"dispatch {created.id} left room {room!r} before a worker showed on it: the "
                f"room closed (a job that ends at once closes it) or the dispatch was deleted"
            )
        if taken is None:
            fail(
                f"no worker took the job of dispatch {created.id} in {timeout:g} s: "
                + _why_untaken(agent, socket_path)
            )
        if output == "text":
            for job in taken.state.jobs:
                click.echo(
                    f"job {job.id} assigned to worker {job.state.worker_id} "
                    f"({api.job_to_dict(job)['status']})"
                )
    except api.DispatchError as exc:
        fail(str(exc))


#: ``_taken``: the dispatch left its room's list before a worker showed on it.
_GONE = object()
#: How long ``dispatch --wait`` still listens to this host's supervisor once the server's list
#: answered (the dispatch is gone, or its job is this host's worker's).
_LOCAL_GRACE = 2.0

#: A job event of this host's supervisor -> what ``dispatch --wait`` says of the job.
_JOB_STATUS = {
    "JobAssigned": "assigned",
    "JobStarted": "running",
    "JobSucceeded": "succeeded",
    "JobFailed": "failed",
    "MemoryKill": "failed",
}


class _LocalJobs:
    """This host's supervisor's job events of one agent, for ``dispatch --wait``.

    A job that ends at once closes its room, and the dispatch leaves the server's list before
    a poll of it sees a worker; when the agent runs here, its supervisor saw the job anyway.
    """

    def __init__(self, path: Any, agent: str) -> None:
        self.path, self.agent = path, agent
        self.after: int | None = None  # None: no supervisor here runs the agent
        self.worker_id: str | None = None  # the agent's worker here, when registered

    def ours(self, taken: Any) -> bool:
        """Whether a dispatch the server's list shows taken went to this host's worker."""
        jobs = getattr(getattr(taken, "state", None), "jobs", [])
        return self.worker_id is not None and any(
            job.state.worker_id == self.worker_id for job in jobs
        )

    async def mark(self) -> None:
        """Remember where the events are now (before the dispatch: nothing slips past)."""
        from lksup.control.api import JournalQuery
        from lksup.control.client import ControlClient
        from lksup.control.errors import ControlError, DaemonUnreachable

        try:
            async with ControlClient(self.path, timeout=5.0) as client:
                found = await client.journal("events", JournalQuery(agent=self.agent, tail=0))
                (status,) = (await client.status(self.agent)).items
        except (DaemonUnreachable, ControlError):
            return  # none, or it has no such agent: the server's list alone says
        self.after, self.worker_id = int(found["last"]), status.worker_id

    async def job_in(self, room: str) -> dict[str, Any] | None:
        """The first job of the agent in ``room`` since ``mark``; None if none runs here."""
        from lksup.control.api import MAX_WAIT, JournalQuery
        from lksup.control.client import ControlClient
        from lksup.control.errors import ControlError, DaemonUnreachable

        after = self.after
        if after is None:
            await anyio.sleep_forever()  # the server's list decides
            return None
        try:
            async with ControlClient(self.path) as client:
                while True:
                    query = JournalQuery(after=after, wait=MAX_WAIT, agent=self.agent)
                    found = await client.journal("events", query)
                    for item in found["items"]:
                        if item.get("room") == room and item["reason"] in _JOB_STATUS:
                            return {
                                "jobId": item["job_id"],
                                "workerId": item.get("worker_id"),
                                "status": _JOB_STATUS[item["reason"]],
                            }
                    after = int(found["last"])
        except (DaemonUnreachable, ControlError):
            await anyio.sleep_forever()  # it went away: the server's list decides
            return None


async def _create_and_wait(
    api: Any,
    settings: Any,
    here: _LocalJobs,
    agent: str,
    room: str,
    metadata: str,
    timeout: float,
) -> tuple[Any, Any]:
    """Create the dispatch, then learn who took its job.

    Whichever says first: the server's dispatch list, or this host's supervisor (when it runs
    the agent). When the list names this host's worker, or says the dispatch is gone, the
    supervisor here gets ``_LOCAL_GRACE`` more to say it (how the job stands, too): which
    source answers first must not change what is printed.
    """
    await here.mark()
    created = await api.create_dispatch(settings, agent_name=agent, room=room, metadata=metadata)
    result: Any = None

    async with anyio.create_task_group() as tg:

        async def from_server() -> None:
            nonlocal result
            found = await _taken(api, settings, created, timeout)
            if here.after is not None and (found is _GONE or here.ours(found)):
                await anyio.sleep(_LOCAL_GRACE)  # the supervisor here says more, and first
            result = found
            tg.cancel_scope.cancel()

        async def from_here() -> None:
            nonlocal result
            result = await here.job_in(room)
            tg.cancel_scope.cancel()

        tg.start_soon(from_server)
        tg.start_soon(from_here)
    return created, result


async def _taken(api: Any, settings: Any, created: Any, timeout: float) -> Any:
    """The dispatch once a worker has its job; None when none did in time.

    Polled (the API has no watch). ``_GONE`` when the dispatch left the room's list first.
    """
    listed = False
    with anyio.move_on_after(timeout):
        while True:
            listing = await api.list_dispatches(settings, room=created.room)
            mine = [d for d in listing if d.id == created.id]
            if mine and any(job.state.worker_id for job in mine[0].state.jobs):
                return mine[0]
            if listed and not mine:
                return _GONE
            listed = listed or bool(mine)
            await anyio.sleep(0.2)  # the dispatch API's polling interval
    return None


def _why_untaken(agent: str, socket_path: str | None) -> str:
    """The likely reason no worker took a job of ``agent``, from the local supervisor if any."""
    from lksup.control.client import ControlClient
    from lksup.control.errors import ControlError, DaemonUnreachable

    async def names() -> list[str]:
        async with ControlClient(_socket(socket_path)) as client:
            return [item.name for item in (await client.status(None)).items]

    generic = f"no worker registered for agent {agent!r}, or every worker of it is full or draining"
    try:
        local = anyio.run(names)
    except (DaemonUnreachable, ControlError, SystemExit):
        return generic
    if agent in local:
        return (
            f"this host's supervisor runs {agent!r}, but no worker of it took the job: is it "
            f"registered, ready and not full? (lksup status {agent})"
        )
    close = difflib.get_close_matches(agent, local, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"{generic} (this host's supervisor has no agent {agent!r}{hint})"


def _print_dispatches(
    dispatches: list[Any],
    output: str,
    *,
    verb: str | None = None,
    local: dict[str, Any] | None = None,
) -> None:
    """``local``: the job as this host's supervisor saw it (``dispatch --wait``)."""
    from lksup.transport.dispatch import dispatch_to_dict

    if output == "json":
        items = [dispatch_to_dict(d) for d in dispatches]
        if verb is None:
            _emit({"apiVersion": API_VERSION, "kind": "AgentDispatchList", "items": items})
        else:
            extra = {"localJob": local} if local is not None else {}
            _emit({"apiVersion": API_VERSION, "kind": "AgentDispatch", **items[0], **extra})
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
