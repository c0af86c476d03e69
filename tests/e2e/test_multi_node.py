"""lksup on two hosts of one LiveKit deployment: two real livekit-server nodes sharing one Redis
(LiveKit's distributed mode), and one `lksup run` per host whose fleet points at its own node.

Both daemons register the same agent. Where its jobs go is decided by LiveKit (v1.13.5 and
psrpc v0.7.2, as read in their source):

- a room lives on one node: the one ``CreateRoom`` names (``node_id``), else a random
  available one (``node_selector`` kind ``any``, sort ``random``:
  ``pkg/service/roomallocator.go: SelectRoomNode``, ``pkg/routing/selector``). The test
  creates each room on a chosen node, then dispatches the agent into it (``CreateDispatch``);
- the job does not stay on the room's node: that node sends a ``JobRequest`` over psrpc
  (``pkg/agent/client.go: LaunchJob``) and every node with a worker of that ``agent_name``
  claims it with the affinity ``sum of max(0, agents.target_load - load)`` over its workers
  that are available (``pkg/service/agentservice.go: JobRequestAffinity``). psrpc gives the
  job to the highest claim received within 200 ms of the first, and never to a claim of 0
  (``pkg/client/rpc.go: selectServer``, ``DefaultAffinityShortCircuit``): a full or drained
  worker gets nothing, and equal claims go to the first one in;
- lksup reports ``load: jobs`` (running jobs / ``max_jobs``) to its node as soon as it takes a
  job, so a host running more jobs claims less: dispatches made one at a time, each awaited
  until a daemon runs it, go to the host with fewer running jobs, and alternate between the
  hosts while the jobs (held ``HOLD`` seconds) run. ``max_jobs: 20`` keeps each job's share
  small (0.05), far below the threshold at which a host reports itself full.

Which node made an assignment is a server-side fact: a node logs each job it gives to one of
its own workers, with the room and the worker's id. A node is not told when a dispatch finds
no worker (its agent-name cache is refreshed asynchronously after a registration), so each
dispatch is awaited on the daemons' events and made again in a new room if no host took it.
"""

from __future__ import annotations

import itertools
import json
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from livekit import api

from lksup.control.api import AgentStatus
from lksup.control.client import ControlClient
from tests.conftest import eventually
from tests.e2e.test_daemon import Daemon, LiveKit, daemon
from tests.interop import livekit_server as real
from tests.interop.redis_server import real_redis_server

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.interop]

AGENT = "helpdesk"
HOLD = 10  # seconds each job runs (the support agent's HOLD_SECONDS), then ends on its own
POLL = 0.1  # how often a node's log is read again (it has no other channel)

FLEET = """\
apiVersion: lksup/v1
kind: Fleet
metadata: {name: multi-node}
livekit:
  url: "@URL@"
  api_key: {env: LK_NODE_KEY}
  api_secret: {env: LK_NODE_SECRET}
supervisor:
  drain_timeout: 1m
agents:
  helpdesk:
    entrypoint: fleets.agents.support:entrypoint
    prewarm: fleets.agents.support:prewarm
    load: jobs
    max_jobs: 20
    num_idle_processes: 2
    initialize_process_timeout: 30s
    env: {HOLD_SECONDS: "@HOLD@"}
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Host:
    """One host: its LiveKit node and the lksup daemon connected to it."""

    name: str
    node: real.RealServer
    daemon: Daemon

    async def status(self) -> AgentStatus:
        async with ControlClient(self.daemon.socket) as client:
            return (await client.status(AGENT)).items[0]

    async def rooms(self) -> set[str]:
        """Rooms of the jobs this host's daemon ran or runs (its status, ended ones too)."""
        return {job.room for job in (await self.status()).jobs_detail}

    async def running(self) -> set[str]:
        return {job.room for job in (await self.status()).jobs_detail if job.ended_at is None}

    def log(self) -> str:
        return self.daemon.log.read_text(errors="replace")

    async def wait(
        self, what: str, timeout: float, check: Callable[[AgentStatus], bool]
    ) -> AgentStatus:
        """The agent's status once ``check(status)`` holds, read again at each of the
        daemon's events; ``what`` names it in a failure."""
        last: AgentStatus | None = None

        async def read() -> AgentStatus:
            nonlocal last
            last = await self.status()
            return last

        try:
            return await self.daemon.until_read(read, check, timeout)
        except TimeoutError:
            raise AssertionError(
                f"host {self.name}: not {what} after {timeout}s; last status: {last}\n"
                + self.log()[-3000:]
            ) from None


