"""The API agent authors program against: ``JobProcess``, ``JobRequest``, ``JobContext``.

Names and semantics mirror livekit-agents (``livekit.agents.JobProcess``, ``JobRequest`` and
``JobContext``) so that porting an agent is mechanical: ``req.job`` and ``ctx.job`` are the
``livekit.protocol.agent.Job`` protobuf message itself (``job.id``, ``job.room.name``,
``job.metadata``, ``job.participant.identity`` ...), ``proc.userdata`` carries what ``prewarm``
prepared, ``req.accept(...)``/``req.reject(terminate=True)``, ``ctx.add_shutdown_callback``,
``ctx.shutdown(reason)`` and ``ctx.connect()`` behave as in the SDK.

Deliberate differences:

* the LiveKit realtime SDK (the ``livekit`` package, which provides ``livekit.rtc``) is
  optional (``pip install 'lksup[rtc]'``); ``ctx.room`` and ``ctx.connect()`` raise
  ``RtcUnavailableError`` saying so when it is missing, and nothing imports it before then;
* ``ctx.connect()`` returns the room (the SDK returns None; ``ctx.room`` works in both);
* ``ctx.wait_for_shutdown()``, ``ctx.room_name``, ``ctx.url``, ``ctx.token`` and
  ``ctx.agent_name`` are additions;
* ``req.accept()`` returns as soon as the answer is on its way (the SDK waits for the
  server's assignment): the assignment reaches this process later, as the job itself;
* what ``req.accept()`` leaves empty comes from the fleet's declarative request policy
  (identity, name, metadata; attributes are merged, the call's own winning), and the identity
  falls back to ``agent-<job id>`` as in the SDK;
* ``ctx.connect(auto_subscribe=...)`` takes a bool (the SDK's ``AutoSubscribe`` audio-only and
  video-only modes are not offered); ``wait_for_participant``, ``api``, ``worker_id`` and
  participant entrypoints are not offered yet (``ctx.room`` gives the rtc API directly).

As in the SDK, the job ends when the entrypoint returns, unless the room is connected: then it
lasts until the room disconnects or a shutdown is requested (``lksup.jobs.runner``).

Invariants: the runtime creates these objects inside the job process's event loop, and their
methods are meant to be called from that loop (as in the SDK, nothing here is thread-safe).
The first shutdown reason wins; later ``shutdown()`` calls change nothing.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeAlias

import anyio
from livekit.protocol import agent, models

if TYPE_CHECKING:
    from livekit import rtc

__all__ = [
    "RTC_INSTALL_HINT",
    "JobAcceptArguments",
    "JobContext",
    "JobProcess",
    "JobRequest",
    "RtcUnavailableError",
    "ShutdownCallback",
    "import_rtc",
]

logger = logging.getLogger("lksup.jobs")

RTC_INSTALL_HINT = "pip install 'lksup[rtc]'"
ShutdownCallback: TypeAlias = Callable[[str], Awaitable[None]] | Callable[[], Awaitable[None]]


class RtcUnavailableError(ImportError):
    """The LiveKit realtime SDK (``livekit.rtc``, from the ``livekit`` package) is missing."""


def import_rtc() -> ModuleType:
    """``livekit.rtc``, imported on first use.

    Raises:
        RtcUnavailableError: the ``livekit`` package is not installed (the message says how
            to install it).
    """
    try:
        return importlib.import_module("livekit.rtc")
    except ImportError as exc:
        raise RtcUnavailableError(
            "joining the room needs the LiveKit realtime SDK (the `livekit` Python package, "
            f"module livekit.rtc), which cannot be imported ({exc}); "
            f"install it with: {RTC_INSTALL_HINT}"
        ) from exc


class JobProcess:
    """The process that runs jobs for one agent; ``prewarm(proc)`` fills ``userdata``."""

    def __init__(self, *, agent_name: str = "", pid: int | None = None) -> None:
        self._agent_name = agent_name
        self._pid = pid
        self._userdata: dict[Any, Any] = {}

    @property
    def pid(self) -> int:
        """This process's id.

        Read when asked: prewarm may have run in the template this process was forked from.
        """
        return os.getpid() if self._pid is None else self._pid

    @property
    def userdata(self) -> dict[Any, Any]:
        """Process-wide state prepared by ``prewarm``, visible to the job as ``ctx.proc``."""
        return self._userdata

    @property
    def agent_name(self) -> str:
        """The agent this process serves (the fleet's agent name)."""
        return self._agent_name

    @property
    def http_proxy(self) -> str | None:
        """The proxy from ``HTTPS_PROXY``/``HTTP_PROXY``, as the SDK reports it."""
        return os.environ.get("HTTPS_PROXY") or os.environ.get("HTTP_PROXY") or None


@dataclass(frozen=True)
class JobAcceptArguments:
    """The agent participant's identity, name, metadata and attributes for an accepted job."""

    name: str = ""
    identity: str = ""
    metadata: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict, hash=False)


