"""An unchanged livekit-agents agent in a fleet (``runtime: livekit-agents``), run by `lksup run`
against the real livekit-server and met by a real participant."""

from __future__ import annotations

import functools
import itertools
import json
import signal
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from livekit import api, rtc

from tests.conftest import eventually
from tests.interop import livekit_server as real
from tests.sdkruntime.daemon import POLL, Daemon, Record, running_daemon

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.interop]

AGENT = """
    import logging
    import os

    from livekit import api
    from livekit.agents import AutoSubscribe, JobContext, JobProcess

    log = logging.getLogger("sdk-greeter")

    def prewarm(proc: JobProcess) -> None:
        proc.userdata["greeting"] = "warm"

    async def entrypoint(ctx: JobContext) -> None:
        room = ctx.job.room.name

        async def on_shutdown(reason: str) -> None:
            log.info("shutdown callback: room=%s reason=%s", room, reason)

        ctx.add_shutdown_callback(on_shutdown)
        log.info(
            "job started: room=%s worker=%s userdata=%s preload=%s secret=%s",
            room,
            ctx.worker_id,
            ctx.proc.userdata.get("greeting"),
            os.environ.get("LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE"),
            os.environ["LIVEKIT_API_SECRET"],
        )
        await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
        log.info("connected: room=%s as %s", room, ctx.agent.identity)
        if room.startswith("sim-"):
            ctx.shutdown("simulated job done")
            return
        if room.startswith("hold-"):
            return  # the job goes on until it is shut down
        participant = await ctx.wait_for_participant()
        listed = await ctx.api.room.list_rooms(api.ListRoomsRequest(names=[room]))
        log.info("saw participant=%s rooms=%s", participant.identity, [r.name for r in listed.rooms])
"""

FLEET = """
apiVersion: lksup/v1
kind: Fleet
metadata:
  name: sdk
livekit:
  url: SERVER_URL
  api_key: {file: api-key.txt}
  api_secret: {file: api-secret.txt}
supervisor:
  drain_timeout: SUPERVISOR_DRAIN
defaults:
  runtime: livekit-agents
  working_dir: FOLDER
  prewarm: sdk_greeter:prewarm
  num_idle_processes: 1
  load: jobs
  max_jobs: 4
  initialize_process_timeout: 30s
  shutdown_process_timeout: 20s
agents:
"""

GREETER = """
  greeter:
    entrypoint: sdk_greeter:entrypoint
    request:
      identity: "greeter-{job_id}"
      name: "Greeter of {room}"
      attributes: {team: support, tier: gold}
"""

HOLDERS = """
  alpha:
    entrypoint: sdk_greeter:entrypoint
    drain_timeout: 2s
  beta:
    entrypoint: sdk_greeter:entrypoint
    drain_timeout: 1m
"""

USER = "test-user"
_rooms = itertools.count(1)
START_TIMEOUT = 60  # two SDK processes warm up per agent before it reports ready


def write_fleet(
    folder: Path, server: real.RealServer, agents: str, *, supervisor_drain: str = "30s"
) -> Path:
    """The agent module, the server's key files and a fleet of ``agents`` (YAML under
    ``agents:``) in ``folder``."""
    (folder / "sdk_greeter.py").write_text(textwrap.dedent(AGENT))
    (folder / "api-key.txt").write_text(real.API_KEY)
    (folder / "api-secret.txt").write_text(real.API_SECRET)
    header = (
        FLEET.replace("SUPERVISOR_DRAIN", supervisor_drain)
        .replace("FOLDER", str(folder))
        .replace("SERVER_URL", server.url)
    )
    fleet = folder / "fleet.yaml"
    fleet.write_text(header.lstrip() + agents.lstrip("\n"))
    return fleet


def job_log(record: Record, message: str) -> bool:
    return str(record.get("msg", "")).startswith(message)