@asynccontextmanager
async def lkapi(node: real.RealServer) -> AsyncIterator[api.LiveKitAPI]:
    client = api.LiveKitAPI(node.http_url, real.API_KEY, real.API_SECRET)
    try:
        yield client
    finally:
        with anyio.CancelScope(shield=True):
            await client.aclose()


async def assigned_by(node: real.RealServer, room: str) -> str:
    """The worker ``node`` gave the job of ``room`` to, from the node's own log.

    A node logs the assignments it made, to its own workers only, just after it sent them.
    """

    def logged() -> str | None:
        for line in node.log.read_text(errors="replace").splitlines():
            if "\tassigned job to worker\t" in line:
                fields = json.loads(line.rsplit("\t", 1)[1])
                if fields.get("room") == room:
                    return str(fields["workerID"])
        return None

    return await eventually(logged, timeout=20, interval=POLL)


_rooms = itertools.count(1)


async def taker(hosts: Sequence[Host], room: str, timeout: float) -> Host | None:
    """The host whose daemon records an event of the job in ``room`` within ``timeout``."""
    took: list[Host] = []

    async def watch(host: Host, scope: anyio.CancelScope) -> None:
        def about_room(event: dict[str, Any]) -> bool:
            return event["agent"] == AGENT and f"(room {room})" in event["message"]

        await host.daemon.follow("events", about_room, timeout=timeout + 10)
        took.append(host)
        scope.cancel()

    with anyio.move_on_after(timeout):
        async with anyio.create_task_group() as tg:
            for host in hosts:
                tg.start_soon(watch, host, tg.cancel_scope)
    return took[0] if took else None


async def land(room_node: real.RealServer, hosts: Sequence[Host], prefix: str) -> tuple[Host, str]:
    """Dispatch the agent into a new room on ``room_node``; the host whose daemon took the job.

    Dispatched again in another room when no host took it within 10 s (a lost dispatch: see
    the module docstring); ``hosts`` are the daemons that may take it.
    """
    for _ in range(5):
        room = f"{prefix}-{next(_rooms)}"
        async with lkapi(room_node) as client:
            await client.room.create_room(
                api.CreateRoomRequest(name=room, node_id=room_node.node_id())
            )
            await client.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name=AGENT, room=room)
            )
        host = await taker(hosts, room, timeout=10)
        if host is not None:
            return host, room
    raise AssertionError(
        f"no host took a job of {prefix}:\n" + "\n".join(h.log()[-3000:] for h in hosts)
    )