class JobRequest:
    """An offer of a job, handed to the agent's request function to accept or reject."""

    def __init__(
        self,
        *,
        job: agent.Job,
        on_accept: Callable[[JobAcceptArguments], Awaitable[None]],
        on_reject: Callable[[bool], Awaitable[None]],
        defaults: JobAcceptArguments | None = None,
    ) -> None:
        self._job = job
        self._on_accept = on_accept
        self._on_reject = on_reject
        self._defaults = defaults or JobAcceptArguments()
        self._answered = False

    @property
    def id(self) -> str:
        """The job's id."""
        return self._job.id

    @property
    def job(self) -> agent.Job:
        """The job as the server described it (``livekit.protocol.agent.Job``)."""
        return self._job

    @property
    def room(self) -> models.Room:
        """The job's room (``job.room``)."""
        return self._job.room

    @property
    def publisher(self) -> models.ParticipantInfo | None:
        """The publishing participant of a publisher job, else None."""
        return self._job.participant if self._job.HasField("participant") else None

    @property
    def agent_name(self) -> str:
        """The agent name the job was dispatched to."""
        return self._job.agent_name

    @property
    def answered(self) -> bool:
        """Whether ``accept`` or ``reject`` has been called."""
        return self._answered

    async def reject(self, *, terminate: bool = True) -> None:
        """Decline the job.

        ``terminate=True`` (the default) also asks the server not to offer it to another worker.
        """
        if self._claim_answer():
            await self._on_reject(terminate)

    async def accept(
        self,
        *,
        name: str = "",
        identity: str = "",
        metadata: str = "",
        attributes: Mapping[str, str] | None = None,
    ) -> None:
        """Accept the job; the agent joins the room as this participant when it is assigned.

        Empty arguments take the fleet's declarative defaults; the identity falls back to
        ``agent-<job id>``. ``attributes`` are added to the default attributes.
        """
        if not self._claim_answer():
            return
        defaults = self._defaults
        arguments = JobAcceptArguments(
            name=name or defaults.name,
            identity=identity or defaults.identity or f"agent-{self.id}",
            metadata=metadata or defaults.metadata,
            attributes={**defaults.attributes, **(attributes or {})},
        )
        await self._on_accept(arguments)

    def _claim_answer(self) -> bool:
        if self._answered:
            logger.warning("Job request %s was already answered; ignoring the new answer.", self.id)
            return False
        self._answered = True
        return True