@asynccontextmanager
async def lkapi(server: real.RealServer) -> AsyncIterator[api.LiveKitAPI]:
    client = api.LiveKitAPI(server.http_url, real.API_KEY, real.API_SECRET)
    try:
        yield client
    finally:
        with anyio.CancelScope(shield=True):
            await client.aclose()


async def dispatch(
    daemon: Daemon, client: api.LiveKitAPI, agent: str, prefix: str
) -> tuple[str, str]:
    """A dispatch of ``agent`` into a fresh room, retried until the job has started there.

    The real server may drop a dispatch made right after a registration (its agent-name cache
    is refreshed asynchronously): the job's own log line is the handshake. Returns the room
    and the dispatch's id.
    """
    for _ in range(10):
        room = f"{prefix}-{next(_rooms)}"
        created = await client.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name=agent, room=room)
        )
        marker = f"job started: room={room} "
        with anyio.move_on_after(5):
            await daemon.wait_record(functools.partial(job_log, message=marker), timeout=10)
            return room, created.id
    raise AssertionError(f"{agent} never started a job:\n{daemon.text()[-4000:]}")


@asynccontextmanager
async def participant(server: real.RealServer, room: str) -> AsyncIterator[rtc.Room]:
    grants = api.VideoGrants(room_join=True, room=room)
    token = (
        api.AccessToken(real.API_KEY, real.API_SECRET)
        .with_identity(USER)
        .with_grants(grants)
        .to_jwt()
    )
    joined = rtc.Room()
    await joined.connect(server.url, token)
    try:
        yield joined
    finally:
        with anyio.CancelScope(shield=True):
            await joined.disconnect()


async def agent_participant(room: rtc.Room, timeout: float) -> rtc.RemoteParticipant:
    """The agent's participant, once it has joined with its attributes."""

    def joined() -> rtc.RemoteParticipant | None:  # the rtc SDK's room state, polled
        for p in room.remote_participants.values():
            if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT and p.attributes:
                return p
        return None

    return await eventually(joined, timeout=timeout)


async def test_an_sdk_agent_serves_a_room_and_ends_with_it(tmp_path: Path) -> None:
    """Dispatch, participant, attributes and name from the fleet, ctx.api, room deletion as the
    end of the job, simulate; the API secret is in the job's environment, never in the log."""
    async with (
        real.real_livekit_server(tmp_path) as server,
        running_daemon() as daemon,
        lkapi(server) as client,
    ):
        fleet = write_fleet(tmp_path, server, GREETER)
        code, out = await daemon.cli("apply", str(fleet), "--wait", "--timeout", "60s")
        assert code == 0, out + daemon.text()[-4000:]
        greeter = await daemon.wait_status("greeter", lambda s: s.idle >= 1, timeout=30)
        assert greeter.sdk_version == "1.8.9"  # what its warm process reported

        room, _ = await dispatch(daemon, client, "greeter", "support")
        started = next(r for r in daemon.records() if job_log(r, f"job started: room={room} "))
        assert started["msg"] == (
            f"job started: room={room} worker={greeter.worker_id} userdata=warm preload=0 "
            "secret=****"
        )
        assert started["agent"] == "greeter"
        async with participant(server, room) as joined:
            agent = await agent_participant(joined, timeout=20)
            job_id = agent.identity.removeprefix("greeter-")
            assert (agent.identity, agent.name) == (f"greeter-{job_id}", f"Greeter of {room}")
            assert agent.attributes == {
                "team": "support",
                "tier": "gold",
                "lk.agent.name": "greeter",  # lksup's, as the SDK's worker sets it
                "lk.agent_name": "greeter",  # the server's
            }
            await daemon.wait_message(f"saw participant={USER} rooms=['{room}']", timeout=20)
            jobs = (await daemon.status())["greeter"].jobs_detail
            assert [(j.job_id, j.room) for j in jobs] == [(job_id, room)]

            await client.room.delete_room(api.DeleteRoomRequest(room=room))
            ended = await daemon.wait_prefix(f"shutdown callback: room={room} reason=", 20)
        # the rtc room sees its deletion first; the server's termination may race it
        assert ended["msg"] in (
            f"shutdown callback: room={room} reason=room disconnected",
            f"shutdown callback: room={room} reason=terminated by the server",
        )
        await daemon.wait_status("greeter", lambda s: s.jobs == 0, timeout=20)

        # deleting the dispatch: the server terminates the job, lksup shuts its process down
        held, dispatch_id = await dispatch(daemon, client, "greeter", "hold")
        await daemon.wait_prefix(f"connected: room={held} ", timeout=20)
        await client.agent_dispatch.delete_dispatch(dispatch_id, held)
        await daemon.wait_message(
            f"shutdown callback: room={held} reason=terminated by the server", timeout=20
        )
        await daemon.wait_status("greeter", lambda s: s.jobs == 0, timeout=20)

        code, out = await daemon.cli("simulate", "greeter", "--room", "sim-1")
        assert code == 0, out
        await daemon.wait_message(
            "shutdown callback: room=sim-1 reason=simulated job done", timeout=30
        )
        await daemon.wait_status("greeter", lambda s: s.jobs == 0, timeout=20)

        text = daemon.text()
        assert real.API_SECRET not in text
        assert "Traceback" not in text, text[-4000:]


