"""One agent's worker connection: the I/O shell that drives ``protocol.machine``.

The session owns one ``WorkerMachine`` for the agent's whole life and opens a new WebSocket
(with a fresh access token) whenever the machine asks for one. Inside a connection, a reader
task feeds frames to the machine, a keepalive task pings the server, and the main loop sends
what the machine queued, acts on its events and calls ``tick`` at its next deadline. Every
machine call happens on the event loop without an ``await`` in between, so there are no races.

What the agent decides lives behind ``Hooks``: ``decide`` answers an offer (bounded by
``answer_timeout``: no answer in time, or an exception, declines), ``run_job`` runs an
assigned job (it must call ``job_started`` and ``job_ended``), ``terminate`` asks a job to end.
Job tasks live in the session's own task group, so jobs keep running across reconnects.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

import anyio
import anyio.abc
from livekit import api as lkapi

from lksup.protocol.events import (
    Accept,
    Answer,
    CloseConnection,
    ConnectionClosed,
    Decline,
    Drained,
    GaveUp,
    Job,
    JobAssigned,
    OfferAnswered,
    OfferReceived,
    OpenConnection,
    ProtocolViolation,
    Registered,
    ReservationExpired,
    TerminationRequested,
)
from lksup.protocol.machine import Options, State, WorkerMachine
from lksup.transport.websocket import (
    HandshakeError,
    SocketClosed,
    TransportError,
    WebSocket,
    websocket_url,
)

log = logging.getLogger("lksup.agent")

TOKEN_TTL = timedelta(minutes=10)


class Hooks(Protocol):
    """The agent's side of the connection."""

    async def decide(self, offer: OfferReceived) -> Answer:
        """Answer a job offer (accept with an identity, or decline)."""
        ...

    async def run_job(self, assignment: JobAssigned, session: AgentSession) -> None:
        """Run an assigned job; call ``session.job_started`` and ``session.job_ended``."""
        ...

    def terminate(self, job_id: str) -> None:
        """The server asked for this job to end."""
        ...

    def release(self, job_id: str) -> None:
        """An offer ``decide`` accepted will not be assigned: free what was reserved for it.

        It was declined after all, no assignment came in time, or the connection was lost.
        """
        ...


@dataclass(frozen=True)
class Credentials:
    """Where and how to connect (the secret is only used to sign tokens)."""

    url: str
    api_key: str
    api_secret: str

    def __repr__(self) -> str:
        return f"Credentials(url={self.url!r}, api_key={self.api_key!r}, api_secret=****)"

    def token(self) -> str:
        """A fresh worker token: the agent grant, a short expiry."""
        return (
            lkapi.AccessToken(self.api_key, self.api_secret)
            .with_grants(lkapi.VideoGrants(agent=True))
            .with_ttl(TOKEN_TTL)
            .to_jwt()
        )


@dataclass(frozen=True)
class Timeouts:
    """I/O timings of a session."""

    open_timeout: float = 10.0
    answer_timeout: float = 2.5  # the server waits ~3 s in all for every worker it tries
    ping_interval: float = 10.0
    ping_timeout: float = 20.0
    close_timeout: float = 2.0


class NotRegistered(Exception):
    """The session ended before it registered (the message says why)."""


