"""The embedded dev server: one listener, routing, and the Python API over rooms and dispatch.

``DevServer`` plays the single-node livekit-server v1.13.5 for agent workers (reference §2,
§3): workers connect to ``/agent`` (``workers.WorkerSession``, pooled by ``registry``), rooms
and dispatches come from the Twirp endpoints (``twirp``) or the methods below, and each
dispatch launches one JT_ROOM job per matching namespace (``launcher``).

Routing follows the real middleware order: a token that is present but invalid is a plain 401
on every path; ``/agent`` then needs a WebSocket upgrade (else 404) and the ``agent`` grant
(else 401); ``/twirp/`` checks its own grants; ``/`` is the health check; the rest is 404.

Concurrency: everything runs on one event loop and mutates state only between awaits, so
there are no locks besides each WebSocket's send lock. Launches and terminations run in the
server's task group; a dropped worker wakes every offer waiting on it.

Deviations from the real server, on purpose: no media, no participants, rooms never close by
themselves; JT_PUBLISHER/JT_PARTICIPANT jobs only come from ``simulate_job``; a simulated job
accepted without a room is dropped instead of crashing the server; ``Room`` protos carry no
codec list, TURN password or version.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from livekit.protocol import agent_dispatch, models

from lksup.devserver import codec, dispatch, http, model, twirp
from lksup.devserver.auth import AuthError, Grants, token_from_request, verify
from lksup.devserver.launcher import Launcher, LaunchSettings
from lksup.devserver.registry import Registry, new_id
from lksup.devserver.rooms import RoomOptions, Rooms
from lksup.devserver.workers import SessionSettings, WorkerInfo, WorkerSession

_log = logging.getLogger(__name__)

#: What ``server_info`` claims to be.
SERVER_VERSION = "1.13.5"
SIGNAL_PROTOCOL = 17
AGENT_PROTOCOL = 1
_NOT_FOUND = http.Response(404, b"404 page not found\n")


class DevServer:
    """A LiveKit agent-protocol server with the dispatch API, without media.

    Args:
        keys: API keys and their secrets; tokens must be signed with one of them.
        host: address to listen on.
        port: TCP port; 0 picks a free one (``run`` reports it).
        target_load: the affinity gate's load threshold (``agents.target_load``).
        dispatch_timeout: budget of all offers for one job (psrpc's 3 s).
        claim_delay: simulated psrpc claim latency before the first offer.
        register_timeout: time from upgrade to ``register`` before the socket is dropped.
        ping_interval: WebSocket ping frames; 0 disables them.
        assign_timeout: the longest wait for one worker's answer.
        region: ``server_info.region``.
        trace: keep every message of every worker connection (``traces()``).
        wall_clock: Unix time source for timestamps and tokens.
        rng: random source of the worker pick.

    Raises:
        ValueError: no keys, or a negative duration.
    """

    def __init__(
        self,
        keys: Mapping[str, str],
        *,
        host: str = "127.0.0.1",
        port: int = 7880,
        target_load: float = 0.7,
        dispatch_timeout: float = 3.0,
        claim_delay: float = 0.2,
        register_timeout: float = 10.0,
        ping_interval: float = 10.0,
        assign_timeout: float = dispatch.ASSIGN_TIMEOUT,
        region: str = "",
        trace: bool = False,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if not keys or not all(keys.values()):
            raise ValueError("the dev server needs at least one API key with a secret")
        durations = (dispatch_timeout, claim_delay, register_timeout, ping_interval)
        if min(*durations, assign_timeout) < 0:
            raise ValueError("durations must not be negative")
        self._keys = dict(keys)
        self._host = host
        self._port = port
        self._ping_interval = ping_interval
        self._wall_clock = wall_clock
        info = codec.ServerInfo(
            SERVER_VERSION, SIGNAL_PROTOCOL, AGENT_PROTOCOL, region, new_id("ND_")
        )
        self._settings = SessionSettings(register_timeout, info, trace)
        self._registry = Registry(wall_clock)
        launch = LaunchSettings(target_load, dispatch_timeout, claim_delay, assign_timeout)
        self._launcher = Launcher(self._registry, launch, rng or random.Random())
        self._rooms = Rooms(new_id, wall_clock)
        self._tg: anyio.abc.TaskGroup | None = None
        self._address: tuple[str, int] | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled; reports ``(host, port)`` once listening."""
        if self._tg is not None:
            raise RuntimeError("the dev server is already running")
        listener = await anyio.create_tcp_listener(local_host=self._host, local_port=self._port)
        async with listener, anyio.create_task_group() as tg:
            self._tg = tg
            self._registry.start()
            self._address = (self._host, listener.extra(SocketAttribute.local_port))
            _log.info("Dev server listening on %s.", self.url)
            task_status.started(self._address)
            try:
                await http.serve(listener, self)
            finally:
                self._tg = None

    @property
    def url(self) -> str:
        """``ws://host:port`` of the running server."""
        if self._address is None:
            raise RuntimeError("the dev server is not listening yet")
        host, port = self._address
        return f"ws://[{host}]:{port}" if ":" in host else f"ws://{host}:{port}"

    # --- HTTP ----------------------------------------------------------------------------

    async def handle(self, request: http.Request) -> http.Response | http.Upgrade:
        """Route one request (the ``http.Application`` interface)."""
        try:
            grants = self._authenticate(request)
        except AuthError as exc:
            return http.Response(401, f"{exc}\n".encode())
        if request.path == "/agent":
            if not http.is_websocket_upgrade(request):
                return _NOT_FOUND
            if grants is None or not grants.agent:
                return http.Response(401, b"permissions denied\n")
            handler = partial(self._worker, grants.api_key)
            return http.Upgrade(handler, ping_interval=self._ping_interval)
        if request.path.startswith("/twirp/"):
            return await twirp.handle(self, request, grants)
        if request.path == "/":
            return http.Response(200, b"OK")
        return _NOT_FOUND

    def _authenticate(self, request: http.Request) -> Grants | None:
        token = token_from_request(request.header("authorization"), request.query)
        if not token:
            return None
        return verify(token, self._keys, now=self._wall_clock())

    async def _worker(self, api_key: str, channel: http.WebSocketChannel) -> None:
        session = WorkerSession(
            new_id("AW_"),
            channel,
            api_key=api_key,
            secret=self._keys[api_key],
            hub=self._registry,
            settings=self._settings,
            upgraded_at=anyio.current_time(),
        )
        if session.trace is not None:
            self._registry.traces[session.id] = session.trace
        await session.run()

    # --- observation -------------------------------------------------------------------

    def workers(self) -> list[WorkerInfo]:
        """Snapshots of the registered workers, in registration order."""
        return self._registry.workers()

    async def wait_workers(self, predicate: Callable[[list[WorkerInfo]], bool]) -> list[WorkerInfo]:
        """Wait until ``predicate(workers())`` holds; return that snapshot."""
        return await self._registry.wait(predicate)

    def traces(self) -> dict[str, list[codec.TraceEntry]]:
        """Per worker ID, every message received and sent (empty unless ``trace=True``)."""
        return {worker_id: list(entries) for worker_id, entries in self._registry.traces.items()}

    # --- rooms and dispatches ------------------------------------------------------------

    async def create_room(self, name: str, options: RoomOptions | None = None) -> models.Room:
        """Create a room (or return the existing one) and launch its dispatches.

        Raises:
            InvalidArgument: empty name or invalid dispatch.
        """
        tg = self._require_tg()
        options = options or RoomOptions()
        if not name:
            raise model.InvalidArgument("room name is required")
        for spec in options.agents:
            model.validate_dispatch(spec)
        room, new = self._rooms.create(name, options)
        for record in new:
            self._launcher.launch(tg, room.info, record)
        return codec.room_to_proto(room.info)

    async def create_dispatch(
        self,
        room: str,
        agent_name: str,
        metadata: str = "",
        *,
        deployment: str = "",
        attributes: Mapping[str, str] | None = None,
    ) -> agent_dispatch.AgentDispatch:
        """Add a dispatch to ``room`` (created if missing) and launch its JT_ROOM job.

        Returns at once, with no jobs in the state; the job is offered in the background.

        Raises:
            InvalidArgument: empty room name, invalid deployment, metadata or attributes.
        """
        tg = self._require_tg()
        spec = model.DispatchSpec(agent_name, metadata, deployment, dict(attributes or {}))
        model.validate_dispatch(spec)
        if self._rooms.get(room) is None:
            await self.create_room(room)
        record = self._rooms.require(room)
        added = self._rooms.add_dispatch(record, spec)
        result = codec.dispatch_to_proto(added)
        self._launcher.launch(tg, record.info, added)
        return result

    async def delete_dispatch(self, room: str, dispatch_id: str) -> agent_dispatch.AgentDispatch:
        """Remove a dispatch; its running jobs get a termination once its launches finished.

        Raises:
            NotFound: no such room or dispatch.
        """
        tg = self._require_tg()
        record = self._rooms.remove_dispatch(room, dispatch_id)
        self._launcher.delete(tg, record)
        return codec.dispatch_to_proto(record)

    def list_dispatch(self, room: str, dispatch_id: str = "") -> list[agent_dispatch.AgentDispatch]:
        """The dispatches of ``room`` (one, with ``dispatch_id``).

        Raises:
            NotFound: no such room.
        """
        records = self._rooms.require(room).dispatches.values()
        return [codec.dispatch_to_proto(d) for d in records if dispatch_id in ("", d.id)]

    async def wait_dispatch_settled(self, dispatch_id: str) -> agent_dispatch.AgentDispatch:
        """Wait until a dispatch's launches, and once deleted its terminations, are done.

        Works for deleted dispatches too; returns the dispatch with its jobs' states.

        Raises:
            NotFound: this server never made such a dispatch.
        """
        return codec.dispatch_to_proto(await self._launcher.settled(dispatch_id))

    def delete_room(self, name: str) -> None:
        """Remove a room; like the real server without joined agents, nothing is terminated.

        Raises:
            NotFound: no such room.
        """
        self._rooms.delete(name)

    def list_rooms(self, names: Sequence[str] = ()) -> list[models.Room]:
        """All rooms, or those named."""
        return [codec.room_to_proto(room.info) for room in self._rooms.list(names)]

    def _require_tg(self) -> anyio.abc.TaskGroup:
        if self._tg is None:
            raise RuntimeError("the dev server is not running")
        return self._tg