async def test_drain_and_sigterm_reach_the_sdk_shutdown_callbacks(tmp_path: Path) -> None:
    """`lksup drain alpha` ends alpha's job at its drain deadline with the drain's reason while
    beta's goes on; SIGTERM of the daemon ends beta's the same way, and the daemon exits."""
    async with (
        real.real_livekit_server(tmp_path) as server,
        running_daemon() as daemon,
        lkapi(server) as client,
    ):
        fleet = write_fleet(tmp_path, server, HOLDERS, supervisor_drain="3s")
        code, out = await daemon.cli("apply", str(fleet), "--wait", "--timeout", "60s")
        assert code == 0, out + daemon.text()[-4000:]
        alpha_room, _ = await dispatch(daemon, client, "alpha", "hold-alpha")
        beta_room, _ = await dispatch(daemon, client, "beta", "hold-beta")
        for room in (alpha_room, beta_room):
            await daemon.wait_prefix(f"connected: room={room} ", timeout=20)

        code, out = await daemon.cli("drain", "alpha")
        assert code == 0, out
        await daemon.wait_message(
            f"shutdown callback: room={alpha_room} reason=drain deadline reached", timeout=20
        )
        now = await daemon.status()
        assert (now["beta"].state, now["beta"].jobs) == ("running", 1)

        daemon.process.send_signal(signal.SIGTERM)
        await daemon.wait_message(
            f"shutdown callback: room={beta_room} reason=supervisor stopping", timeout=20
        )
        with anyio.fail_after(30):
            code = await daemon.process.wait()
        assert code == 1, daemon.text()[-4000:]  # beta's job did not end within the drain
        assert real.API_SECRET not in daemon.text()


OUTCOMES = """
  outcomes:
    entrypoint: sdk_outcomes:entrypoint
"""

OUTCOME_AGENT = """
    import logging

    from livekit.agents import JobContext

    log = logging.getLogger("sdk-outcomes")

    async def entrypoint(ctx: JobContext) -> None:
        room = ctx.job.room.name
        log.info("job started: room=%s ", room)
        await ctx.connect()
        if room.startswith("raise-"):
            raise ValueError(f"nothing to say in {room}")
        if room.startswith("hold-"):
            return  # the job goes on until its room ends
        ctx.shutdown("said goodbye")
"""