class AgentSession:
    """The connection of one agent (see the module docstring)."""

    def __init__(
        self,
        options: Options,
        credentials: Credentials,
        hooks: Hooks,
        *,
        timeouts: Timeouts | None = None,
        rand: Callable[[], float] = random.random,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.options = options
        self.on_change = on_change
        """Called when the connection's state, registration or drain changes."""
        self.credentials = credentials
        self.hooks = hooks
        self.timeouts = timeouts or Timeouts()
        self.machine = WorkerMachine(options, rand=rand)
        self._wake = anyio.Event()
        self._sent = anyio.Event()  # set (and replaced) each time queued frames were written
        self._registration = anyio.Event()  # set (and replaced) when registration may change
        self._finished = anyio.Event()
        self._socket: WebSocket | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self.reconnects = 0
        self.registrations = 0
        self.violations = 0
        self.offers: dict[str, int] = {"accepted": 0, "declined": 0, "terminated": 0}
        self.declines: dict[str, int] = {}
        """Offers not accepted (declined or terminated), by ``Decline.cause``."""
        self._seen: tuple[State, str | None, bool] = (State.IDLE, None, False)

    # --- the agent's calls (all safe from any task on the event loop) ----------------------

    @property
    def name(self) -> str:
        """The agent name."""
        return self.options.agent_name

    @property
    def server_url(self) -> str:
        """The LiveKit server this agent is connected to."""
        return self.credentials.url

    @property
    def worker_id(self) -> str:
        """The worker id of the current registration ("" before the first one)."""
        return self.machine.worker_id or ""

    @property
    def state(self) -> State:
        """The machine's state."""
        return self.machine.state

    def set_load(self, load: float, *, full: bool) -> None:
        """Report the agent's load and whether it is full."""
        self.machine.set_load(load, full=full, now=anyio.current_time())
        self._poke()

    def job_started(self, job_id: str) -> None:
        """The job's entrypoint is running."""
        self.machine.job_started(job_id, anyio.current_time())
        self._poke()

    def job_ended(self, job_id: str, *, error: str | None = None) -> None:
        """The job is over (``error`` set: it failed)."""
        self.machine.job_ended(job_id, error=error, now=anyio.current_time())
        self._poke()

    def drain(self) -> None:
        """Stop taking jobs; the session ends once the last job ends."""
        self.machine.drain(anyio.current_time())
        self._poke()

    def undrain(self) -> None:
        """Take jobs again."""
        self.machine.undrain(anyio.current_time())
        self._poke()

    def simulate(self, room_name: str, participant_identity: str | None = None) -> None:
        """Ask the server for a job on this connection."""
        self.machine.simulate(room_name, participant_identity, anyio.current_time())
        self._poke()

    def stop(self) -> None:
        """Close for good now (running jobs are the caller's to stop)."""
        self.machine.stop(anyio.current_time())
        self._poke()

    async def wait_registered(self) -> str:
        """Wait until the connection is registered; the worker id.

        A connection that fails before registering does not end the wait: the next attempt
        may register.

        Raises:
            NotRegistered: the session ended (stopped, drained, gave up) before registering.
        """
        while True:
            changed = self._registration
            if self.machine.worker_id is not None:
                return self.machine.worker_id
            if self._finished.is_set():
                raise NotRegistered(self.machine.last_error or "the session ended")
            await changed.wait()

    def _registration_changed(self) -> None:
        self._registration.set()
        self._registration = anyio.Event()
        self._observe()

    async def flushed(self) -> None:
        """Wait until what is queued for the server was written (or there is no connection)."""
        while (
            self.machine.data_to_send_pending()
            and self._socket is not None
            and not self._finished.is_set()
        ):
            self._poke()
            await self._sent.wait()

    async def wait_finished(self) -> State:
        """Wait until the session ended (drained, stopped, or gave up)."""
        await self._finished.wait()
        return self.machine.state

    def reconfigure(self, *, max_jobs: int | None, max_retry: int) -> None:
        """Take new job and retry limits (no new registration needed)."""
        self.options = dataclasses.replace(self.options, max_jobs=max_jobs, max_retry=max_retry)
        self.machine.options = self.options
        self._poke()

    def _poke(self) -> None:
        self._wake.set()
        self._observe()

    def _observe(self) -> None:
        """Tell ``on_change`` when the state, the registration or the drain changed."""
        machine = self.machine
        seen = (machine.state, machine.worker_id, machine.draining)
        if seen != self._seen:
            self._seen = seen
            if self.on_change is not None:
                self.on_change()

    # --- the driver -------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until drained, stopped or given up; running job tasks are awaited."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                if self.machine.state is not State.CLOSED:  # drained or stopped before it ran
                    self.machine.start(anyio.current_time())
                task_status.started()
                await self._drive()
            finally:
                self._finished.set()
                self._registration_changed()  # waiters for a registration: there will be none
                self._observe()
                if self.on_change is not None:
                    self.on_change()  # it ended (the state may have been CLOSED already)
                if self._socket is not None:
                    await self._socket.aclose()

    async def _drive(self) -> None:
        while True:
            opened = await self._handle_outputs()
            if opened is not None:
                await self._connected(opened)
                continue
            if self.machine.state in (State.CLOSED, State.FAILED):
                return
            await self._wait()
            self.machine.tick(anyio.current_time())

    async def _wait(self) -> None:
        deadline = self.machine.next_deadline()
        timeout = None if deadline is None else max(0.0, deadline - anyio.current_time())
        if not self._wake.is_set():
            with anyio.move_on_after(timeout):
                await self._wake.wait()
        self._wake = anyio.Event()

    async def _connected(self, socket: WebSocket) -> None:
        self._socket = socket
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._reader, socket)
                tg.start_soon(self._keepalive, socket)
                while True:
                    await self._handle_outputs()
                    if not self._still_connected():
                        break
                    await self._wait()
                    self.machine.tick(anyio.current_time())
                if socket.closing:  # let the reader see the answer to our close frame, briefly
                    with anyio.move_on_after(self.timeouts.close_timeout):
                        await socket.wait_closed()
                tg.cancel_scope.cancel()
        finally:
            self._socket = None
            await socket.aclose()

    def _still_connected(self) -> bool:
        return self.machine.connected

    async def _reader(self, socket: WebSocket) -> None:
        try:
            while True:
                message = await socket.recv()
                now = anyio.current_time()
                if isinstance(message, str):
                    self.machine.receive_text(message, now)
                else:
                    self.machine.receive(message, now)
                # act on offers and assignments right here (they start their own tasks);
                # frames and commands are the main loop's
                for event in self.machine.events():
                    self._on_event(event)
                self._poke()
        except SocketClosed as exc:
            self.machine.connection_lost(anyio.current_time(), str(exc))
            self._poke()

    async def _keepalive(self, socket: WebSocket) -> None:
        while True:
            await anyio.sleep(self.timeouts.ping_interval)
            before = socket.pongs_received
            deadline = anyio.current_time() + self.timeouts.ping_timeout
            # a ping stuck behind a send the server does not read is no pong either
            with anyio.move_on_after(self.timeouts.ping_timeout):
                await socket.ping()
            await anyio.sleep_until(deadline)
            if socket.pongs_received == before:
                self.machine.connection_lost(anyio.current_time(), "no pong from the server")
                self._poke()
                return

    async def _open(self) -> WebSocket | None:
        url = websocket_url(self.credentials.url)
        try:
            token = self.credentials.token()
            socket = await WebSocket.connect(
                url,
                headers={"Authorization": f"Bearer {token}"},
                open_timeout=self.timeouts.open_timeout,
            )
        except TransportError as exc:
            reason = str(exc)
            if isinstance(exc, HandshakeError) and exc.status == 401:
                reason = "HTTP 401: the server refused the API key or secret"
            if self.machine.state is State.CONNECTING:  # not stopped or drained meanwhile
                self.machine.connection_failed(anyio.current_time(), reason)
            return None
        if self.machine.state is not State.CONNECTING:  # stopped or drained while connecting
            await socket.aclose()
            return None
        self.machine.connection_opened(anyio.current_time())
        return socket

    async def _handle_outputs(self) -> WebSocket | None:
        """Send queued frames, act on events and commands; a new socket if one was opened."""
        opened: WebSocket | None = None
        while True:
            self._observe()
            frames = self.machine.data_to_send()
            if frames and self._socket is not None:
                try:
                    for frame in frames:
                        await self._socket.send(frame)
                except SocketClosed as exc:
                    self.machine.connection_lost(anyio.current_time(), str(exc))
                sent, self._sent = self._sent, anyio.Event()
                sent.set()
            for event in self.machine.events():
                self._on_event(event)
            commands = self.machine.commands()
            for command in commands:
                if isinstance(command, OpenConnection):
                    opened = await self._open()
                    if opened is not None:
                        self._socket = opened
                elif isinstance(command, CloseConnection) and self._socket is not None:
                    await self._socket.send_close(command.code, command.reason)
            if not commands and not self.machine.data_to_send_pending():
                return opened

    def _on_event(self, event: object) -> None:
        agent = self.options.agent_name
        extra = {"agent": agent}
        if isinstance(event, Registered):
            log.info(
                "agent %s registered as %s (server %s)",
                agent,
                event.worker_id,
                event.server_version or "unknown",
                extra=extra,
            )
            self.registrations += 1
            self._registration_changed()
        elif isinstance(event, ConnectionClosed):
            self._registration_changed()
            if event.retry_delay is not None:
                self.reconnects += 1
                log.warning(
                    "agent %s connection lost: %s; reconnecting in %.1fs",
                    agent,
                    event.reason,
                    event.retry_delay,
                    extra=extra,
                )
        elif isinstance(event, GaveUp):
            log.error(
                "agent %s gave up after %d failed connection attempts: %s",
                agent,
                event.attempts,
                event.reason,
                extra=extra,
            )
        elif isinstance(event, ProtocolViolation):
            self.violations += 1
            log.warning("agent %s: %s", agent, event.description, extra=extra)
        elif isinstance(event, OfferReceived):
            assert self._tg is not None
            self._tg.start_soon(self._decide, event)
        elif isinstance(event, OfferAnswered):
            answer = event.answer
            kind = (
                "accepted"
                if isinstance(answer, Accept)
                else "terminated"
                if answer.terminate
                else "declined"
            )
            self.offers[kind] += 1
            if isinstance(answer, Decline):
                self.declines[answer.cause] = self.declines.get(answer.cause, 0) + 1
            log.debug("agent %s answered offer %s: %s", agent, event.job_id, answer)
        elif isinstance(event, JobAssigned):
            assert self._tg is not None
            self._tg.start_soon(self._run_job, event)  # the runner logs once it is handed over
        elif isinstance(event, TerminationRequested):
            self.hooks.terminate(event.job_id)
        elif isinstance(event, ReservationExpired):
            self.hooks.release(event.job_id)
            if self.machine.connected:
                log.warning(
                    "agent %s: no assignment for accepted job %s in time",
                    agent,
                    event.job_id,
                    extra={**extra, "job_id": event.job_id},
                )
        elif isinstance(event, Drained):
            log.info("agent %s drained", agent, extra=extra)

    async def _decide(self, offer: OfferReceived) -> None:
        answer: Answer = Decline(reason="no answer in time", cause="timeout")
        with anyio.move_on_after(self.timeouts.answer_timeout):
            try:
                answer = await self.hooks.decide(offer)
            except Exception:
                log.exception(
                    "agent %s: request policy failed for job %s; declining",
                    self.options.agent_name,
                    offer.job.id,
                    extra={"agent": self.options.agent_name, "job_id": offer.job.id},
                )
                answer = Decline(reason="request policy failed", cause="error")
        sent = self.machine.answer(offer.job.id, answer, anyio.current_time())
        if isinstance(answer, Accept) and not isinstance(sent, Accept):
            self.hooks.release(offer.job.id)
        for event in self.machine.events():  # counted before the answer is on the wire
            self._on_event(event)
        self._poke()

    async def _run_job(self, assignment: JobAssigned) -> None:
        job: Job = assignment.job
        try:
            await self.hooks.run_job(assignment, self)
        except Exception as exc:
            log.exception(
                "agent %s: job %s failed in its runner",
                self.options.agent_name,
                job.id,
                extra={"agent": self.options.agent_name, "job_id": job.id},
            )
            self.job_ended(job.id, error=f"{type(exc).__name__}: {exc}")
        else:
            if job.id in self.machine.running_jobs:
                self.job_ended(job.id, error=None)