def _takes_reason(callback: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(callback).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: assume the SDK shape
        return True
    positional = (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.VAR_POSITIONAL,
    )
    return any(p.kind in positional for p in parameters)


class JobContext:
    """Everything an entrypoint needs about its job: ``async def entrypoint(ctx)``."""

    def __init__(
        self,
        *,
        proc: JobProcess,
        job: agent.Job,
        url: str,
        token: str,
        participant_identity: str = "",
        participant_name: str = "",
    ) -> None:
        self._proc = proc
        self._job = job
        self._url = url
        self._token = token
        self._participant_identity = participant_identity
        self._participant_name = participant_name
        self._shutdown_requested = anyio.Event()
        self._shutdown_reason: str | None = None
        self._callbacks: list[Callable[[str], Awaitable[None]]] = []
        self._room: rtc.Room | None = None
        self._connected = False
        self._connect_lock = anyio.Lock()

    @property
    def proc(self) -> JobProcess:
        """The process running the job (``proc.userdata`` holds what ``prewarm`` prepared)."""
        return self._proc

    @property
    def job(self) -> agent.Job:
        """The job as the server described it (``livekit.protocol.agent.Job``)."""
        return self._job

    @property
    def room_name(self) -> str:
        """The job's room name (``job.room.name``)."""
        return self._job.room.name

    @property
    def url(self) -> str:
        """The LiveKit server URL to join the room at."""
        return self._url

    @property
    def token(self) -> str:
        """The access token the server issued for this job's participant."""
        return self._token

    @property
    def agent_name(self) -> str:
        """The agent name the job was dispatched to (the process's agent if the job has none)."""
        return self._job.agent_name or self._proc.agent_name

    @property
    def participant_identity(self) -> str:
        """The identity the agent joins the room with (as accepted)."""
        return self._participant_identity

    @property
    def participant_name(self) -> str:
        """The display name the agent joins the room with (as accepted)."""
        return self._participant_name

    @property
    def local_participant_identity(self) -> str:
        """SDK name of ``participant_identity``."""
        return self._participant_identity

    @property
    def room(self) -> rtc.Room:
        """The job's ``livekit.rtc.Room``, not yet connected until ``connect()``.

        Raises:
            RtcUnavailableError: the ``livekit`` package is not installed.
        """
        if self._room is None:
            room: rtc.Room = import_rtc().Room()
            room.on("disconnected", self._on_room_disconnected)
            self._room = room
        return self._room

    async def connect(
        self,
        *,
        auto_subscribe: bool = True,
        encryption: rtc.E2EEOptions | None = None,
        rtc_config: rtc.RtcConfiguration | None = None,
    ) -> rtc.Room:
        """Join the room at ``url`` with ``token``; later calls return the same room at once.

        The job then lasts until the room disconnects or a shutdown is requested, even if the
        entrypoint returns (as in the SDK).

        Raises:
            RtcUnavailableError: the ``livekit`` package is not installed; install it with
                ``pip install 'lksup[rtc]'``.
        """
        async with self._connect_lock:
            room = self.room
            if not self._connected:
                options = import_rtc().RoomOptions(
                    auto_subscribe=auto_subscribe, encryption=encryption, rtc_config=rtc_config
                )
                await room.connect(self._url, self._token, options=options)
                self._connected = True
            return room

    def add_shutdown_callback(self, callback: ShutdownCallback) -> None:
        """Run ``callback`` when the job shuts down, after the entrypoint has finished.

        ``async def callback(reason: str)`` receives the shutdown reason; ``async def
        callback()`` is accepted too (as in the SDK). Callbacks run concurrently, bounded by
        the agent's shutdown grace; a failing callback is logged and does not fail the job.
        """
        if _takes_reason(callback):
            self._callbacks.append(callback)  # type: ignore[arg-type]
            return
        no_args: Callable[[], Awaitable[None]] = callback  # type: ignore[assignment]

        async def wrapper(_reason: str) -> None:
            await no_args()

        wrapper.__qualname__ = getattr(callback, "__qualname__", wrapper.__qualname__)
        self._callbacks.append(wrapper)

    def shutdown(self, reason: str = "user requested") -> None:
        """Start ending the job; returns at once, like the SDK.

        ``wait_for_shutdown()`` returns ``reason``, the entrypoint gets the shutdown grace to
        return, then the room is left and the shutdown callbacks run. A requested shutdown is a
        success.
        """
        self._request_shutdown(reason or "user requested")

    async def wait_for_shutdown(self) -> str:
        """Wait until the job is asked to end; returns the reason.

        The job ends on ``shutdown()``, the supervisor's request, the room disconnecting,
        SIGTERM, or the entrypoint finishing.
        """
        await self._shutdown_requested.wait()
        assert self._shutdown_reason is not None
        return self._shutdown_reason

    @property
    def shutdown_reason(self) -> str | None:
        """Why the job is ending, or None while it is not."""
        return self._shutdown_reason

    # ---- runtime hooks (lksup.jobs.runner), not part of the agent API ------------------------

    def _request_shutdown(self, reason: str) -> None:
        if self._shutdown_reason is None:
            self._shutdown_reason = reason
            self._shutdown_requested.set()

    def _shutdown_callbacks(self) -> list[Callable[[str], Awaitable[None]]]:
        return list(self._callbacks)

    def _is_connected(self) -> bool:
        return self._connected and self._room is not None and self._room.isconnected()

    async def _disconnect_room(self) -> None:
        if self._room is not None and self._room.isconnected():
            await self._room.disconnect()

    def _on_room_disconnected(self, *_args: Any) -> None:
        self._request_shutdown("room disconnected")