async def job_ended(server: real.RealServer, room: str) -> tuple[str, str]:
    """The server's own record of the end of the room's job: (status, error).

    The server logs it when the worker's final status arrives, or when it ends the job itself
    (for instance because the agent left the room first). The log is the only place the real
    server exposes it: its dispatch list keeps showing the job as running.
    """

    def logged() -> tuple[str, str] | None:  # the server's log, read again
        for line in server.log.read_text().splitlines():
            if "\tjob ended\t" in line:
                fields = json.loads(line.rsplit("\t", 1)[1])
                if fields.get("jobID") in jobs_of(server, room):
                    return fields["status"], fields.get("error", "")
        return None

    return await eventually(logged, timeout=20, interval=POLL)


def jobs_of(server: real.RealServer, room: str) -> set[str]:
    found = set()
    for line in server.log.read_text().splitlines():
        if "\tassigned job to worker\t" in line:
            fields = json.loads(line.rsplit("\t", 1)[1])
            if fields.get("room") == room:
                found.add(fields["jobID"])
    return found


@pytest.mark.parametrize("attempt", range(3))
async def test_the_server_records_each_jobs_own_outcome(tmp_path: Path, attempt: int) -> None:
    """A raise fails the job with its message and a shutdown is a success, on the server too:
    the outcome is sent before the agent leaves the room (the server fails a job whose agent
    left before its status arrived, as "agent worker left the room")."""
    async with (
        real.real_livekit_server(tmp_path) as server,
        running_daemon() as daemon,
        lkapi(server) as client,
    ):
        (tmp_path / "sdk_outcomes.py").write_text(textwrap.dedent(OUTCOME_AGENT))
        fleet = write_fleet(tmp_path, server, OUTCOMES)
        code, out = await daemon.cli("apply", str(fleet), "--wait", "--timeout", "60s")
        assert code == 0, out + daemon.text()[-4000:]
        failed, _ = await dispatch(daemon, client, "outcomes", "raise")
        succeeded, _ = await dispatch(daemon, client, "outcomes", "done")
        assert await job_ended(server, failed) == (
            "JS_FAILED",
            f"ValueError: nothing to say in {failed}",
        )
        assert await job_ended(server, succeeded) == ("JS_SUCCESS", "")


THREADED = """
  threaded:
    entrypoint: sdk_outcomes:entrypoint
    job_executor: thread
    max_jobs_per_process: 3
"""


async def test_sdk_jobs_share_a_job_host_and_a_raising_one_fails_only_itself(
    tmp_path: Path,
) -> None:
    """`job_executor: thread`: three SDK jobs run at once in one host process; the raising one
    fails at the server with its message while the others go on, and end when their rooms do."""
    async with (
        real.real_livekit_server(tmp_path) as server,
        running_daemon() as daemon,
        lkapi(server) as client,
    ):
        (tmp_path / "sdk_outcomes.py").write_text(textwrap.dedent(OUTCOME_AGENT))
        fleet = write_fleet(tmp_path, server, THREADED)
        code, out = await daemon.cli("apply", str(fleet), "--wait", "--timeout", "60s")
        assert code == 0, out + daemon.text()[-4000:]
        first, _ = await dispatch(daemon, client, "threaded", "hold-a")
        second, _ = await dispatch(daemon, client, "threaded", "hold-b")
        failed, _ = await dispatch(daemon, client, "threaded", "raise")
        assert await job_ended(server, failed) == (
            "JS_FAILED",
            f"ValueError: nothing to say in {failed}",
        )
        now = await daemon.wait_status("threaded", lambda s: s.jobs == 2, timeout=20)
        hosts = [j.pid for j in now.jobs_detail if j.room in (first, second)]
        assert len(hosts) == 2, now.jobs_detail
        assert hosts[0] is not None
        assert hosts[0] == hosts[1], now.jobs_detail  # one host process
        for room in (first, second):
            await client.room.delete_room(api.DeleteRoomRequest(room=room))
        await daemon.wait_status("threaded", lambda s: s.jobs == 0, timeout=30)
        for room in (first, second):
            assert await job_ended(server, room) == ("JS_SUCCESS", "")