@pytest.mark.timeout(240)  # about 25 s; every step has its own bound, generous on a busy host
async def test_two_hosts_share_jobs_drain_stop_and_survive_a_node_restart(
    tmp_path: Path,
) -> None:
    """Jobs spread over both hosts; a drained agent's new jobs go to the other host; SIGTERM
    lets a host finish its jobs and exit 0 while the other serves; a killed node that comes
    back gets its daemon's worker again."""
    async with AsyncExitStack() as stack:
        redis = await stack.enter_async_context(real_redis_server(tmp_path))
        nodes = [
            await stack.enter_async_context(real.real_livekit_server(tmp_path, redis=redis.address))
            for _ in range(2)
        ]
        assert nodes[0].node_id() != nodes[1].node_id()
        hosts = []
        for name, node in zip("ab", nodes, strict=True):
            folder = tmp_path / f"host-{name}"
            folder.mkdir()
            fleet = folder / "fleet.yaml"
            fleet.write_text(FLEET.replace("@URL@", node.url).replace("@HOLD@", str(HOLD)))
            d = await stack.enter_async_context(
                daemon(
                    str(fleet),
                    env={"LK_NODE_KEY": real.API_KEY, "LK_NODE_SECRET": real.API_SECRET},
                    livekit=LiveKit(node.url, real.API_KEY, real.API_SECRET),
                )
            )
            hosts.append(Host(name, node, d))
        a, b = hosts
        for host in hosts:
            await host.daemon.wait_ready(1, timeout=90)

        # 1. one dispatch at a time, rooms on either node: jobs run on both hosts
        took: dict[str, list[str]] = {"a": [], "b": []}
        for i in range(8):
            host, room = await land(nodes[i % 2], hosts, "spread")
            took[host.name].append(room)
        assert took["a"], took
        assert took["b"], took
        for host in hosts:  # what an operator sees: each host's jobs, with their rooms
            code, out, err = await host.daemon.cli("status", AGENT, "--jobs", "-o", "json")
            assert code == 0, err
            for room in took[host.name]:
                assert f'"room": "{room}"' in out, out
            # and the server side: the host's own node gave the job to the host's worker
            worker = (await host.status()).worker_id
            for room in took[host.name]:
                assert await assigned_by(host.node, room) == worker, room

        # 2. drained on host a: every new job of the agent goes to host b
        code, out, err = await a.daemon.cli("drain", AGENT)
        assert code == 0, out + err
        await a.wait("a drained", 30, lambda s: s.draining or s.state == "drained")
        drained_rooms = []
        for i in range(3):
            host, room = await land(nodes[i % 2], hosts, "drained")
            assert host is b, f"{room} ran on host {host.name} while it was drained"
            drained_rooms.append(room)
        assert not set(drained_rooms) & await a.rooms()

        # 3. host a takes jobs again; SIGTERM on it while it runs one: the job finishes, the
        # daemon exits 0, and host b serves every dispatch meanwhile and after
        code, out, err = await a.daemon.cli("undrain", AGENT)
        assert code == 0, out + err
        await a.wait("a ready again", 60, lambda s: s.ready and not s.draining)
        for _ in range(4):  # by load, host a (no job) takes one of the next two at most
            host, room = await land(nodes[0], hosts, "before-stop")
            if host is a:
                break
        assert host is a, "host a took no job after its undrain"
        running = await a.running()
        assert room in running
        a.daemon.process.send_signal(signal.SIGTERM)
        await a.wait("a draining", 20, lambda s: s.state == "draining")
        host, room = await land(nodes[0], hosts, "during-stop")
        assert host is b, f"{room} ran on host a after its SIGTERM"
        with anyio.fail_after(HOLD + 60):
            assert await a.daemon.process.wait() == 0, a.log()[-4000:]
        text = a.log()
        for room in running:  # ended on their own after HOLD seconds, not stopped
            assert f"support job done: room={room} " in text, text[-4000:]
        assert "drained: every job finished" in text
        await land(nodes[0], [b], "after-stop")
        assert real.API_SECRET not in text + b.log()

        # 4. host b's node is killed and comes back on the same ports and Redis: host b's
        # daemon registers its agent again, and a job dispatched on node a runs there
        before = await b.status()
        assert before.registered
        killed_id = nodes[1].node_id()
        await real.kill(nodes[1])
        await b.wait("b lost its node", 30, lambda s: not s.registered)
        nodes[1] = await stack.enter_async_context(
            real.real_livekit_server(
                tmp_path, port=nodes[1].port, udp_port=nodes[1].udp_port, redis=redis.address
            )
        )
        assert nodes[1].node_id() not in ("", killed_id)
        after = await b.wait("b registered again", 60, lambda s: s.registered and s.ready)
        assert after.worker_id != before.worker_id
        host, room = await land(nodes[0], [b], "after-restart")
        assert await assigned_by(nodes[1], room) == after.worker_id
